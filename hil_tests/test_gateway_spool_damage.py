"""The real `sensorcity gateway run` on a spool a failing card damaged (page 1 and an outbox leaf
overwritten), against a real mosquitto: it comes up, publishes every row still readable, says it
is degraded on /healthz and /metrics, and acks and publishes a node's new frames. Before issue 11
it exited at start ("file is not a database") and after every restart."""

import random
import sqlite3

import cbor2
import pytest

from rigs.gateway import Gateway, Mosquitto, Subscriber, wait_until
from sensorcity.gateway.spool import PAGE, Spool

pytestmark = [pytest.mark.mosquitto, pytest.mark.adversarial]
BASE = "urn:dev:ops:n1:"


def values(sub):
    return [r[2] for _, _, payload, _, _ in sub.on("/batch") for r in cbor2.loads(payload)]


def test_gateway_delivers_what_a_damaged_spool_still_holds(tmp_path):
    spool = tmp_path / "spool"
    sp = Spool(spool)
    for start in range(0, 300, 30):
        sp.store([("n1", s, 60.0 * s, cbor2.dumps([{-2: BASE, -3: 60.0 * s, 0: "power_import",
                                                    1: random.randbytes(100).hex(), 2: s}]),
                    1)
                  for s in range(start, start + 30)])
    sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sp.close()
    path = spool / "spool.sqlite3"
    data = path.read_bytes()
    db = sqlite3.connect(path)
    packs = {s: bytes(p) for s, p in db.execute("SELECT seq, pack FROM outbox")}
    db.close()
    leaf = next(n for n in range(2, len(data) // PAGE)
                if data[(n - 1) * PAGE] == 0x0D and packs[150] in data[(n - 1) * PAGE:n * PAGE])
    gone = {s for s, p in packs.items()
            if any(p in data[(n - 1) * PAGE:n * PAGE] for n in (1, leaf))}
    with open(path, "r+b") as f:
        for n in (1, leaf):
            f.seek((n - 1) * PAGE)
            f.write(random.Random(n).randbytes(PAGE))

    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/gw1/batch"])
    gw = Gateway(tmp_path, [broker.url])  # before the fix: it exited here
    try:
        readable = set(range(300)) - gone
        wait_until(lambda: readable <= set(values(sub)), 30, "the salvaged rows at the broker")
        assert 150 in gone and len(gone) < 40
        status, text = gw.get("/healthz")
        assert status == 503 and text.startswith("spool damaged") and "salvaged" in text
        _, metrics = gw.get("/metrics")
        assert "sensorcity_gateway_spool_damaged 1.0" in metrics
        # new frames are acked and published; a salvaged frame sent again is acked, not
        # published twice (its `seen` came back with it)
        node = gw.node("n1")
        for seq in range(1000, 1010):
            node.send(seq, value=seq)
        resent = min(readable)
        node.send(resent, value=resent)
        wait_until(lambda: set(range(1000, 1010)) | {resent} <= node.acked, 15, "the acks")
        wait_until(lambda: set(range(1000, 1010)) <= set(values(sub)), 15, "the new frames")
        assert values(sub).count(resent) == 1
        node.close()
    finally:
        gw.stop()
        sub.close()
        broker.stop()
    assert gw.proc.returncode == 0, gw.output()
