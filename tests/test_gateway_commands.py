"""Operator commands: parsed strictly, sent as CMD frames, resent under a fresh sequence number
until the node acks one of them, answered once on the ack topic."""

import json

import pytest

from sensorcity.gateway import commands
from sensorcity.gateway.commands import Commands

BASE = "sensorcity/v1/gw1"


class Rig:
    def __init__(self, online=True):
        self.sent, self.replies, self.seq, self.online = [], [], 10, online
        self.c = Commands(BASE, self.send, self.reply, lambda n: n in ("n1", "n2"),
                          resend_every=5.0)

    def send(self, node, body):
        if not self.online:
            return None
        self.seq += 1
        self.sent.append((node, body, self.seq))
        return self.seq

    def reply(self, topic, payload):
        self.replies.append((topic, json.loads(payload)))


def test_parse_accepts_the_two_ops_and_refuses_the_rest():
    assert commands.parse("n1", b'{"op": "interval", "value": 30}') == \
        {"op": "interval", "value": 30}
    assert commands.parse("n1", b'{"op": "reboot", "id": 7}') == {"op": "reboot"}
    for bad in (b"nope", b"[1]", b'{"op": "interval", "value": 0}',
                b'{"op": "interval", "value": 1.5}', b'{"op": "interval", "value": true}',
                b'{"op": "interval", "value": 86401}', b'{"op": "format"}', b"\xff"):
        try:
            commands.parse("n1", bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_resent_until_acked_then_answered_once(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(commands.time, "monotonic", lambda: now[0])
    r = Rig()
    r.c.submit(f"{BASE}/cmd/n1", b'{"op": "interval", "value": 1, "id": "abc"}')
    assert r.sent == [("n1", {"op": "interval", "value": 1}, 11)]
    now[0] += 4.9
    r.c.tick()
    assert len(r.sent) == 1                      # not yet due
    now[0] += 0.2
    r.c.tick()
    assert [s[2] for s in r.sent] == [11, 12]    # a fresh sequence number each time
    r.c.acked("n1", 99)                          # some other frame's ack (a time frame)
    r.c.acked("n2", 11)                          # another node's
    assert r.replies == [] and len(r.c.pending) == 1
    r.c.acked("n1", 11)                          # the first send's ack, arriving late: done
    assert r.c.pending == []
    (topic, msg), = r.replies
    assert topic == f"{BASE}/cmd/n1/ack"
    assert msg["status"] == "acked" and msg["id"] == "abc" and msg["op"] == "interval"
    assert msg["attempts"] == 2 and msg["seq"] == 11
    r.c.acked("n1", 12)                          # the second send's ack changes nothing
    assert len(r.replies) == 1 and r.c.stats.acked == 1


def test_waits_for_an_absent_node_and_sends_on_hello(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(commands.time, "monotonic", lambda: now[0])
    r = Rig(online=False)
    r.c.submit(f"{BASE}/cmd/n2", b'{"op": "reboot"}')
    assert r.sent == [] and len(r.c.pending) == 1 == r.c.stats.pending
    r.online = True
    r.c.connected("n2")
    assert r.sent == [("n2", {"op": "reboot"}, 11)]
    now[0] += commands.TTL + 1
    r.c.tick()
    assert r.c.pending == [] and r.replies[-1][1]["status"] == "expired"


def test_bad_requests_are_answered_not_sent():
    r = Rig()
    r.c.submit(f"{BASE}/cmd/n9", b'{"op": "reboot", "id": 1}')
    r.c.submit(f"{BASE}/cmd/n1", b'{"op": "selfdestruct"}')
    assert r.sent == []
    assert [m["status"] for _, m in r.replies] == ["rejected", "rejected"]
    assert "unknown node" in r.replies[0][1]["error"] and r.replies[0][1]["id"] == 1
    assert r.c.stats.rejected == 2


def test_pending_commands_are_bounded(monkeypatch):
    monkeypatch.setattr(commands, "PENDING_MAX", 3)
    r = Rig(online=False)
    for _ in range(5):
        r.c.submit(f"{BASE}/cmd/n1", b'{"op": "reboot"}')
    assert len(r.c.pending) == 3
    assert [m["status"] for _, m in r.replies] == ["rejected", "rejected"]


@pytest.mark.adversarial
def test_a_retained_command_is_refused_never_sent():
    """One `mosquitto_pub -r` by mistake must not reboot the node on every subscribe."""
    r = Rig()
    for _ in range(3):  # the broker hands it out again on each (re)subscribe
        r.c.submit(f"{BASE}/cmd/n1", json.dumps({"op": "reboot", "id": "r9"}).encode(),
                   retain=True)
    assert r.sent == [] and r.c.pending == [] and r.c.stats.retained == 3
    topic, ack = r.replies[0]
    assert topic == f"{BASE}/cmd/n1/ack" and len(r.replies) == 3
    assert ack["status"] == "rejected" and ack["id"] == "r9" and "retained" in ack["error"]
    r.c.submit(f"{BASE}/cmd/n1", json.dumps({"op": "reboot"}).encode())  # not retained: runs
    assert [b for _, b, _ in r.sent] == [{"op": "reboot"}]


@pytest.mark.adversarial
def test_an_oversized_command_payload_is_rejected_with_a_reply():
    """A command is under 100 bytes; a 5000-byte one is refused before it is parsed."""
    r = Rig()
    r.c.submit(f"{BASE}/cmd/n1", b'{"op": "reboot", "pad": "' + b"x" * 5000 + b'"}')
    assert r.sent == [] and r.replies[0][1]["status"] == "rejected"
    assert "4096 bytes" in r.replies[0][1]["error"]


def test_a_waiting_command_is_kept_in_the_spool_with_its_age(tmp_path, monkeypatch):
    """Taken, written by the worker, reloaded by the next run's Commands with the time it has
    waited (an hour of its day here, by the wall clock): it expires on time, and once acked or
    expired it is gone from the spool."""
    import asyncio
    import time as _time

    from sensorcity.gateway.spool import Spool
    spool = Spool(tmp_path / "spool")
    r = Rig(online=False)
    r.c = Commands(BASE, r.send, r.reply, lambda n: n in ("n1", "n2"), store=spool)
    r.c.submit(f"{BASE}/cmd/n1", b'{"op": "interval", "value": 30, "id": "c1"}')
    r.c.submit(f"{BASE}/cmd/n2", b'{"op": "reboot"}')
    asyncio.run(r.c.flush())
    spool.db.execute("UPDATE commands SET received = received - 3600")  # taken an hour ago
    r.online = True
    again = Commands(BASE, r.send, r.reply, lambda n: n in ("n1", "n2"), store=spool)
    assert [(p.node, p.body, p.request_id) for p in again.pending] == \
        [("n1", {"op": "interval", "value": 30}, "c1"), ("n2", {"op": "reboot"}, None)]
    age = _time.monotonic() - again.pending[0].received
    assert 3590 < age < 3700, age
    again.connected("n1")
    again.acked("n1", r.sent[-1][2])
    real = _time.monotonic
    monkeypatch.setattr(commands.time, "monotonic", lambda: real() + commands.TTL)
    again.tick()  # n2's waited TTL + 1 h: expired
    assert [m["status"] for _, m in r.replies] == ["acked", "expired"]
    asyncio.run(again.flush())
    assert spool.commands_waiting() == []
    spool.close()
