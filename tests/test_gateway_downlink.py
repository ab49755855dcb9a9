"""The downlink stage against a real spool: numbers from memory, a frame out only under a number
the spool holds a reservation for, the next block reserved ahead, a restart (or kill) never
reusing a number, and a full disk sending nothing under an unreserved number."""

import asyncio
import os
import sqlite3
import subprocess

import pytest

from sensorcity.gateway import downlink
from sensorcity.gateway.downlink import BLOCK, Downlink
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.spool import Spool
from sensorcity.protocol import frames

KEY = bytes(range(32))


class Wire:
    """A link whose bytes are decoded with the protocol's codec, as a node would; with a spool
    directory, each numbered frame is checked against the reservation on disk as it leaves."""

    def __init__(self, spool_dir=None):
        self.spool_dir = spool_dir
        self.frames = []
        self.deframer = frames.Deframer()
        self.link = Link("test", self.feed)

    def feed(self, data: bytes):
        for cobs in self.deframer.feed(data):
            f = frames.decode(cobs, lambda n: KEY)
            if self.spool_dir is not None and f.kind != frames.ACK:
                assert f.seq <= reserved(self.spool_dir).get(f.node, -1), f
            self.frames.append(f)

    def seqs(self, kind=frames.TIME):
        return [f.seq for f in self.frames if f.kind == kind]


def reserved(path) -> dict:
    """The downlink table as another process would read it after a crash."""
    db = sqlite3.connect(path / "spool.sqlite3")
    try:
        return dict(db.execute("SELECT node, seq FROM downlink"))
    finally:
        db.close()


async def settle(dl: Downlink):
    """Until the reservations asked for are written (or have failed)."""
    if dl.writer is not None:
        await asyncio.wait_for(asyncio.shield(dl.writer), 30)


def test_numbers_go_out_only_once_reserved_and_a_restart_goes_on_above(tmp_path):
    async def main():
        sp = Spool(tmp_path)
        dl, wire = Downlink(sp, lambda n: KEY), Wire(tmp_path)
        assert dl.send(wire.link, "a", frames.ACK, 7) == 0
        assert [f.body for f in wire.frames] == [7]                  # an ACK needs no number
        seqs = [dl.time(wire.link, "a") for _ in range(3)]
        assert seqs == [0, 1, 2] and wire.seqs() == []               # waiting for the disk
        await settle(dl)
        assert wire.seqs() == [0, 1, 2]
        assert reserved(tmp_path)["a"] >= 2
        # the next block is asked for once half of this one is used, before the bound
        bound = reserved(tmp_path)["a"]
        while dl.next["a"] <= bound - BLOCK // 2 + 1:
            dl.send(wire.link, "a", frames.CMD, {"op": "reboot"})
            assert not dl.held                                       # all under the bound
        await settle(dl)
        assert dl.next["a"] < bound < reserved(tmp_path)["a"]
        while dl.next["a"] < BLOCK + 3:
            dl.send(wire.link, "a", frames.CMD, {"op": "reboot"})
            await asyncio.sleep(0)
        await settle(dl)
        sent = wire.seqs() + wire.seqs(frames.CMD)
        assert sent == list(range(BLOCK + 3)) and dl.stats.waiting == 0
        assert reserved(tmp_path)["a"] >= max(sent) + BLOCK // 2
        assert dl.stats.reservations >= 2 and dl.stats.unsent == 0
        assert (dl.stats.acks, dl.stats.times, dl.stats.commands) == (1, 3, BLOCK)
        return max(sent)   # the spool is not closed: a kill -9

    last = asyncio.run(main())

    async def after_restart():
        dl, wire = Downlink(Spool(tmp_path), lambda n: KEY), Wire(tmp_path)
        dl.time(wire.link, "a")
        await settle(dl)
        return wire.seqs()

    first = asyncio.run(after_restart())
    assert len(first) == 1 and first[0] > last


def test_an_old_spool_goes_on_from_its_last_number(tmp_path):
    """The table kept the last number used before (next_downlink_seq): go on above it."""
    sp = Spool(tmp_path)
    assert [sp.next_downlink_seq("a") for _ in range(8)][-1] == 7
    sp.close()

    async def main():
        dl, wire = Downlink(Spool(tmp_path), lambda n: KEY), Wire()
        dl.time(wire.link, "a")
        await settle(dl)
        return wire.seqs()
    assert asyncio.run(main()) == [8]


@pytest.mark.adversarial
def test_a_full_disk_sends_no_unreserved_number(tmp_path, monkeypatch):
    """ENOSPC on a real 1 MiB tmpfs: the frames waiting for the reservation are dropped and
    counted; once there is room, the next ones go out under reserved numbers."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(mnt)]).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    monkeypatch.setattr(downlink, "RETRY", 0.05)
    sp = None
    try:
        sp = Spool(mnt)
        fd = os.open(mnt / "ballast", os.O_WRONLY | os.O_CREAT)
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
        os.close(fd)

        async def main():
            dl, wire = Downlink(sp, lambda n: KEY), Wire()
            dl.time(wire.link, "a")
            dl.send(wire.link, "a", frames.CMD, {"op": "reboot"})
            await settle(dl)
            assert wire.frames == [] and dl.stats.unsent == 2
            assert dl.stats.reserve_failures == 1 and dl.stats.waiting == 0
            assert "a" not in reserved(mnt)
            os.unlink(mnt / "ballast")                          # room again
            seq = dl.time(wire.link, "a")
            await settle(dl)
            assert wire.seqs() == [seq] and reserved(mnt)["a"] >= seq
        asyncio.run(main())
    finally:
        if sp is not None:
            sp.close()
        subprocess.run(["umount", str(mnt)])
