"""The gateway service: ingest -> verify -> commit (spool, then ack), and spool -> batch ->
MQTT, in one TaskGroup. Time goes down to a node on its hello and periodically; operator
commands come from MQTT and go down as CMD frames. SIGTERM drains: stop reading links, commit
and ack what was received, publish what is pending for `drain` seconds, say offline, exit.

This module is the wiring only: each stage is its own module with its own state and one stats
object (docs/gateway.md, "Stages"); the health verdict is gateway/verdict.py."""

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
from .commit import Commit
from .config import Config
from .control import ControlSeqs
from .downlink import Downlink
from .ingest import Ingest, Link, tcp_capacity
from .metrics import Metrics
from .nodes import NodeTable, claimed_node
from .registry import Registry
from .spool import Spool
from .uplink import Uplink
from .verdict import Verdict
from .verify import Verifier

log = logging.getLogger("sensorcity.gateway")
QUEUE_DRAIN = 2.0       # seconds a stop waits for received frames to be committed


class Gateway:
    """The wiring: the stages (gateway/ingest, verify, commit, spool, uplink, downlink), the
    callbacks that connect them, the TaskGroup they run in, and the drain on a stop. Each stage
    owns its state and its stats object; metrics, /healthz and the page only read those."""

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
        self.control = ControlSeqs(self.spool)  # control seqs survive a restart: no replay
        # of one is taken as new; data seqs: the spool's, read once here
        self.verifier = Verifier(self.registry, self.control.durable, self.spool.seq_floors())
        self.downlink = Downlink(self.spool, self.registry.key_for)
        self.uplink = Uplink(self.spool, cfg)
        self.nodes = NodeTable(self.registry)  # the status page's view of the nodes
        self.commit = Commit(self.spool, self._ack, self.nodes.outcome, self.uplink.poke)
        self.ingest = Ingest(self.handle, cfg.serial_baud,
                             tcp_capacity(cfg.tcp_links_max) if cfg.listen else 0,
                             cfg.tcp_auth_timeout, cfg.tcp_idle)
        self.commands = Commands(f"{cfg.topic_prefix}/{cfg.gateway_id}", self.send_command,
                                 self.uplink.reply, lambda n: n in self.registry.nodes,
                                 cfg.cmd_resend, store=self.spool)
        self.uplink.on_message = self.commands.submit
        self.verdict = Verdict(self.ingest.stats, self.verifier.stats, self.commit.stats,
                               self.uplink.stats, self.spool, cfg.stall)
        self.health = self.verdict.health
        self.http = health.HttpStats()  # what the HTTP listener refused, for /metrics
        self.metrics = Metrics(self)
        self.started = time.time()
        self.uplink.on_published = self.metrics.published
        self.accepting = True
        self.stop_requested = asyncio.Event()
        self.tcp_started = asyncio.Event()
        self.http_started = asyncio.Event()

    # --- ingest -> verify -> commit, control frames -> downlink --------------------------
    async def handle(self, link: Link, cobs: bytes) -> bool | None:
        if not self.accepting:
            return None  # draining: not acked, so the node sends it again to our successor
        checked = self.verifier.check(cobs)
        if checked is None:
            self.nodes.reject(self.verifier.stats.last_reason, claimed_node(cobs), link.name)
            return False
        frame, records = checked
        if frame.kind in (frames.HELLO, frames.ACK):  # on disk before it moves anything
            await self.control.save(frame.node, self.verifier.control_seq[frame.node])
        if self.verifier.advance(frame):  # only a frame newer than any before moves a route
            self.downlink.route(frame.node, link)
        self.nodes.seen(frame.node, link.name)
        if frame.kind == frames.DATA:
            self.nodes.frame(frame.node, link.name, frame.seq, records)
            await self.commit.put(link, frame, records)  # bounded: backpressure on the link
        elif frame.kind == frames.HELLO:
            log.info("hello from %s on %s: %s", frame.node, link.name, frame.body)
            self.nodes.hello(frame.node, link.name, frame.body)
            if link.routed:  # a node that sends every interval s is not idle below 3 s
                link.idle = max(self.cfg.tcp_idle, 3 * frame.body["interval"])
            self.downlink.hello(link, frame, self.verifier.floor(frame))
            if self.downlink.links.get(frame.node) is link:  # a replay elsewhere resends nothing
                self.commands.connected(frame.node)
        elif frame.kind == frames.ACK and type(frame.body) is int:
            self.commands.acked(frame.node, frame.body)
        return True

    def _ack(self, link: Link, frame: frames.Frame) -> None:
        self.downlink.send(link, frame.node, frames.ACK, frame.seq)

    def send_command(self, node: str, body: dict) -> int | None:
        link = self.downlink.links.get(node)
        if link is None or not link.open:
            return None
        return self.downlink.send(link, node, frames.CMD, body)

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
            await asyncio.wait_for(self.commit.queue.join(), QUEUE_DRAIN)
        except asyncio.TimeoutError:
            log.warning("stopping: %d received frames not committed (not acked either)",
                        self.commit.queue.qsize())
        self.uplink.drain()
        deadline = began + QUEUE_DRAIN + self.cfg.drain
        # publish while connected; a broker that is away now will not be back in time
        while time.monotonic() < deadline and self.uplink.stats.connected and \
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
                tasks = [tg.create_task(self.commit.run(), name="committer"),
                         tg.create_task(self.uplink.run(), name="uplink"),
                         tg.create_task(self.uplink.messages(), name="commands in"),
                         tg.create_task(self.commands.resend(), name="commands out"),
                         tg.create_task(self.commands.persist(), name="commands kept"),
                         tg.create_task(self.downlink.time_sync(self.cfg.time_every),
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
                    tasks.append(tg.create_task(self.verdict.watchdog(period),
                                                name="watchdog"))
        except* FatalError as group:
            raise group.exceptions[0] from None
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
