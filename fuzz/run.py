"""The long fuzz run of the gateway's frame decoder and verify path, coverage-guided by atheris
(libFuzzer). Not part of `make test` (tests/test_fuzz.py is the short hypothesis run); run once:

    .venv/bin/python fuzz/run.py -runs=1000000 -seed=1 -max_len=4096

Each input takes one of five shapes, picked by its first byte: raw bytes into a link's Deframer
(cut where the input says) and every frame out of it into the Verifier; a body for a frame with a
valid CRC and tag (so the schema and SenML checks are reached, not only the CRC); a valid frame
with wire bytes overwritten; a valid frame overwritten inside, its CRC made good (the tag and
unknown-node checks); a SenML-shaped pack of fuzzed names, values, times and record counts with
any sequence number (the bounds). A crash is any exception escaping the verify path, or the
gateway's path after it: a verified data frame's entry is committed to a real Spool (a temporary
directory) and its rows batched by Uplink.batch, which must resolve again. Every frame must be
accepted or counted under exactly one reason. At the end: inputs, frames, rows batched and the
counters."""

import json
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import cbor2
    from sensorcity.protocol import frames, senml
    from sensorcity.gateway.config import Config
    from sensorcity.gateway.registry import NodeEntry, Registry
    from sensorcity.gateway.spool import Spool
    from sensorcity.gateway.uplink import Uplink
    from sensorcity.gateway.verify import Verifier, spool_entry

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "link-v1.json"
_vectors = json.loads(VECTORS.read_text())
KEYS = {n: bytes.fromhex(k) for n, k in _vectors["keys"].items()}
# every vector's base name starts so: its data frames get past the name check to the spool
REGISTRY = Registry({n: NodeEntry(n, k, "urn:dev:", "noise") for n, k in KEYS.items()})
VALID = [bytes.fromhex(v["wire"])[:-1] for v in _vectors["good"] if v["from"] == "node"]
verifier = Verifier(REGISTRY)
tally = {"inputs": 0, "frames": 0, "stored": 0}
SPOOL = Spool(tempfile.mkdtemp(prefix="fuzz-spool-"), 16)
SPOOL.db.execute("PRAGMA synchronous=OFF")  # durability is not what is fuzzed: no fsync per frame
UPLINK = Uplink(SPOOL, Config(gateway_id="fuzz", brokers=["mqtt://127.0.0.1:9"]))


def check(cobs: bytes) -> None:
    before = verifier.stats.accepted + sum(verifier.stats.rejected.values())
    checked = verifier.check(cobs)
    tally["frames"] += 1
    if verifier.stats.accepted + sum(verifier.stats.rejected.values()) != before + 1:
        raise AssertionError("a frame was not counted exactly once")
    if checked and checked[0].kind == frames.DATA:
        SPOOL.store([spool_entry(*checked)])
        rows = SPOOL.oldest(10)
        if rows:
            payload, _, readings = UPLINK.batch(rows)
            if len(senml.resolve(cbor2.loads(payload))) != readings:
                raise AssertionError("a batch lost readings")
            SPOOL.release([r[0] for r in rows])
            tally["stored"] += len(rows)


def one_input(data: bytes) -> None:
    tally["inputs"] += 1
    if tally["inputs"] % 100_000 == 0 or tally["inputs"] == RUNS:
        report()  # libFuzzer leaves with exit(), past Python's atexit
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, 4)
    if shape == 4:  # a SenML-shaped pack of fuzzed fields: the bounds, the spool and the batch
        node = fdp.PickValueInList(sorted(KEYS))
        seq = fdp.ConsumeIntInRange(0, 2**70)
        pack = []
        for i in range(fdp.ConsumeIntInRange(1, 140)):
            rec = {0: fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 40)),
                   2: fdp.PickValueInList([fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 9)),
                                           fdp.ConsumeRegularFloat(), fdp.ConsumeFloat()])}
            if i == 0:
                rec[-2] = "urn:dev:" + fdp.ConsumeUnicodeNoSurrogates(8)
                rec[-3] = fdp.PickValueInList([fdp.ConsumeInt(9), fdp.ConsumeFloat()])
            if fdp.ConsumeBool():
                rec[6] = fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 9))
            pack.append(rec)
        wire = frames.encode(KEYS[node], frames.DATA, node, seq, pack)
        if len(wire) < 2 * frames.MAX_FRAME:
            check(wire[:-1])
    elif shape == 0:
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
        seq = fdp.ConsumeIntInRange(0, 2**70)  # past the u32 and SQLite's 2^63 too
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
    counts = {k: v for k, v in verifier.stats.rejected.items() if v}
    print(json.dumps({**tally, "accepted": verifier.stats.accepted, "rejected": counts}),
          file=sys.stderr, flush=True)


RUNS = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("-runs=")), -1)

if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
