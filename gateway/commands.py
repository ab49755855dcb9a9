"""Operator commands, MQTT to node and back: `<prefix>/<gateway>/cmd/<node>` carries JSON
{"op": "interval", "value": 30} or {"op": "reboot"} (an optional "id" is echoed). Each goes to the
node as a CMD frame; the node's ACK of that frame's sequence number becomes a reply on
`.../cmd/<node>/ack`. Until then the command is resent, each time under a new sequence number (a
node drops a number it has seen), so a node may apply a command twice: both ops are idempotent
but for reboot, which then reboots twice at worst.

A retained command is refused, never run: the broker hands it out again on every subscribe, so
one `mosquitto_pub -r` would reboot a node on every gateway restart. (MQTT 5 subscribes with
retain-as-published, so one published retained while we listen is refused as well.)

A command waiting for its node is kept in the spool (its `commands` table), written by a worker
thread, never on the loop: a gateway restart reloads it with the time it has waited, so its TTL
goes on where it was."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from .spool import Waiting

log = logging.getLogger("sensorcity.gateway.commands")
INTERVAL_MAX = 86400
TTL = 24 * 3600.0  # a node that stays away this long gets its command expired
PENDING_MAX = 1000  # commands waiting for acks, all nodes together
NODE_PENDING_MAX = 16  # ... and for one node: a flood for one absent node leaves room for others
PAYLOAD_MAX = 4096  # bytes of a command's JSON: a real one is under 100


@dataclass
class Pending:
    node: str
    body: dict
    request_id: object
    received: float = field(default_factory=lambda: time.monotonic())
    seqs: set = field(default_factory=set)
    sent_at: float = 0.0
    key: int = 0  # its row in the spool
    wall: float = field(default_factory=time.time)  # received, for the TTL across a restart


def parse(node: str, payload: bytes) -> dict:
    """The CMD frame's body for a request, or ValueError with what is wrong."""
    if len(payload) > PAYLOAD_MAX:
        raise ValueError(f"payload is over {PAYLOAD_MAX} bytes")
    try:
        req = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ValueError("payload is not JSON (or nested too deep)") from None
    if not isinstance(req, dict):
        raise ValueError("payload is not a JSON object")
    op = req.get("op")
    if op == "interval":
        v = req.get("value")
        if type(v) is not int or not 1 <= v <= INTERVAL_MAX:
            raise ValueError(f"interval value must be an integer 1..{INTERVAL_MAX} (seconds)")
        return {"op": "interval", "value": v}
    if op == "reboot":
        return {"op": "reboot"}
    raise ValueError(f"unknown op {op!r}: use interval or reboot")


@dataclass(slots=True)
class CommandStats:
    sent: int = 0               # CMD frames sent (resends included)
    acked: int = 0              # commands a node acknowledged
    rejected: int = 0           # requests refused (bad JSON, op, node, too many waiting)
    retained: int = 0           # retained messages refused (never run)
    expired: int = 0            # given up after their time to live
    pending: int = 0            # waiting for a node's ack now
    save_failures: int = 0      # writes of the waiting commands the spool refused


