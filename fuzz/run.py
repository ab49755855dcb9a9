"""The long fuzz run of the gateway's frame decoder and verify path, coverage-guided by atheris
(libFuzzer). Not part of `make test` (tests/test_fuzz.py is the short hypothesis run); run once:

    .venv/bin/python fuzz/run.py -runs=1000000 -seed=1 -max_len=4096

Each input takes one of four shapes, picked by its first byte: raw bytes into a link's Deframer
(cut where the input says) and every frame out of it into the Verifier; a body for a frame with a
valid CRC and tag (so the schema and SenML checks are reached, not only the CRC); a valid frame
with wire bytes overwritten; a valid frame overwritten inside, its CRC made good (the tag and
unknown-node checks). A crash is any exception escaping the verify path; every frame must
be accepted or counted under exactly one reason. At the end: inputs, frames and the counters."""

import json
import struct
import sys
import zlib
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import cbor2
    from sensorcity.protocol import frames, senml
    from sensorcity.gateway.registry import NodeEntry, Registry
    from sensorcity.gateway.verify import Verifier, spool_entry

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "link-v1.json"
_vectors = json.loads(VECTORS.read_text())
KEYS = {n: bytes.fromhex(k) for n, k in _vectors["keys"].items()}
REGISTRY = Registry({n: NodeEntry(n, k, "urn:dev:mac:0024befffe804ff1:", "noise")
                     for n, k in KEYS.items()})
VALID = [bytes.fromhex(v["wire"])[:-1] for v in _vectors["good"] if v["from"] == "node"]
verifier = Verifier(REGISTRY)
tally = {"inputs": 0, "frames": 0}


def check(cobs: bytes) -> None:
    before = verifier.accepted + sum(verifier.rejected.values())
    checked = verifier.check(cobs)
    tally["frames"] += 1
    if verifier.accepted + sum(verifier.rejected.values()) != before + 1:
        raise AssertionError("a frame was not counted exactly once")
    if checked and checked[0].kind == frames.DATA:
        senml.resolve(cbor2.loads(spool_entry(*checked)[3]))


def one_input(data: bytes) -> None:
    tally["inputs"] += 1
    if tally["inputs"] % 100_000 == 0 or tally["inputs"] == RUNS:
        report()  # libFuzzer leaves with exit(), past Python's atexit
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, 3)
    if shape == 0:
        deframer = frames.Deframer()
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        while rest:
            cut = 1 + (rest[0] % 64)
            for cobs in deframer.feed(rest[1:cut]):
                check(cobs)
            rest = rest[cut:]
    elif shape == 1:
        node = fdp.PickValueInList(sorted(KEYS))
        kind = fdp.ConsumeIntInRange(0, 5)
        seq = fdp.ConsumeIntInRange(0, 2**40)
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        try:
            body = cbor2.loads(raw)
        except Exception:  # not CBOR: the bytes themselves are the body
            body = raw
        try:
            wire = frames.encode(KEYS[node], kind, node, seq, body)
        except (ValueError, TypeError, RecursionError, cbor2.CBOREncodeError):
            return
        check(wire[:-1])
    elif shape == 2:
        wire = bytearray(fdp.PickValueInList(VALID))
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            wire[fdp.ConsumeIntInRange(0, len(wire) - 1)] = fdp.ConsumeIntInRange(1, 255)
        check(bytes(wire))
    else:  # overwritten inside the CBOR frame, CRC made good again: the tag and node checks
        raw = bytearray(frames.cobs_decode(fdp.PickValueInList(VALID))[:-4])
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            raw[fdp.ConsumeIntInRange(0, len(raw) - 1)] = fdp.ConsumeIntInRange(0, 255)
        check(frames.cobs_encode(bytes(raw) + struct.pack("<I", zlib.crc32(raw))))


def report():
    counts = {k: v for k, v in verifier.rejected.items() if v}
    print(json.dumps({**tally, "accepted": verifier.accepted, "rejected": counts}),
          file=sys.stderr, flush=True)


RUNS = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("-runs=")), -1)

if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
