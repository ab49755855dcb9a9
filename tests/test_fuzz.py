"""The frame decoder and verify path under arbitrary input (hypothesis; the long atheris run is
fuzz/run.py): no exception escapes, and every frame is either accepted or counted under exactly
one rejection reason."""

import struct
import zlib

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorcity.protocol import frames, senml
from sensorcity.gateway.registry import NodeEntry, Registry
from sensorcity.gateway.verify import Verifier, spool_entry

KEY = bytes(range(32))
NODE = "fuzz-1"
BASE = "urn:dev:org:32473-sensorcity-fuzz-1:"

# CBOR items of every major type, nested: what a hostile or broken node could put in a body
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**1100, 2**1100)
           | st.floats() | st.text(max_size=20) | st.binary(max_size=20))
items = st.recursive(scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(
    st.integers(-8, 8) | st.text(max_size=3), c, max_size=5), max_leaves=20)
# SenML-shaped packs: the labels the resolver knows, with values of any type
labels = st.sampled_from([-1, -2, -3, -4, -5, -6, 0, 1, 2, 3, 4, 5, 6, 7, 8])
packs = st.lists(st.dictionaries(labels, scalars | items, max_size=6), max_size=4)


def verifier():
    return Verifier(Registry({NODE: NodeEntry(NODE, KEY, BASE, "noise")}))


def counted(v: Verifier, cobs: bytes) -> None:
    before = v.accepted + sum(v.rejected.values())
    checked = v.check(cobs)
    assert v.accepted + sum(v.rejected.values()) == before + 1
    if checked and checked[0].kind == frames.DATA:
        node, seq, t, pack, n = spool_entry(*checked)  # what goes on to the spool
        assert n == len(checked[1]) > 0 and senml.resolve(cbor2.loads(pack))
    assert set(v.rejected) == set(Verifier.REASONS)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2100), st.lists(st.integers(1, 64), max_size=20))
def test_random_bytes_through_deframer_and_verifier(data, cuts):
    v, d = verifier(), frames.Deframer()
    pos, out = 0, []
    for c in cuts + [len(data)]:
        out += d.feed(data[pos:pos + c])
        pos += c
    assert all(0 < len(f) <= d.limit for f in out)
    for cobs in out:
        counted(v, cobs)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 5), st.integers(-3, 2**64), items | packs)
def test_tagged_frames_with_any_body(kind, seq, body):
    """Frames with a valid CRC and tag reach the schema and SenML checks."""
    v = verifier()
    try:
        wire = frames.encode(KEY, kind, NODE, seq, body)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return  # cbor2 cannot encode it (a negative seq is fine)
    counted(v, wire[:-1])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(items, min_size=6, max_size=6) | items)
def test_any_cbor_item_with_a_good_crc(item):
    """Anyone can make a CRC: whatever CBOR a frame holds, the header checks reject it cleanly
    (atheris found an unhashable kind raising TypeError here)."""
    if isinstance(item, list) and item:
        item[0] = 1
    try:
        raw = cbor2.dumps(item)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return
    counted(verifier(), frames.cobs_encode(raw + struct.pack("<I", zlib.crc32(raw))))


def test_unhashable_kind_is_a_schema_rejection():
    raw = cbor2.dumps([1, [0], NODE, 1, [], b"\0" * 8])
    v = verifier()
    counted(v, frames.cobs_encode(raw + struct.pack("<I", zlib.crc32(raw))))
    assert v.rejected["schema"] == 1


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_valid_frames(data):
    body = [{-2: BASE, -3: 1.7e9, 0: "LAeq", 1: "dB", 2: 55.5}, {0: "LA90", 1: "dB", 2: 40}]
    wire = bytearray(frames.encode(KEY, frames.DATA, NODE, 7, body)[:-1])
    v = verifier()
    counted(v, bytes(wire))
    assert v.accepted == 1
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    counted(v, bytes(wire).replace(b"\0", b"\1"))
