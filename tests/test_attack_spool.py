"""The failing machine under a running `sensorcity gateway run` (black-box: its files on disk).
docs/protocol.md: "an acked reading is on disk at the gateway"; docs/durability.md: a damaged
spool is found, salvaged and said (/healthz), never silently acked into."""

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
