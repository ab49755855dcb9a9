"""The downlink stage: ACK, SEQ, TIME and CMD frames to the nodes, the link each node's
downlink goes to (its route), the answer to a hello and the time-sync rounds.

A TIME or CMD frame carries a per-node sequence number the node has not seen: a node drops any
number at or below the last it accepted (firmware/node.py), so a restarted gateway must never
use a number again. Numbers come from memory; what makes them safe across a crash is a
reservation in the spool (`downlink` table: "numbers up to R may have been used"), written by
a worker thread, never on the event loop. A frame goes out only once its number is at or below
a durable reservation; the next block (BLOCK numbers) is reserved when half of the current one
is used, so in steady state no frame waits. After a start nothing is reserved yet: numbers go on
from R + 1 and the first frames of each node wait (at most HELD_MAX) for one transaction that
reserves the blocks of every node that asked meanwhile.

A reservation that cannot be written (a full or failing disk): the frames waiting for it are
dropped and counted (`unsent`), never sent under an unreserved number; the next try comes
RETRY seconds later (docs/gateway.md)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..protocol import frames

log = logging.getLogger("sensorcity.gateway.downlink")
BLOCK = 1000    # numbers reserved at a time; a crash skips at most this many
HELD_MAX = 16   # frames of one node waiting for their reservation
RETRY = 1.0     # seconds between a failed reservation and the next


@dataclass
class DownlinkStats:
    acks: int = 0               # frames handed to a link, by kind
    times: int = 0
    commands: int = 0
    blocks_reserved: int = 0    # (node, block) reservations made durable
    reservations: int = 0       # the transactions that wrote them
    reserve_failures: int = 0   # transactions that failed (disk full, I/O error)
    unsent: int = 0             # TIME/CMD frames dropped: no durable number for them
    waiting: int = 0            # frames waiting for a reservation now


class Downlink:
    def __init__(self, spool, key_for: Callable[[str], bytes]):
        self.spool = spool
        self.key_for = key_for
        self.stats = DownlinkStats()
        self.durable = spool.downlink_reserved()  # node -> highest number reserved (maybe used)
        self.next = {n: r + 1 for n, r in self.durable.items()}
        self.asked = dict(self.durable)           # node -> highest reservation durable or asked
        self.wanted: dict[str, int] = {}          # node -> reservation still to write
        self.held: dict[str, deque] = {}          # node -> (link, seq, kind, body) waiting
        self.links: dict = {}                     # node -> the link its downlink goes to
        self.writer: asyncio.Task | None = None
        self.clock: Callable[[], float] = time.time  # the time TIME frames carry (a test's seam)

    # --- frames ----------------------------------------------------------------------------
    def send(self, link, node: str, kind: int, body) -> int:
        """Send a frame; the number it carries (0 for an ACK, whose body names what it acks)."""
        if kind == frames.ACK:
            self._write(link, node, kind, 0, body)
            return 0
        seq = self.next.get(node, 0)
        self.next[node] = seq + 1
        asked = self.asked.get(node, -1)
        if seq > asked - BLOCK // 2:  # half of the block used: the next one, ahead
            self.asked[node] = self.wanted[node] = max(asked, seq) + BLOCK
            self._kick()
        if seq <= self.durable.get(node, -1) and node not in self.held:
            self._write(link, node, kind, seq, body)
            return seq
        held = self.held.setdefault(node, deque())
        if len(held) >= HELD_MAX:
            held.popleft()
            self.stats.unsent += 1
            self.stats.waiting -= 1
        held.append((link, seq, kind, body))
        self.stats.waiting += 1
        return seq

    def time(self, link, node: str) -> int:
        return self.send(link, node, frames.TIME, None)

    def route(self, node: str, link) -> None:
        """The node's downlink (commands, time) goes to this link from now on (the caller
        checked the frame is newer than any before: no replay moves a route); the node's old
        link, carrying no other node, is hung up (the node reconnected)."""
        old = self.links.get(node)
        self.links[node] = link
        link.routed = True
        if old is not None and old is not link and old not in self.links.values():
            old.routed = False
            old.close()

    def hello(self, link, frame: frames.Frame, floor: int | None) -> None:
        """A hello's answer: its ACK, the floor of its epoch when it has one (docs/protocol.md,
        "Re-flashed nodes"), the time."""
        self.send(link, frame.node, frames.ACK, frame.seq)
        if floor is not None:
            self.send(link, frame.node, frames.SEQ,
                      {"epoch": frames.hello_epoch(frame), "floor": floor})
        self.time(link, frame.node)

    def _write(self, link, node: str, kind: int, seq: int, body) -> None:
        if kind == frames.TIME:
            body = int(self.clock() * 1000)  # the clock when it leaves, not when it was asked
            self.stats.times += 1
        elif kind == frames.CMD:
            self.stats.commands += 1
        else:
            self.stats.acks += 1
        link.send(frames.encode(self.key_for(node), kind, node, seq, body))

    async def time_sync(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for node, link in list(self.links.items()):
                if link.open:
                    self.time(link, node)

    # --- reservations ----------------------------------------------------------------------
    def _kick(self) -> None:
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(self._reserve(),
                                                                 name="downlink reserve")

    async def _reserve(self) -> None:
        """One transaction at a time, for every node that asked meanwhile."""
        while self.wanted:
            want, self.wanted = self.wanted, {}
            try:
                await asyncio.to_thread(self.spool.reserve_downlink, want)
            except sqlite3.Error as exc:
                self.stats.reserve_failures += 1
                log.error("downlink: numbers for %d nodes not reserved, their TIME/CMD frames "
                          "are not sent: %s", len(want), exc)
                for node in want:
                    self.asked[node] = self.durable.get(node, -1)  # asked again on the next send
                    dropped = len(self.held.pop(node, ()))
                    self.stats.unsent += dropped
                    self.stats.waiting -= dropped
                await asyncio.sleep(RETRY)
                continue
            self.stats.reservations += 1
            self.stats.blocks_reserved += len(want)
            for node, upto in want.items():
                self.durable[node] = max(self.durable.get(node, -1), upto)
                self._flush(node)

    def _flush(self, node: str) -> None:
        held = self.held.get(node)
        while held and held[0][1] <= self.durable[node]:
            link, seq, kind, body = held.popleft()
            self.stats.waiting -= 1
            self._write(link, node, kind, seq, body)
        if not held:
            self.held.pop(node, None)
