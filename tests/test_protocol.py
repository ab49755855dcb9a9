"""Link protocol v1: the vectors in protocol/vectors/ against the gateway's codec (CPython), the
CDDL against every vector frame (pycddl), and rejections by reason."""

import json
from decimal import Decimal
from pathlib import Path

import cbor2
import pycddl
import pytest

from sensorcity.protocol import frames

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "link-v1.json").read_text())
SCHEMA = pycddl.Schema((ROOT / "protocol" / "link.cddl").read_text())
KEYS = {n: bytes.fromhex(k) for n, k in VECTORS["keys"].items()}


def _meaning(v):
    """The JSON form of a decoded body, as the vectors write it."""
    if isinstance(v, dict):
        return {str(k): _meaning(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_meaning(x) for x in v]
    if isinstance(v, Decimal):
        sign, digits, exp = v.as_tuple()
        return {"decfrac": [exp, int("".join(map(str, digits))) * (-1 if sign else 1)]}
    return v


@pytest.mark.parametrize("vec", VECTORS["good"], ids=lambda v: v["name"])
def test_good_vector_decodes_to_its_meaning(vec):
    wire = bytes.fromhex(vec["wire"])
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    f = frames.decode(wire[:-1], KEYS.get)
    assert (f.kind, f.node, f.seq) == (vec["kind"], vec["node"], vec["seq"])
    assert _meaning(f.body) == vec["body"]


@pytest.mark.parametrize("vec", VECTORS["good"], ids=lambda v: v["name"])
def test_good_vector_matches_the_cddl(vec):
    raw = frames.check_crc(bytes.fromhex(vec["wire"])[:-1])
    SCHEMA.validate_cbor(raw)


@pytest.mark.parametrize("vec", [v for v in VECTORS["good"] if v["from"] == "gateway"],
                         ids=lambda v: v["name"])
def test_gateway_encodes_its_frames_byte_for_byte(vec):
    body = vec["body"]
    wire = frames.encode(KEYS[vec["node"]], vec["kind"], vec["node"], vec["seq"], body)
    assert wire.hex() == vec["wire"]


@pytest.mark.parametrize("vec", VECTORS["bad"], ids=lambda v: v["name"])
def test_bad_vector_is_rejected_for_its_reason(vec):
    with pytest.raises(frames.FrameError) as err:
        frames.decode(bytes.fromhex(vec["wire"])[:-1], KEYS.get)
    assert err.value.reason == vec["reason"]


def test_cddl_rejects_a_frame_without_tag():
    bad = cbor2.dumps([1, 0, "n1", 5, [{0: "LAeq", 2: 50.0}]])
    with pytest.raises(Exception):
        SCHEMA.validate_cbor(bad)


def test_deframer_resyncs_after_garbage_and_bounds_memory():
    good = bytes.fromhex(VECTORS["good"][0]["wire"])
    d = frames.Deframer(limit=1024)
    out = d.feed(b"\x13\x37garbage\x00" + b"\xff" * 3000 + b"\x00" + good)
    assert out[-1] == good[:-1]
    assert d.overflows == 1
    assert len(d.buf) == 0


def test_decimal_fraction_resolves_exactly():
    from sensorcity.protocol import senml
    vec = next(v for v in VECTORS["good"] if v["name"] == "data-energy")
    f = frames.decode(bytes.fromhex(vec["wire"])[:-1], KEYS.get)
    rec = senml.resolve(f.body)[0]
    assert rec.v == 12345678.901 and isinstance(rec.v, float)
