"""The gateway service: ingest -> verify -> spool -> ack, and spool -> batch -> MQTT, in one
TaskGroup. Time goes down to a node on its hello and periodically."""

from __future__ import annotations

import asyncio
import logging
import time

from . import frames
from .config import Config
from .ingest import Link, serve_serial, serve_tcp
from .registry import Registry
from .spool import Spool
from .uplink import Broker, Uplink
from .verify import Verifier, encode_records

log = logging.getLogger("sensorcity.gateway")
QUEUE_MAX = 1000
COMMIT_MAX = 200


class Gateway:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.registry = Registry.load(cfg.nodes)
        self.spool = Spool(cfg.spool)
        self.verifier = Verifier(self.registry)
        self.uplink = Uplink(self.spool, [Broker.parse(b) for b in cfg.brokers], cfg.gateway_id,
                             cfg.topic_prefix, cfg.batch_max, cfg.batch_age, cfg.mqtt_version)
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.links: dict[str, Link] = {}
        self.duplicates = 0
        self.stored = 0
        self.tcp_started = asyncio.Event()

    async def handle(self, link: Link, cobs: bytes) -> None:
        checked = self.verifier.check(cobs)
        if checked is None:
            return
        frame, records = checked
        self.links[frame.node] = link
        if frame.kind == frames.DATA:
            await self.queue.put((link, frame, records))  # bounded: backpressure on the link
        elif frame.kind == frames.HELLO:
            log.info("hello from %s on %s: %s", frame.node, link.name, frame.body)
            self.send(link, frame.node, frames.ACK, frame.seq)
            self.send_time(link, frame.node)

    def send(self, link: Link, node: str, kind: int, body) -> None:
        key = self.registry.key_for(node)
        seq = 0 if kind == frames.ACK else self.spool.next_downlink_seq(node)
        link.send(frames.encode(key, kind, node, seq, body))

    def send_time(self, link: Link, node: str) -> None:
        self.send(link, node, frames.TIME, int(time.time() * 1000))

    async def committer(self) -> None:
        """Group commit: everything waiting is written in one transaction, then acked."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < COMMIT_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            fresh = await asyncio.to_thread(self._commit, batch)
            for link, frame, _ in batch:
                self.send(link, frame.node, frames.ACK, frame.seq)
            self.stored += fresh
            self.duplicates += len(batch) - fresh
            if fresh:
                self.uplink.wake.set()

    def _commit(self, batch) -> int:
        fresh = 0
        with self.spool.transaction():
            for _, frame, records in batch:
                fresh += self.spool.insert(frame.node, frame.seq, encode_records(records),
                                           len(records))
        return fresh

    async def time_sync(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.time_every)
            for node, link in list(self.links.items()):
                if link.open:
                    self.send_time(link, node)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.committer(), name="committer")
            tg.create_task(self.uplink.run(), name="uplink")
            tg.create_task(self.time_sync(), name="time")
            for url in self.cfg.listen:
                host, port = url[len("tcp://"):].rsplit(":", 1)
                tg.create_task(serve_tcp(host, int(port), self.handle, self.tcp_started),
                               name=f"tcp {url}")
            for dev in self.cfg.serial:
                tg.create_task(serve_serial(dev, self.handle), name=f"serial {dev}")
