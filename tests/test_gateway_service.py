"""The service's health rules, in process: systemd's watchdog is fed only while received frames
get committed; /healthz turns 503 on a stalled pipeline; the uplink's reconnects back off
exponentially with jitter."""

import asyncio
import socket
import threading

import pytest

from sensorcity.protocol import frames
from sensorcity.gateway import uplink
from sensorcity.gateway.config import Config
from sensorcity.gateway.service import Gateway


def make(tmp_path, **kw):
    (tmp_path / "none.json").write_text("")  # an empty registry: allowed (and warned)
    cfg = Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool=str(tmp_path / "s"),
                 nodes=str(tmp_path / "none.json"), metrics="", **kw)
    return Gateway(cfg)


def test_watchdog_stops_when_the_commit_stalls(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    def pings():
        n = 0
        while True:
            try:
                n += sock.recv(64) == b"WATCHDOG=1"
            except BlockingIOError:
                return n

    async def pinged(n, timeout=30.0):
        """Wait until n more pings came (a busy host only makes them later)."""
        end = asyncio.get_running_loop().time() + timeout
        got = 0
        while got < n:
            assert asyncio.get_running_loop().time() < end, f"{got} of {n} pings"
            await asyncio.sleep(0.05)
            got += pings()

    async def main():
        gw = make(tmp_path)
        gw.verdict.pipeline_stall = 0.3
        release = threading.Event()
        real_store = gw.spool.store
        monkeypatch.setattr(gw.spool, "store", lambda e: (release.wait(10), real_store(e))[1])
        committer = asyncio.create_task(gw.commit.run())
        dog = asyncio.create_task(gw.verdict.watchdog(0.05))
        await pinged(5)
        assert gw.health() == (True, "ok")                      # idle is alive
        acked = []
        monkeypatch.setattr(gw.commit, "ack", lambda link, frame: acked.append(frame.seq))
        link = None
        frame = frames.Frame(frames.DATA, "n1", 1, None)
        rec = [type("R", (), {"t": 1.0})()]
        monkeypatch.setattr("sensorcity.gateway.commit.spool_entry",
                            lambda f, r: (f.node, f.seq, 1.0, b"\x80", 0))
        await gw.commit.put(link, frame, rec)
        await gw.commit.put(link, frame, rec)  # waits behind the stuck commit
        await asyncio.sleep(0.5)
        pings()
        await asyncio.sleep(0.5)
        assert pings() == 0                                     # stuck: no more pings
        ok, why = gw.health()
        assert not ok and why.startswith("pipeline stalled")
        release.set()
        await pinged(5)
        assert gw.health()[0]                                   # moving again
        assert acked == [1, 1]                                  # stored, then a duplicate
        committer.cancel()
        dog.cancel()
        gw.spool.close()

    asyncio.run(main())
    sock.close()


def test_reconnects_back_off_with_jitter(tmp_path, monkeypatch):
    delays = []
    real_sleep = asyncio.sleep

    async def fake_sleep(s):
        delays.append(s)
        if len(delays) == 12:
            raise asyncio.CancelledError
        await real_sleep(0)

    async def main():
        gw = make(tmp_path)
        monkeypatch.setattr(uplink.asyncio, "sleep", fake_sleep)
        with pytest.raises(asyncio.CancelledError):
            await gw.uplink.run()  # port 9 refuses at once
        gw.spool.close()

    asyncio.run(main())
    base = [min(0.5 * 2 ** i, 30.0) for i in range(12)]
    for d, b in zip(delays, base):
        assert 0.5 * b <= d <= 1.5 * b, (delays, base)
    assert len({round(d / b, 6) for d, b in zip(delays, base)}) > 6   # jittered, not fixed
