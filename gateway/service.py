"""The gateway service: ingest -> verify -> spool -> ack, and spool -> batch -> MQTT, in one
TaskGroup. Time goes down to a node on its hello and periodically; operator commands come from
MQTT and go down as CMD frames. SIGTERM drains: stop reading links, commit and ack what was
received, publish what is pending for `drain` seconds, say offline, exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import time

from ..errors import FatalError
from ..protocol import frames
from . import health, notify
from .commands import Commands
from .config import Config
from .control import ControlSeqs
from .downlink import Downlink
from .ingest import Ingest, Link, tcp_capacity
from .metrics import Metrics
from .nodes import NodeTable, claimed_node
from .registry import Registry
from .spool import DUPLICATE, STALE, STORED, Spool, SpoolDamaged, SpoolFull
from .uplink import Uplink
from .verify import Verifier, spool_entry

log = logging.getLogger("sensorcity.gateway")
QUEUE_MAX = 1000
COMMIT_MAX = 200
PIPELINE_STALL = 10.0   # frames waiting this long without a commit: the pipeline is stuck
QUEUE_DRAIN = 2.0       # seconds a stop waits for received frames to be committed


class Gateway:
    def __init__(self, cfg: Config):
        cfg.check()
        self.cfg = cfg
        self.registry = Registry.load(cfg.nodes)
        if not self.registry.nodes:
            log.warning("node registry %s holds no nodes: every frame is rejected", cfg.nodes)
        try:
            self.spool = Spool(cfg.spool, cfg.spool_max_mb)
        except (OSError, sqlite3.Error) as exc:
            raise FatalError(f"spool {cfg.spool}: {getattr(exc, 'strerror', None) or exc}") \
                from exc
        self.verifier = Verifier(self.registry)
        self.control = ControlSeqs(self.spool)  # control seqs survive a restart: no replay
        self.verifier.control_seq.update(self.control.durable)  # of one is taken as new
        self.downlink = Downlink(self.spool, self.registry.key_for)
        self.uplink = Uplink(self.spool, cfg)
        self.ingest = Ingest(self.handle, cfg.serial_baud,
                             tcp_capacity(cfg.tcp_links_max) if cfg.listen else 0,
                             cfg.tcp_auth_timeout, cfg.tcp_idle)
        self.ingest.on_overflow = lambda n: self.verifier.rejected.update(overflow=n)
        self.commands = Commands(f"{cfg.topic_prefix}/{cfg.gateway_id}", self.send_command,
                                 self.uplink.reply, lambda n: n in self.registry.nodes,
                                 cfg.cmd_resend, store=self.spool)
        self.uplink.on_message = self.commands.submit
        self.http = health.HttpStats()  # what the HTTP listener refused, for /metrics
        self.metrics = Metrics(self)
        self.nodes = NodeTable(self.registry)  # the status page's view of the nodes
        self.started = time.time()
        self.uplink.on_published = self.metrics.published
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.links: dict[str, Link] = {}
        # per node: the highest seq accepted (routes and re-flash floors follow it), from the
        # spool once at start, then in memory: no hello waits for the spool's lock
        self.newest: dict[str, int] = self.spool.seq_floors()
        for node, seq in self.control.durable.items():
            self.newest[node] = max(seq, self.newest.get(node, -1))
        self.floors_refused = 0  # hellos no floor could answer (send_floor)
        self.commit_errors = 0
        self.commit_error_at = -1e9
        self.commit_failing: float | None = None  # since when every commit fails (monotonic)
        self.duplicates = 0
        self.stored = 0
        self.spool_full = 0
        self.spool_full_at = -1e9
        self.last_commit = time.monotonic()
        self.commit_began: float | None = None
        self.pipeline_stall = PIPELINE_STALL
        self.accepting = True
        self.stop_requested = asyncio.Event()
        self.tcp_started = asyncio.Event()
        self.http_started = asyncio.Event()

    # --- ingest -> verify -> queue ---------------------------------------------------------
    async def handle(self, link: Link, cobs: bytes) -> bool | None:
        if not self.accepting:
            return None  # draining: not acked, so the node sends it again to our successor
        checked = self.verifier.check(cobs)
        if checked is None:
            self.nodes.reject(self.verifier.last_reason, claimed_node(cobs), link.name)
            return False
        frame, records = checked
        if frame.kind in (frames.HELLO, frames.ACK):  # on disk before it moves anything
            await self.control.save(frame.node, self.verifier.control_seq[frame.node])
        if frame.seq > self._newest(frame.node):
            self._route(frame.node, link, frame.seq)
        self.nodes.seen(frame.node, link.name)
        if frame.kind == frames.DATA:
            self.nodes.frame(frame.node, link.name, frame.seq, records)
            await self.queue.put((link, frame, records))  # bounded: backpressure on the link
        elif frame.kind == frames.HELLO:
            log.info("hello from %s on %s: %s", frame.node, link.name, frame.body)
            self.nodes.hello(frame.node, link.name, frame.body)
            if link.routed:  # a node that sends every interval s is not idle below 3 s
                link.idle = max(self.cfg.tcp_idle, 3 * frame.body["interval"])
            self.send(link, frame.node, frames.ACK, frame.seq)
            self.send_floor(link, frame)
            self.send_time(link, frame.node)
            if self.links.get(frame.node) is link:  # a replay elsewhere resends nothing
                self.commands.connected(frame.node)
        elif frame.kind == frames.ACK and type(frame.body) is int:
            self.commands.acked(frame.node, frame.body)
        return True

    def _newest(self, node: str) -> int:
        """The node's highest accepted seq; after a restart, the highest its spool remembers."""
        return self.newest.get(node, -1)

    def _route(self, node: str, link: Link, seq: int) -> None:
        """Only a frame newer than any before it (no replay) moves a node's downlink (commands,
        time) to its link; the node's old link, carrying no other node, is hung up (the node
        reconnected)."""
        self.newest[node] = seq
        old = self.links.get(node)
        self.links[node] = link
        link.routed = True
        if old is not None and old is not link and old not in self.links.values():
            old.routed = False
            old.close()

    def send(self, link: Link, node: str, kind: int, body) -> int:
        return self.downlink.send(link, node, kind, body)  # never waits for the disk

    def send_floor(self, link: Link, frame: frames.Frame) -> None:
        """A hello names the node's epoch: the floor its numbers must go above (docs/protocol.md,
        "Re-flashed nodes"), bound to that epoch so no other incarnation takes it."""
        epoch = frames.hello_epoch(frame)
        if epoch is None:
            return
        floor = max(self._newest(frame.node),
                    self.verifier.control_seq.get(frame.node, -1)) + 1
        if floor >= frames.FLOOR_MAX:  # the id's numbers are spent (a key holder's seq near
            # 2^32): no floor link.cddl allows is above them; the node must be re-provisioned
            self.floors_refused += 1
            log.error("node %s: its numbers are spent up to %d, no floor can be sent: "
                      "re-provision the board under a new node id", frame.node, floor - 1)
            return
        self.verifier.floors.setdefault(frame.node, floor)  # the epoch's first: below it, a
        # hello is the node still waiting for its floor (Verifier.new_epoch)
        self.send(link, frame.node, frames.SEQ, {"epoch": epoch, "floor": floor})

    def send_time(self, link: Link, node: str) -> None:
        self.downlink.time(link, node)

    def send_command(self, node: str, body: dict) -> int | None:
        link = self.links.get(node)
        if link is None or not link.open:
            return None
        return self.send(link, node, frames.CMD, body)

    # --- queue -> spool -> ack -------------------------------------------------------------
    async def committer(self) -> None:
        """Group commit: everything waiting is written in one transaction, then acked. A full
        disk acks nothing (the nodes keep their frames) and is tried again."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < COMMIT_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self.commit_began = time.monotonic()
            try:
                entries = [spool_entry(frame, records) for _, frame, records in batch]
                outcomes = await asyncio.to_thread(self.spool.store, entries)
                self.commit_failing = None
            except SpoolDamaged as exc:  # set aside and salvaged: the nodes resend to the new one
                log.error("spool: damaged in a commit, %d frames not acked: %s", len(batch), exc)
                outcomes = []
            except SpoolFull as exc:
                self.spool_full += 1
                self.spool_full_at = time.monotonic()
                log.error("spool: disk full, %d frames not acked: %s", len(batch), exc)
                outcomes = []
            except Exception:  # a bug must not end the gateway: not acked, the nodes resend
                self.commit_errors += 1
                self.commit_failing = self.commit_failing or time.monotonic()
                if time.monotonic() - self.commit_error_at > 60:
                    self.commit_error_at = time.monotonic()
                    log.exception("commit of %d frames failed (%d failed commits so far); "
                                  "not acked", len(batch), self.commit_errors)
                outcomes = []
            for i, (link, frame, _) in enumerate(batch):
                if i < len(outcomes):
                    self.send(link, frame.node, frames.ACK, frame.seq)
                    self.nodes.outcome(frame.node, outcomes[i])
                self.queue.task_done()
            self.last_commit = time.monotonic()
            self.commit_began = None
            self.stored += outcomes.count(STORED)
            self.duplicates += outcomes.count(DUPLICATE)
            self.verifier.rejected["stale"] += outcomes.count(STALE)  # acked, not stored
            if STORED in outcomes:
                self.uplink.wake.set()
            if not outcomes:
                await asyncio.sleep(1)

    # --- downlink: time and commands -------------------------------------------------------
    async def resend_commands(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.cmd_resend))
            self.commands.tick()

    # --- health ----------------------------------------------------------------------------
    @property
    def spool_depth(self) -> int:
        return self.spool.depth()

    def pipeline_alive(self) -> bool:
        """Frames that arrive get committed: no commit takes longer than the stall limit, and
        frames do not wait that long for the committer to come back for them."""
        now = time.monotonic()
        if self.commit_failing is not None and now - self.commit_failing >= self.pipeline_stall:
            return False  # every commit fails (a card remounted read-only): let systemd restart
        if self.commit_began is not None:
            return now - self.commit_began < self.pipeline_stall
        return self.queue.empty() or now - self.last_commit < self.pipeline_stall

    def health(self) -> tuple[bool, str]:
        if self.commit_failing is not None:
            return False, (f"spool: commits fail ({self.commit_errors} so far), frames are not "
                           f"acked; see the log")
        if not self.pipeline_alive():
            return False, (f"pipeline stalled: a commit or {self.queue.qsize()} queued frames "
                           f"wait for the spool")
        if time.monotonic() - self.spool_full_at < self.pipeline_stall:
            return False, "spool: the disk is full, frames are not acked"
        silent = time.monotonic() - self.uplink.last_progress
        if silent > self.cfg.stall:
            depth = self.spool_depth
            if depth:
                state = "connected" if self.uplink.connected else "not connected"
                return False, (f"uplink stalled: {depth} frames spooled, none published for "
                               f"{silent:.0f} s ({state})")
        damage = self.spool.damage()  # degraded, still acking and publishing: an operator's alarm
        if damage:
            return False, damage
        return True, "ok"

    async def watchdog(self, period: float) -> None:
        """systemd's watchdog is fed only while the pipeline progresses; an unreachable broker
        does not stop it (a restart would not help, the spool holds the data)."""
        while True:
            if self.pipeline_alive():
                notify.notify("WATCHDOG=1")
            await asyncio.sleep(period)

    # --- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_requested.set()

    async def _drain(self, ingress: list[asyncio.Task], everything: list[asyncio.Task]) -> None:
        await self.stop_requested.wait()
        began = time.monotonic()
        notify.notify("STOPPING=1")
        log.info("stopping: draining")
        self.accepting = False
        for t in ingress:
            t.cancel()
        self.ingest.close_links()
        try:
            await asyncio.wait_for(self.queue.join(), QUEUE_DRAIN)
        except asyncio.TimeoutError:
            log.warning("stopping: %d received frames not committed (not acked either)",
                        self.queue.qsize())
        self.uplink.draining = True
        self.uplink.wake.set()
        deadline = began + QUEUE_DRAIN + self.cfg.drain
        # publish while connected; a broker that is away now will not be back in time
        while time.monotonic() < deadline and self.uplink.connected and \
                await asyncio.to_thread(self.spool.depth):
            await asyncio.sleep(0.05)
        try:
            await self.commands.flush()  # what waits for its node is there at the next start
        except Exception:
            pass  # logged; the command is lost with this run
        await self.uplink.goodbye()
        left = await asyncio.to_thread(self.spool.depth)
        log.info("stopped after %.1f s; %d frames stay spooled for the next start",
                 time.monotonic() - began, left)
        for t in everything:
            t.cancel()

    async def run(self, handle_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.committer(), name="committer"),
                         tg.create_task(self.uplink.run(), name="uplink"),
                         tg.create_task(self.uplink.messages(), name="commands in"),
                         tg.create_task(self.resend_commands(), name="commands out"),
                         tg.create_task(self.commands.persist(), name="commands kept"),
                         tg.create_task(self.downlink.time_sync(self.links, self.cfg.time_every),
                                        name="time"),
                         tg.create_task(asyncio.to_thread(self.spool.check), name="spool check")]
                if self.cfg.metrics:  # first: a flood on the node links must not keep it from
                    # its socket (it would find no descriptor left)
                    host, port = self.cfg.metrics.rsplit(":", 1)
                    tasks.append(tg.create_task(
                        health.serve(host, int(port), self, self.http_started), name="http"))
                    await self.http_started.wait()
                ingress = []
                for url in self.cfg.listen:
                    host, port = url[len("tcp://"):].rsplit(":", 1)
                    ingress.append(tg.create_task(
                        self.ingest.serve_tcp(host, int(port), self.tcp_started),
                        name=f"tcp {url}"))
                if self.cfg.serial:
                    ingress.append(tg.create_task(self.ingest.watch_serial(self.cfg.serial, tg),
                                                  name="serial watch"))
                tasks += ingress
                tg.create_task(self._drain(ingress, tasks), name="drain")
                for started, wanted in ((self.tcp_started, self.cfg.listen),
                                        (self.http_started, self.cfg.metrics)):
                    if wanted:
                        await started.wait()
                notify.notify("READY=1")
                log.info("gateway %s ready", self.cfg.gateway_id)
                period = notify.watchdog_period()
                if period and not self.stop_requested.is_set():
                    tasks.append(tg.create_task(self.watchdog(period), name="watchdog"))
        except* FatalError as group:
            raise group.exceptions[0] from None
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
