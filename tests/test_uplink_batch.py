"""The payload is encoded once: verify encodes a frame's records, the spool keeps those bytes,
and the uplink's batch is one CBOR array head followed by them, never decoded and encoded again.
Checked against cbor2's own encoding of the pack the city should get, from the protocol's
vectors (protocol/vectors/link-v1.json)."""

import json
from pathlib import Path

import cbor2
import pytest

from sensorcity.gateway import uplink
from sensorcity.gateway.config import Config
from sensorcity.gateway.spool import Row, Spool
from sensorcity.gateway.verify import spool_entry
from sensorcity.protocol import frames, senml

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "link-v1.json").read_text())
KEYS = {n: bytes.fromhex(k) for n, k in VECTORS["keys"].items()}


def data_frames():
    out = []
    for vec in VECTORS["good"]:
        if vec["kind"] == frames.DATA and vec["from"] == "node":
            f = frames.decode(bytes.fromhex(vec["wire"])[:-1], KEYS.get)
            out.append((f, senml.resolve(f.body)))
    assert len(out) >= 3
    return out


def make(tmp_path):
    cfg = Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"])
    return uplink.Uplink(Spool(tmp_path / "s"), cfg)


def test_a_batch_is_the_stored_records_under_one_array_head(tmp_path, monkeypatch):
    up = make(tmp_path)
    checked = data_frames()
    up.spool.store([spool_entry(f, records) for f, records in checked])
    rows = up.spool.oldest(100)
    calls = []
    for name in ("loads", "dumps", "load", "dump"):  # the publish path decodes nothing
        monkeypatch.setattr(cbor2, name, lambda *a, _n=name, **k: calls.append(_n))
    payload, batch_id, readings = up.batch(rows)
    monkeypatch.undo()
    assert calls == []
    # the reference: cbor2 encoding the list of every frame's records, in row order
    expected = [rec for row in rows for rec in cbor2.loads(row.pack)]
    assert payload == cbor2.dumps(expected)
    # and what the city resolves is what the nodes sent
    assert senml.resolve(cbor2.loads(payload)) == [r for _, recs in checked for r in recs]
    assert readings == sum(len(recs) for _, recs in checked)
    assert batch_id == f"gw:{rows[0].id}-{rows[-1].id}"


@pytest.mark.parametrize("count", [1, 23, 24, 255, 256, 65535, 65536])
def test_the_array_head_is_cbors_at_every_length(count):
    record = {-2: "urn:dev:ops:n1:", -3: 1.7e9, 0: "LAeq", 1: "dB", 2: 55.25}
    pack = cbor2.dumps([record])
    rows = [Row(i + 1, "n1", i, 0.0, pack, 1) for i in range(count)]
    payload, _, readings = uplink.Uplink.batch(make_stub(), rows)
    assert payload == cbor2.dumps([record] * count) and readings == count


def make_stub():
    class Stub:
        gateway_id = "gw"
    return Stub()


@pytest.mark.parametrize("bad", [
    b"\xff\x00garbage", b"\x81", b"\x80", b"\xa1\x00\x01",            # truncated, empty, a map
    b"\x81\xa1\x00\x61\xff",                                          # text not UTF-8
    b"\x81\xa1\x00\xc1\x01",                                          # a tag
    b"\x81\xa1\x00\x5f\xff",                                          # indefinite bytes
    b"\x81\xa1\x41a\x01",                                             # a bytes label
    b"\x81\xa1\x00\x01\x00",                                          # bytes after the pack
    b"\x81\xa1\x00\x81\x01",                                          # a nested array
])
def test_a_pack_that_is_not_a_well_formed_record_array_is_left_out(tmp_path, bad):
    up = make(tmp_path)
    record = {-2: "urn:dev:ops:n1:", -3: 1.7e9, 0: "LAeq", 2: 1.5}
    good = cbor2.dumps([record])
    up.spool.store([("n1", 1, 0.0, good, 1), ("n1", 2, 60.0, bad, 1), ("n1", 3, 120.0, good, 1)])
    payload, _, readings = up.batch(up.spool.oldest(10))
    assert payload == cbor2.dumps([record] * 2) and readings == 2
    assert up.spool.depth() == 2  # the bad one went to quarantine
