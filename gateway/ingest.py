"""Ingest: node links over TCP (Wi-Fi nodes) and USB serial, split into COBS frames.

Serial devices are watched, not opened once: `serial` holds paths or globs (for example
/dev/serial/by-id/*), scanned every second; a device that appears gets a link, one that vanishes
loses it. Memory per link is bounded: one read of READ_CHUNK bytes and a deframer of at most
2 * MAX_FRAME bytes; a link waits (backpressure) while the commit queue is full.

TCP links are bounded (docs/gateway.md, "TCP links"): at most `tcp_max` at once, derived from
the file limit; a link earns its place with a valid frame within `auth_timeout` seconds (at
capacity the oldest link without one makes room, then the oldest that carries no node's
downlink), is closed after `idle` seconds of silence, has TCP keepalive on, and a write buffer
of WRITE_MAX bytes: a peer that does not read its acks is closed and counted."""

from __future__ import annotations

import asyncio
import errno
import glob
import logging
import os
import resource
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..errors import FatalError
from ..protocol import frames

log = logging.getLogger("sensorcity.gateway.ingest")
READ_CHUNK = 4096
TCP_LINKS_MAX = 1024
SCAN_EVERY = 1.0
RETRY_AFTER = 2.0
# descriptors kept for everything but TCP links: the spool (database, WAL, shared memory), serial
# devices, HTTP clients, MQTT, stdio, the event loop and its worker threads
FD_RESERVE = 96
WRITE_MAX = 16 * 1024          # bytes waiting to go to one TCP peer (acks are ~30 bytes)
SOCKET_BUFFER = 32 * 1024      # kernel send buffer per TCP link (the peer reads acks, or it goes)
KEEPALIVE = (60, 10, 6)        # idle seconds, interval, probes: a dead peer is found in 2 min
ACCEPT_RETRY = 0.5             # seconds between accepts after one failed (EMFILE)
LOG_EVERY = 60.0               # seconds between two log lines of one repeating error


def tcp_capacity(wanted: int, reserve: int = FD_RESERVE) -> int:
    """TCP links the file limit allows: the soft RLIMIT_NOFILE is raised towards the hard one as
    far as `wanted` links need, and `reserve` descriptors are kept for the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    cap = wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - reserve)
    if cap < 1:
        raise FatalError(f"open-file limit {soft} leaves no room for TCP links (the gateway "
                         f"keeps {reserve}); raise LimitNOFILE")
    if cap < wanted:
        log.warning("open-file limit %d: at most %d TCP links (not %d)", soft, cap, wanted)
    return cap


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
    write_overflows: int = 0    # sessions closed because the peer did not read (TCP)


@dataclass(slots=True)
class IngestStats:
    """The ingest stage's counters: each link's by name, and the TCP listener's."""
    links: dict[str, LinkStats] = field(default_factory=dict)
    overflows: int = 0          # runs longer than a frame on any link: rejections "overflow"
    tcp_open: int = 0           # TCP links open now ...
    tcp_max: int = 0            # ... and allowed at once (from the open-file limit)
    tcp_refused: int = 0        # connections refused at capacity
    tcp_evicted: int = 0        # links without a valid frame (or a node) closed for a new one
    tcp_timeouts: int = 0       # links closed for silence: no valid frame in time, or idle
    accept_errors: int = 0      # failed accepts (EMFILE ...)


class Link:
    """One node connection; frames from it are acked back on it."""

    def __init__(self, name: str, write: Callable[[bytes], None], stats: LinkStats | None = None,
                 close: Callable[[], None] | None = None):
        self.name = name
        self._write = write
        self._close = close
        self.deframer = frames.Deframer()
        self.stats = stats or LinkStats()
        self.open = True
        self.authenticated = False  # a frame from it verified (a node's key made it)
        self.routed = False         # set by the downlink (its route): a node's downlink goes here
        self.idle: float | None = None  # seconds of silence before a TCP link is closed

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
            except BufferError:  # the peer does not read: its buffer is full
                self.stats.write_overflows += 1
                log.warning("%s: closed, the peer does not read (%d bytes waiting)", self.name,
                            WRITE_MAX)
                self.close()
            except OSError:
                self.open = False

    def close(self) -> None:
        """Hang up (a TCP link; a serial link stays: its node is on the cable)."""
        if self._close is not None:
            self.open = False
            self._close()


# a handler returns False when it rejected the frame (counted on the link)
Handler = Callable[[Link, bytes], Awaitable[bool | None]]


