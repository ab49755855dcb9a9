"""Ingest: node links over TCP (Wi-Fi nodes) and USB serial, split into COBS frames.

Serial devices are watched, not opened once: `serial` holds paths or globs (for example
/dev/serial/by-id/*), scanned every second; a device that appears gets a link, one that vanishes
loses it. Memory per link is bounded: one read of READ_CHUNK bytes and a deframer of at most
2 * MAX_FRAME bytes; a link waits (backpressure) while the commit queue is full."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..errors import FatalError
from ..protocol import frames

log = logging.getLogger("sensorcity.gateway.ingest")
READ_CHUNK = 4096
TCP_LINKS_MAX = 1024
SCAN_EVERY = 1.0
RETRY_AFTER = 2.0


@dataclass
class LinkStats:
    """Counters of one link name (a serial device path, or a TCP peer's address)."""
    bytes: int = 0
    frames: int = 0
    rejected: int = 0
    overflows: int = 0          # runs longer than a frame, dropped while resyncing
    sessions: int = 0           # times the link was opened (plugged in, connected)
    open: int = 0               # sessions open now
    last_rx: float = 0.0        # wall clock of the last byte


class Link:
    """One node connection; frames from it are acked back on it."""

    def __init__(self, name: str, write: Callable[[bytes], None], stats: LinkStats | None = None):
        self.name = name
        self._write = write
        self.deframer = frames.Deframer()
        self.stats = stats or LinkStats()
        self.open = True

    def feed(self, data: bytes) -> list[bytes]:
        s = self.stats
        s.bytes += len(data)
        s.last_rx = time.time()
        before = self.deframer.overflows
        out = self.deframer.feed(data)
        s.overflows += self.deframer.overflows - before
        s.frames += len(out)
        return out

    def send(self, data: bytes) -> None:
        if self.open:
            try:
                self._write(data)
            except OSError:
                self.open = False


# a handler returns False when it rejected the frame (counted on the link)
Handler = Callable[[Link, bytes], Awaitable[bool | None]]


class Ingest:
    """The links' counters by name, and the ways in: TCP listeners and watched serial devices."""

    def __init__(self, handle: Handler, baud: int = 115200):
        self.handle = handle
        self.baud = baud
        self.stats: dict[str, LinkStats] = {}
        self.tcp_open = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.on_overflow: Callable[[int], None] | None = None  # counted as a rejection too

    def close_links(self) -> None:
        """Hang up every TCP link (serial links end with their watcher's tasks)."""
        for w in list(self._writers):
            w.close()

    def _stats(self, name: str) -> LinkStats:
        return self.stats.setdefault(name, LinkStats())

    async def _pump(self, link: Link, data: bytes) -> None:
        before = link.stats.overflows
        cobs_frames = link.feed(data)
        if link.stats.overflows != before and self.on_overflow:
            self.on_overflow(link.stats.overflows - before)
        for cobs in cobs_frames:
            if await self.handle(link, cobs) is False:
                link.stats.rejected += 1

    async def serve_tcp(self, host: str, port: int, started: asyncio.Event | None = None):
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            peer = writer.get_extra_info("peername")
            if self.tcp_open >= TCP_LINKS_MAX:
                writer.close()
                return
            stats = self._stats(f"tcp:{peer[0]}")
            link = Link(f"tcp:{peer[0]}:{peer[1]}", writer.write, stats)
            self.tcp_open += 1
            self._writers.add(writer)
            stats.sessions += 1
            stats.open += 1
            try:
                while data := await reader.read(READ_CHUNK):
                    await self._pump(link, data)
            except (ConnectionError, OSError):
                pass
            finally:
                link.open = False
                self.tcp_open -= 1
                self._writers.discard(writer)
                stats.open -= 1
                writer.close()

        try:
            server = await asyncio.start_server(client, host, port)
        except OSError as exc:
            raise FatalError(f"listen tcp://{host}:{port}: {exc.strerror or exc}") from exc
        if started is not None:
            started.port = server.sockets[0].getsockname()[1]
            started.set()
        async with server:
            await server.serve_forever()

    def scan(self, patterns: list[str]) -> dict[str, str]:
        """Character devices matching the patterns now: real path -> the name matched first
        (so a by-id name listed first wins over the ttyUSBn it points to)."""
        found: dict[str, str] = {}
        for pattern in patterns:
            for path in sorted(glob.glob(pattern)):
                real = os.path.realpath(path)
                try:
                    if not stat.S_ISCHR(os.stat(real).st_mode):
                        continue
                except OSError:
                    continue
                found.setdefault(real, path)
        return found

    async def watch_serial(self, patterns: list[str], tg: asyncio.TaskGroup,
                           every: float = SCAN_EVERY):
        """Hot-plug: a link task per present device, in the service's TaskGroup."""
        active: dict[str, tuple[str, asyncio.Task]] = {}
        retry_at: dict[str, float] = {}
        try:
            while True:
                present = self.scan(patterns)
                now = time.monotonic()
                for real, (path, task) in list(active.items()):
                    if task.done():
                        del active[real]
                        retry_at[real] = now + RETRY_AFTER
                    elif present.get(real) != path:
                        log.info("serial %s vanished", path)
                        task.cancel()
                        del active[real]
                for real, path in present.items():
                    if real not in active and now >= retry_at.get(real, 0):
                        log.info("serial %s appeared", path)
                        active[real] = (path, tg.create_task(self.serve_serial(path),
                                                             name=f"serial {path}"))
                await asyncio.sleep(every)
        finally:
            for _, task in active.values():
                task.cancel()

    async def serve_serial(self, device: str) -> None:
        """One session on a serial device; returns when the device fails or is gone."""
        import serial  # pyserial

        loop = asyncio.get_running_loop()
        try:
            port = serial.Serial(device, self.baud, timeout=0, write_timeout=1, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            log.warning("serial %s: %s", device, exc)
            return
        stats = self._stats(f"serial:{device}")
        link = Link(f"serial:{device}", port.write, stats)
        stats.sessions += 1
        stats.open += 1
        readable = asyncio.Event()
        fd = port.fileno()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    # a tty reads 0 bytes when idle (VMIN=0) and when hung up: only a device
                    # that is gone (USB unplug) ends the link
                    if not os.path.exists(device):
                        raise OSError("device removed")
                    await asyncio.sleep(0.05)
                    readable.set()
                    continue
                await self._pump(link, data)
        except (OSError, serial.SerialException) as exc:
            log.warning("serial %s lost: %s", device, exc)
        finally:
            link.open = False
            stats.open -= 1
            loop.remove_reader(fd)
            port.close()
