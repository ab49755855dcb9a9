"""The failing machine under a running `sensorcity gateway run` (black-box: its files on disk).
docs/protocol.md: "an acked reading is on disk at the gateway"; docs/durability.md: a damaged
spool is found, salvaged and said (/healthz), never silently acked into."""

import os

import pytest

from rigs.gateway import Gateway, wait_until
from sensorcity.gateway.spool import Spool

pytestmark = pytest.mark.adversarial
NO_BROKER = ["mqtt://127.0.0.1:9"]


def test_frames_acked_after_the_spool_files_are_deleted_are_on_disk(tmp_path):
    """The spool's files are removed under the running gateway (an operator's rm, a cleanup
    job). SQLite goes on writing to the unlinked inode: frames 11..20 are acked, /healthz says
    ok and the stop says "20 frames stay spooled", but no file holds them: a restart finds an
    empty spool. Acked frames are lost, silently."""
    gw = Gateway(tmp_path, NO_BROKER)
    node = gw.node()
    try:
        for s in range(1, 11):
            node.send(s, t=1795000000 + s)
        wait_until(lambda: set(range(1, 11)) <= node.acked, 15, "acks of 1..10")
        for f in gw.spool.iterdir():
            f.unlink()
        for s in range(11, 21):
            node.send(s, t=1795000000 + s)
        wait_until(lambda: set(range(11, 21)) <= node.acked or gw.proc.poll() is not None,
                   15, "acks of 11..20 (or the gateway stopping)")
        acked_after = set(range(11, 21)) & node.acked
        node.close()
    finally:
        gw.stop()
    spool = Spool(gw.spool)
    try:
        stored = {seq for _, _, seq, *_ in spool.oldest(100)}
    finally:
        spool.close()
    assert acked_after <= stored, f"acked but on no disk: {sorted(acked_after - stored)}"


def test_every_commit_failing_makes_the_gateway_unhealthy(tmp_path):
    """A spool that refuses every write the way a card remounted read-only does (SQLITE_READONLY:
    here `PRAGMA query_only` on the spool's own connection; a real remount is refused while the
    file is open). Each commit fails, is counted, nothing is acked: frames that arrive are not
    committed, yet pipeline_alive() and /healthz say ok and the systemd watchdog is fed, so
    nobody restarts or looks at the gateway."""
    import asyncio

    from sensorcity.gateway.config import Config
    from sensorcity.gateway.ingest import Link
    from sensorcity.gateway.registry import NodeEntry, Registry
    from sensorcity.gateway.service import Gateway as Service
    from sensorcity.protocol import frames

    key, reg = b"\x05" * 32, tmp_path / "nodes.json"
    Registry.add(reg, NodeEntry("n1", key, "urn:dev:ops:n1:", "energy"))
    gw = Service(Config(gateway_id="gw", brokers=NO_BROKER, spool=str(tmp_path / "s"),
                        nodes=str(reg), metrics=""))
    gw.spool.db.execute("PRAGMA query_only = 1")
    link = Link("n", lambda b: None)

    async def scenario():
        task = asyncio.create_task(gw.commit.run())
        try:
            for s in range(1, 6):
                await gw.handle(link, frames.encode(key, frames.DATA, "n1", s, [
                    {-2: "urn:dev:ops:n1:", -3: 1795000000 + s, 0: "x", 1: "W", 2: s}])[:-1])
            for _ in range(200):
                if gw.commit.stats.errors >= 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
    asyncio.run(scenario())
    assert gw.commit.stats.errors >= 1 and gw.commit.stats.stored == 0
    assert gw.health()[0] is False, \
        f"health: {gw.health()} after {gw.commit.stats.errors} failed commits"
    gw.verdict.pipeline_stall = 0.0  # failing that long: the watchdog is no longer fed (systemd restarts)
    assert gw.verdict.pipeline_alive() is False


def test_a_spool_file_replaced_under_the_gateway_is_kept_and_merged(tmp_path):
    """The file at the spool's path replaced by another (an operator restoring a copy made
    earlier): the open spool's rows go on to a file no path leads to. The next commit finds the
    path's file is not the open one: both are kept as damaged (the alarm), and a fresh spool
    holds every row of either, each once; the commit's own rows are in it."""
    d = tmp_path / "s"
    spool = Spool(d)
    try:
        spool.store([("n1", s, 1795000000.0 + s, b"\x80", 1) for s in range(1, 6)])
        spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        copy = tmp_path / "copy.sqlite3"
        copy.write_bytes(spool.path.read_bytes())  # a copy holding 1..5
        spool.store([("n1", s, 1795000000.0 + s, b"\x80", 1) for s in range(6, 11)])
        os.replace(copy, spool.path)
        assert spool.store([("n1", 11, 1795000011.0, b"\x80", 1)]) == ["stored"]
        assert spool.damage() is not None
        assert len(spool.damaged_files()) == 2
    finally:
        spool.close()
    spool = Spool(d)
    try:
        stored = sorted(seq for _, _, seq, *_ in spool.oldest(100))
    finally:
        spool.close()
    assert stored == list(range(1, 12))
