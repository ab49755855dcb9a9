# The node runtime: sensor pipelines close interval records into the flash store; the link sends
# the oldest unacked frame until the gateway acks it; time and commands come back on the link.
import asyncio
import binascii
import gc
import json
import time

from micropython import const

import link
import senml
from store import Store

FW_VERSION = "0.1.0"
SEQ_BLOCK = const(64)  # sequence numbers reserved per flash write
ACK_TIMEOUT_MS = const(2000)
MAX_BACKOFF_MS = const(30000)
TIME_WAIT_MS = const(5000)


def _read_int(path, default=0):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def _write_int(path, value):
    with open(path + ".new", "w") as f:
        f.write(str(value))
    import os
    os.rename(path + ".new", path)


class Sequence:
    """A sequence number that survives reboots: a block is reserved in flash before use, so a
    reboot skips the unused rest of a block but never reuses a number."""

    def __init__(self, path):
        self.path = path
        self.next = _read_int(path)
        self.limit = self.next

    def take(self):
        if self.next >= self.limit:
            self.limit = self.next + SEQ_BLOCK
            _write_int(self.path, self.limit)
        n = self.next
        self.next += 1
        return n


class Node:
    def __init__(self, cfg, hw):
        self.cfg = cfg
        self.hw = hw
        self.node_id = cfg["node_id"]
        self.key = binascii.unhexlify(cfg["key"])
        self.base_name = cfg["base_name"]
        self.kind = cfg["sensor"]
        self.interval = int(cfg.get("interval", 60))
        self.boot = _read_int("boot") + 1
        _write_int("boot", self.boot)
        self.seq = Sequence("seq")
        self.store = Store("store.d", cfg.get("store_segments", 64))
        self.started = time.ticks_ms()
        self.resends = 0
        self.rx_rejects = 0
        self.gw_seq = -1
        self.progress = 0
        self.acked_seq = -1
        self.wake = asyncio.Event()
        self.acked = asyncio.Event()
        self.timed = asyncio.Event()
        self.write = None
        self.reboot_requested = False

    # --- records ---------------------------------------------------------------------------
    def interval_start(self, now_s=None):
        if now_s is None:
            now_s = self.hw.epoch_ms() // 1000
        return now_s - now_s % self.interval

    def emit(self, t, records):
        """Close one interval's records into a tagged frame in flash."""
        frame = link.encode_frame(self.key, link.DATA, self.node_id, self.seq.take(),
                                  senml.pack(self.base_name, t, records))
        self.store.append(frame)
        self.wake.set()

    def health(self):
        return [
            ("uptime", "s", time.ticks_diff(time.ticks_ms(), self.started) // 1000),
            ("heap_free", "B", self.hw.free_heap()),
            ("link_resends", "count", self.resends),
            ("store_depth", "count", self.store.depth),
            ("boot_count", "count", self.boot),
        ]

    # --- link ------------------------------------------------------------------------------
    def send_control(self, kind, body):
        if self.write:
            self.write(link.encode_frame(self.key, kind, self.node_id, self.seq.take(), body))

    def hello(self):
        self.send_control(link.HELLO, {"fw": FW_VERSION, "boot": self.boot, "kind": self.kind,
                                       "bn": self.base_name, "interval": self.interval})

    def on_frame(self, raw):
        try:
            kind, node, seq, body = link.parse_frame(
                link.split_frame(link.cobs_decode(raw)),
                lambda n: self.key if n == self.node_id else None)
        except link.LinkError:
            self.rx_rejects += 1
            return
        if kind == link.ACK:
            self.acked_seq = body
            self.acked.set()
            return
        if seq <= self.gw_seq:  # a replayed or old downlink frame
            self.rx_rejects += 1
            return
        self.gw_seq = seq
        if kind == link.TIME:
            self.hw.set_epoch_ms(body)
            self.timed.set()
        elif kind == link.CMD:
            self.command(body)
        self.send_control(link.ACK, seq)

    def command(self, body):
        if not isinstance(body, dict):
            return
        op = body.get("op")
        if op == "interval" and isinstance(body.get("value"), int) and body["value"] > 0:
            self.interval = body["value"]
        elif op == "reboot":
            self.reboot_requested = True

    async def reader(self, sr):
        deframer = link.Deframer()
        frames = []  # type: list
        while True:
            data = await sr.read(256)
            if not data:
                return
            deframer.feed(data, frames)
            while frames:
                self.on_frame(frames.pop(0))

    async def sender(self):
        backoff = ACK_TIMEOUT_MS
        while True:
            frame = self.store.peek()
            if frame is None or self.write is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            seq = link.frame_seq(frame)
            self.acked.clear()
            self.write(frame)
            try:
                await asyncio.wait_for_ms(self.acked.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            if self.acked_seq != seq:
                self.resends += 1
                backoff = min(backoff * 2, MAX_BACKOFF_MS)
                continue
            backoff = ACK_TIMEOUT_MS
            self.store.pop()
            self.progress += 1

    async def serial_link(self):
        rd, self.write = self.hw.console_link()
        self.hello()
        await self.reader(asyncio.StreamReader(rd))

    async def tcp_link(self, host, port):
        delay = 1
        while True:
            try:
                r, w = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1

            def write(b, w=w):
                try:
                    w.write(b)  # drained by the stream; a dead socket shows in the reader
                except OSError:
                    pass
            self.write = write
            self.hello()
            try:
                await self.reader(r)
            except OSError:
                pass
            self.write = None
            self.acked.set()  # wake the sender so it notices the link is gone
            try:
                w.close()
            except OSError:
                pass
            await asyncio.sleep(delay)

    async def hello_until_timed(self):
        while not self.timed.is_set():
            self.hello()
            try:
                await asyncio.wait_for_ms(self.timed.wait(), TIME_WAIT_MS)
            except asyncio.TimeoutError:
                pass

    # --- housekeeping ----------------------------------------------------------------------
    async def housekeeping(self):
        start = self.interval_start()
        last_progress = self.progress
        stalled_ms = 0
        self.hw.start_watchdog(self.cfg.get("watchdog_ms", 30000))
        while True:
            await asyncio.sleep_ms(1000)
            if self.progress != last_progress:
                last_progress = self.progress
                stalled_ms = 0
            else:
                stalled_ms += 1000
            if stalled_ms < self.cfg.get("stall_ms", 3 * self.interval * 1000 + 10000):
                self.hw.feed_watchdog()  # fed only while the pipelines progress
            if self.reboot_requested:
                await asyncio.sleep_ms(200)
                self.hw.reset()
            now = self.interval_start()
            if now != start:
                self.emit(start, self.health())
                start = now
                gc.collect()

    async def main(self, pipeline):
        link_cfg = self.cfg.get("link", {})
        if link_cfg.get("tcp"):
            host, port = link_cfg["tcp"].rsplit(":", 1)
            asyncio.create_task(self.tcp_link(host, int(port)))
        else:
            asyncio.create_task(self.serial_link())
        asyncio.create_task(self.sender())
        try:
            await asyncio.wait_for_ms(self.hello_until_timed(), TIME_WAIT_MS * 2)
        except asyncio.TimeoutError:
            pass  # keep the RTC's time and go on; records are still stored
        asyncio.create_task(self.hello_until_timed())
        asyncio.create_task(self.housekeeping())
        await pipeline(self)


def load_config(path="node.json"):
    with open(path) as f:
        cfg = json.load(f)
    for k in ("node_id", "key", "sensor", "base_name"):
        if k not in cfg:
            raise ValueError("node.json: missing " + k)
    return cfg