class Ingest:
    """The links' counters by name, and the ways in: TCP listeners and watched serial devices."""

    def __init__(self, handle: Handler, baud: int = 115200, tcp_max: int = TCP_LINKS_MAX,
                 auth_timeout: float = 10.0, idle: float = 900.0):
        self.handle = handle
        self.baud = baud
        self.tcp_max = tcp_max
        self.auth_timeout = auth_timeout
        self.idle = idle
        self.stats = IngestStats(tcp_max=tcp_max)
        self._tcp: dict[Link, None] = {}   # open TCP links, oldest first
        self._logged_at = -LOG_EVERY

    def close_links(self) -> None:
        """Hang up every TCP link (serial links end with their watcher's tasks)."""
        for link in list(self._tcp):
            link.close()

    def _stats(self, name: str) -> LinkStats:
        return self.stats.links.setdefault(name, LinkStats())

    async def _pump(self, link: Link, data: bytes) -> None:
        before = link.stats.overflows
        cobs_frames = link.feed(data)
        self.stats.overflows += link.stats.overflows - before
        for cobs in cobs_frames:
            ok = await self.handle(link, cobs)
            if ok is False:
                link.stats.rejected += 1
            elif ok:
                link.authenticated = True

    def _make_room(self) -> bool:
        """At capacity the oldest link that has not earned its place goes (no valid frame yet;
        else no node's newest frame, as a replayer's); False if every link carries a node."""
        if len(self._tcp) < self.tcp_max:
            return True
        victim = next((link for link in self._tcp if not link.authenticated), None) or \
            next((link for link in self._tcp if not link.routed), None)
        if victim is None:
            self.stats.tcp_refused += 1
            return False
        self.stats.tcp_evicted += 1
        self._tcp.pop(victim)
        self.stats.tcp_open = len(self._tcp)
        victim.close()
        return True

    def _accept_failed(self, exc: OSError) -> None:
        self.stats.accept_errors += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.error("accept: %s (%d failed accepts so far; %d TCP links open)",
                      exc.strerror or exc, self.stats.accept_errors, len(self._tcp))

    async def serve_tcp(self, host: str, port: int, started: asyncio.Event | None = None):
        loop = asyncio.get_running_loop()
        sock = None
        try:
            family, *_, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise FatalError(f"listen tcp://{host}:{port}: {exc.strerror or exc}") from exc
        if started is not None:
            started.port = sock.getsockname()[1]
            started.set()
        clients: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    conn, peer = await loop.sock_accept(sock)
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                         errno.ENOMEM, errno.ECONNABORTED):
                        raise
                    self._accept_failed(exc)
                    await asyncio.sleep(ACCEPT_RETRY)
                    continue
                if not self._make_room():
                    conn.close()
                    continue
                task = asyncio.create_task(self._tcp_client(conn, *self._tcp_link(conn, peer)))
                clients.add(task)
                task.add_done_callback(clients.discard)
        finally:
            sock.close()
            for task in clients:
                task.cancel()

    def _tcp_link(self, conn: socket.socket, peer) -> tuple[Link, dict]:
        """A link for an accepted connection, holding its place from now on."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), KEEPALIVE):
                if hasattr(socket, opt):
                    conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        except OSError:
            pass
        io: dict = {"transport": None}

        def write(data: bytes) -> None:
            transport = io["transport"]
            if transport is None or transport.get_write_buffer_size() + len(data) > WRITE_MAX:
                raise BufferError
            transport.write(data)

        def close() -> None:
            if io["transport"] is not None:
                io["transport"].abort()

        stats = self._stats(f"tcp:{peer[0]}")
        link = Link(f"tcp:{peer[0]}:{peer[1]}", write, stats, close)
        self._tcp[link] = None
        self.stats.tcp_open = len(self._tcp)
        stats.sessions += 1
        stats.open += 1
        return link, io

    async def _tcp_client(self, conn: socket.socket, link: Link, io: dict) -> None:
        began = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
            io["transport"] = writer.transport
            if not link.open:  # evicted while connecting
                return
            while True:
                if link.authenticated:
                    timeout = link.idle or self.idle
                else:
                    timeout = began + self.auth_timeout - time.monotonic()
                try:
                    async with asyncio.timeout(max(timeout, 0)):
                        data = await reader.read(READ_CHUNK)
                except TimeoutError:
                    self.stats.tcp_timeouts += 1
                    break
                if not data:
                    break
                await self._pump(link, data)
        except (ConnectionError, OSError):
            pass
        finally:
            link.open = False
            self._tcp.pop(link, None)
            self.stats.tcp_open = len(self._tcp)
            link.stats.open -= 1
            if io["transport"] is not None:
                io["transport"].abort()
            else:
                conn.close()

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
