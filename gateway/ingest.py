"""Ingest: node links over TCP (Wi-Fi nodes) and USB serial, split into COBS frames."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable

from . import frames

log = logging.getLogger("sensorcity.gateway.ingest")
READ_CHUNK = 4096


class Link:
    """One node connection; frames from it are acked back on it."""

    def __init__(self, name: str, write: Callable[[bytes], None]):
        self.name = name
        self._write = write
        self.deframer = frames.Deframer()
        self.open = True

    def send(self, data: bytes) -> None:
        if self.open:
            try:
                self._write(data)
            except OSError:
                self.open = False


Handler = Callable[[Link, bytes], Awaitable[None]]


async def serve_tcp(host: str, port: int, handle: Handler, started: asyncio.Event | None = None):
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername")
        link = Link(f"tcp:{peer[0]}:{peer[1]}", writer.write)
        try:
            while data := await reader.read(READ_CHUNK):
                for cobs in link.deframer.feed(data):
                    await handle(link, cobs)
        except (ConnectionError, OSError):
            pass
        finally:
            link.open = False
            writer.close()

    server = await asyncio.start_server(client, host, port)
    if started is not None:
        started.port = server.sockets[0].getsockname()[1]
        started.set()
    async with server:
        await server.serve_forever()


async def serve_serial(device: str, handle: Handler, baud: int = 115200):
    """A USB serial link; reopened after the device disappears (unplug) and comes back."""
    import serial  # pyserial

    loop = asyncio.get_running_loop()
    while True:
        try:
            port = serial.Serial(device, baud, timeout=0, write_timeout=1)
        except (serial.SerialException, OSError) as exc:
            log.warning("serial %s: %s; retrying", device, exc)
            await asyncio.sleep(2)
            continue
        link = Link(f"serial:{device}", port.write)
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
                for cobs in link.deframer.feed(data):
                    await handle(link, cobs)
        except OSError as exc:
            log.warning("serial %s lost: %s", device, exc)
        finally:
            link.open = False
            loop.remove_reader(fd)
            port.close()
        await asyncio.sleep(1)