class Commands:
    def __init__(self, base: str, send: Callable[[str, dict], int | None],
                 reply: Callable[[str, bytes], None], known: Callable[[str], bool],
                 resend_every: float = 5.0, store=None):
        self.base = base  # <prefix>/<gateway-id>
        self.send = send  # (node, body) -> the frame's seq, or None when the node has no link
        self.reply = reply
        self.known = known
        self.resend_every = resend_every
        self.pending: list[Pending] = []
        self.stats = CommandStats()
        self.store = store  # the spool, or None: in memory only
        self._add: list[Pending] = []  # taken, not yet written
        self._done: list[int] = []     # acked or expired, not yet deleted
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._key = 0
        if store is not None:
            self._load()

    def _load(self) -> None:
        """The commands a previous run left waiting, with the time they have waited."""
        now_wall, now = time.time(), time.monotonic()
        for w in self.store.commands_waiting():
            self._key = max(self._key, w.id)
            age = min(max(now_wall - w.received, 0.0), TTL + 1)  # a clock stepped back: not < 0
            try:
                p = Pending(w.node, json.loads(w.body), json.loads(w.request_id), now - age,
                            key=w.id, wall=w.received)
            except ValueError:
                self._done.append(w.id)
                continue
            self.pending.append(p)
        self.stats.pending = len(self.pending)
        if self.pending:
            log.info("%d commands wait for their nodes since the last run", len(self.pending))

    def _changed(self, add: Pending | None = None, done: Pending | None = None) -> None:
        if add is not None:
            self._key += 1
            add.key = self._key
            self._add.append(add)
        if done is not None:
            self._done.append(done.key)
        self.stats.pending = len(self.pending)
        self._wake.set()

    async def flush(self) -> None:
        """Write what changed, in a worker thread; on failure it stays for the next try."""
        async with self._writing:
            self._wake.clear()
            if self.store is None or not (self._add or self._done):
                return
            add, done, self._add, self._done = self._add, self._done, [], []
            rows = [Waiting(p.key, p.node, json.dumps(p.body), json.dumps(p.request_id), p.wall)
                    for p in add]
            try:
                await asyncio.to_thread(self.store.save_commands, rows, done)
            except Exception as exc:
                self._add[:0], self._done[:0] = add, done
                self.stats.save_failures += 1
                if self.stats.save_failures % 60 == 1:
                    log.error("commands: %d waiting commands not written to the spool (%d "
                              "failures): %s", len(add), self.stats.save_failures, exc)
                raise

    async def persist(self) -> None:
        """The writer task: each change goes to the spool soon after it is made."""
        while True:
            await self._wake.wait()
            try:
                await self.flush()
            except Exception:
                await asyncio.sleep(1.0)
                self._wake.set()

    def _answer(self, node: str, status: str, request_id=None, **extra) -> None:
        msg = {"node": node, "status": status, **extra}
        if request_id is not None:
            msg["id"] = request_id
        self.reply(f"{self.base}/cmd/{node}/ack", json.dumps(msg).encode())

    def submit(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """A message from `.../cmd/<node>`."""
        node = topic.rsplit("/", 1)[-1]
        try:
            req_id = json.loads(payload).get("id") if len(payload) <= PAYLOAD_MAX else None
        except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
            req_id = None
        if retain:
            self.stats.retained += 1
            log.warning("retained command on %s refused (clear it: mosquitto_pub -r -n -t %s)",
                        topic, topic)
            self._answer(node, "rejected", req_id, error="retained: a command must not be "
                         f"retained; clear it with an empty retained message on {topic}")
            return
        try:
            if not self.known(node):
                raise ValueError(f"unknown node {node!r}")
            if len(self.pending) >= PENDING_MAX:
                raise ValueError(f"{PENDING_MAX} commands wait already")
            if sum(p.node == node for p in self.pending) >= NODE_PENDING_MAX:
                raise ValueError(f"{NODE_PENDING_MAX} commands wait for {node} already")
            body = parse(node, payload)
        except ValueError as exc:
            self.stats.rejected += 1
            self._answer(node, "rejected", req_id, error=str(exc))
            return
        p = Pending(node, body, req_id)
        self.pending.append(p)
        self._changed(add=p)
        log.info("command for %s: %s", node, body)
        self._try(p)

    def _try(self, p: Pending) -> None:
        seq = self.send(p.node, p.body)
        if seq is not None:
            p.seqs.add(seq)
            p.sent_at = time.monotonic()
            self.stats.sent += 1

    def acked(self, node: str, seq: int) -> None:
        """The node acked one of our frames; if it carried a command, the command is done."""
        for p in self.pending:
            if p.node == node and seq in p.seqs:
                self.pending.remove(p)
                self._changed(done=p)
                self.stats.acked += 1
                self._answer(node, "acked", p.request_id, op=p.body["op"], seq=seq,
                             attempts=len(p.seqs),
                             seconds=round(time.monotonic() - p.received, 3))
                return

    def connected(self, node: str) -> None:
        """The node said hello: what waits for it goes now."""
        for p in self.pending:
            if p.node == node:
                self._try(p)

    async def resend(self) -> None:
        """The resend task: a command not yet acked goes again every resend_every seconds."""
        while True:
            await asyncio.sleep(min(1.0, self.resend_every))
            self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        for p in list(self.pending):
            if now - p.received > TTL:
                self.pending.remove(p)
                self._changed(done=p)
                self.stats.expired += 1
                self._answer(p.node, "expired", p.request_id, op=p.body["op"])
            elif now - p.sent_at >= self.resend_every:
                self._try(p)
