"""Attacks on the stages after issue 13 item 1 (stages own their stats; a batch is the stored
records' bytes under one array head, scanned by senml.pack_span in a worker thread), from
outside the process: frames over TCP, the spool file edited with sqlite3 while the gateway is
stopped, a real mosquitto. What the city receives is checked by cbor2 and senml.resolve."""

import re
import sqlite3

import cbor2
import pytest

from rigs.gateway import Gateway, Mosquitto, Subscriber, wait_until
from rigs.targets import free_port
from sensorcity.protocol import senml

pytestmark = [pytest.mark.mosquitto, pytest.mark.adversarial]
BASE = "urn:dev:ops:n1:"


def metric(gw, name: str) -> float:
    _, text = gw.get("/metrics")
    m = re.search(rf"^sensorcity_gateway_{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def spool_of(tmp_path, seqs) -> sqlite3.Connection:
    """A spool holding one acked data frame per seq (the broker away), the gateway stopped."""
    gw = Gateway(tmp_path, [f"mqtt://127.0.0.1:{free_port()}"])
    try:
        node = gw.node("n1")
        for seq in seqs:
            node.send(seq, t=1_700_000_000 + 60 * seq, value=seq)
        wait_until(lambda: set(seqs) <= node.acked, 15, "the acks")
        node.close()
    finally:
        gw.stop()
    assert gw.proc.returncode == 0, gw.output()
    gw.log.close()
    return sqlite3.connect(tmp_path / "spool" / "spool.sqlite3", isolation_level=None)


def published(sub) -> list[senml.Record]:
    """Every batch decoded by cbor2 and resolved as RFC 8428 SenML (raises if one is not)."""
    return [r for _, _, payload, _, _ in sub.on("/batch")
            for r in senml.resolve(cbor2.loads(payload))]


def check_delivered(tmp_path, good: set[int], bad: set[int]):
    """The gateway started on the damaged spool publishes every good row as the node sent it,
    quarantines and counts the bad ones, and stays up."""
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/gw1/batch"])
    gw = Gateway(tmp_path, [broker.url])
    try:
        wait_until(lambda: gw.proc.poll() is not None or
                   good <= {r.v for r in published(sub)}, 20, "the good rows at the broker")
        assert gw.proc.poll() is None, gw.output()
        records = published(sub)
        for r in records:  # exactly as the node sent it (rigs.gateway.pack)
            assert (r.n, r.u, r.t) == (BASE + "power_import", "W", 1_700_000_000 + 60 * r.v)
        assert {r.v for r in records} == good
        wait_until(lambda: metric(gw, "spool_quarantined_rows_total") == len(bad), 10,
                   "the quarantine counted")
        assert metric(gw, "spool_frames") == 0
        # the pipeline goes on: a new frame is acked and published
        node = gw.node("n1")
        node.send(500, t=1_700_000_000 + 60 * 500, value=500)
        wait_until(lambda: 500 in {r.v for r in published(sub)}, 15, "a new frame published")
        node.close()
    finally:
        gw.stop()
        sub.close()
        broker.stop()
    assert gw.proc.returncode == 0, gw.output()
    assert "Traceback" not in gw.output(), gw.output()


def test_a_pack_whose_type_bit_flipped_to_text_is_quarantined(tmp_path):
    """SQLite keeps a BLOB of n bytes as serial type 2n+12 and TEXT as 2n+13: one bit flipped in
    a record's header makes the pack text (read back as str). Before the fix the batch's scan
    met a str, raised TypeError in the worker thread, and the uplink's task ended the gateway
    (and again on every restart)."""
    db = spool_of(tmp_path, range(1, 7))
    db.execute("UPDATE outbox SET pack = CAST(pack AS TEXT) WHERE seq = 3")
    db.execute("UPDATE outbox SET pack = 12345 WHERE seq = 5")
    db.close()
    check_delivered(tmp_path, {1, 2, 4, 6}, {3, 5})


@pytest.mark.parametrize("column", ["received", "readings"])
def test_a_row_whose_other_column_changed_type_is_quarantined(tmp_path, column):
    """The same flip in another column the uplink reads: a text `received` (a batch's age, the
    delivery latency: TypeError on the event loop before the fix), `readings` (the batch's
    count: TypeError in the worker thread)."""
    db = spool_of(tmp_path, range(1, 5))
    db.execute(f"UPDATE outbox SET {column} = 'x' WHERE seq = 2")
    assert db.execute(f"SELECT typeof({column}) FROM outbox WHERE seq = 2").fetchone() == ("text",)
    db.close()
    check_delivered(tmp_path, {1, 3, 4}, {2})
