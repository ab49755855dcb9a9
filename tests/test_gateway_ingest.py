"""Ingest: serial devices found by glob come and go (hot-plug) on real ptys behind a symlink
directory, as /dev/serial/by-id is; memory per link stays bounded under garbage; per-link counters
count what went through."""

import asyncio
import os
import socket

from sensorcity.protocol import frames
from sensorcity.gateway.ingest import Ingest
from rigs.serialmock import VirtualCable

KEY = bytes(range(32))


def frame(seq):
    return frames.encode(KEY, frames.DATA, "n1", seq, [{0: "x", 2: seq}])


async def wait_for(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


def test_serial_hotplug_by_glob(tmp_path):
    byid = tmp_path / "by-id"
    byid.mkdir()
    cable = VirtualCable()
    node_end = os.open(cable.a, os.O_RDWR | os.O_NOCTTY)
    got = []

    async def handle(link, cobs):
        got.append((link.name, frames.decode(cobs, lambda n: KEY).seq))
        link.send(b"ack\x00")

    async def main():
        ingest = Ingest(handle)
        name = str(byid / "usb-Silicon_Labs_CP2102_0001-if00-port0")
        stats_key = f"serial:{name}"
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(ingest.watch_serial([str(byid / "*")], tg, every=0.05))
            await asyncio.sleep(0.2)
            assert ingest.stats.links == {}                       # nothing plugged in yet
            os.symlink(cable.b, name)                       # plug in
            await wait_for(lambda: ingest.stats.links.get(stats_key) and
                            ingest.stats.links[stats_key].open)
            os.write(node_end, frame(1))
            await wait_for(lambda: got)
            assert got == [(stats_key, 1)]
            # the gateway answers on the same device
            await wait_for(lambda: os.read(node_end, 100) == b"ack\x00")
            os.unlink(name)                                 # unplug
            await wait_for(lambda: ingest.stats.links[stats_key].open == 0)
            os.write(node_end, frame(2))                    # nobody listens now
            await asyncio.sleep(0.3)
            assert len(got) == 1
            os.symlink(cable.b, name)                       # plug in again
            await wait_for(lambda: ingest.stats.links[stats_key].open == 1)
            os.write(node_end, frame(3))
            await wait_for(lambda: len(got) >= 2)
            watcher.cancel()
        s = ingest.stats.links[stats_key]
        assert got[-1] == (stats_key, 3)
        assert s.sessions == 2 and s.open == 0
        assert s.bytes == len(frame(1)) + len(frame(3))
        assert s.frames == 2 and s.rejected == 0

    try:
        asyncio.run(main())
    finally:
        os.close(node_end)
        cable.close()


def test_two_names_for_one_device_make_one_link(tmp_path):
    """/dev/serial/by-id/x and the /dev/ttyUSBn it points to are one device: the name listed
    first is the link's name."""
    cable = VirtualCable()
    try:
        (tmp_path / "by-id").mkdir()
        os.symlink(cable.b, tmp_path / "by-id" / "usb-node")
        found = Ingest(None).scan([str(tmp_path / "by-id" / "*"), cable.b])
        assert found == {os.path.realpath(cable.b): str(tmp_path / "by-id" / "usb-node")}
        (tmp_path / "plain").write_text("")                  # not a device: ignored
        assert Ingest(None).scan([str(tmp_path / "*")]) == {}
    finally:
        cable.close()


def test_tcp_link_memory_is_bounded_and_resyncs_after_garbage():
    got = []

    async def handle(link, cobs):
        try:
            got.append(frames.decode(cobs, lambda n: KEY).seq)
        except frames.FrameError:
            return False
        return True

    async def main():
        ingest = Ingest(handle)
        started = asyncio.Event()
        server = asyncio.create_task(ingest.serve_tcp("127.0.0.1", 0, started))
        await started.wait()
        biggest = 0

        def send():
            with socket.create_connection(("127.0.0.1", started.port)) as s:
                s.sendall(frame(1))
                s.sendall(bytes([0x55]) * (1 << 20))     # 1 MiB with no delimiter
                s.sendall(b"\x00" + b"\x13garbage\x00" + frame(2))
        sender = asyncio.create_task(asyncio.to_thread(send))
        end = asyncio.get_running_loop().time() + 10
        while len(got) < 2:  # sample the link's buffer while the megabyte streams in
            assert asyncio.get_running_loop().time() < end, got
            biggest = max(biggest, max((len(b) for b in _deframer_bufs()), default=0))
            await asyncio.sleep(0)
        await sender
        server.cancel()
        (name, s), = ingest.stats.links.items()
        assert name == "tcp:127.0.0.1"
        assert got == [1, 2]
        assert s.bytes == len(frame(1)) + (1 << 20) + 1 + 9 + len(frame(2))
        assert s.overflows == 1 == ingest.stats.overflows  # the long run, dropped once
        assert s.frames == 3 and s.rejected == 1     # frame 1, the short garbage, frame 2
        return biggest

    def _deframer_bufs():
        import gc
        return [o.buf for o in gc.get_objects() if isinstance(o, frames.Deframer)]

    biggest = asyncio.run(main())
    assert biggest <= 2 * frames.MAX_FRAME
