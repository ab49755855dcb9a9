"""Power loss, beyond kill -9: the real Spool runs on a file layer that drops what was written
after the last fsync (tests/crashvfs.py), and the power is cut at >= 100 points spread over a
workload of commits, releases and checkpoints. After each cut the stdlib-only Spool must open
the files as the medium left them and hold every acked frame that was not released."""

import random
import shutil

import cbor2
import pytest

from crashvfs import CrashVFS, apsw, why_not
from sensorcity.gateway.spool import STORED, Spool

pytestmark = pytest.mark.adversarial


@pytest.fixture(autouse=True)
def _crash_vfs():
    # `make test` installs python3-apsw (system-deps): without it this tier must not pass quietly
    if apsw is None:
        pytest.fail(f"no crash VFS: {why_not}; run `make system-deps` (python3-apsw)",
                    pytrace=False)

CUTS = 300
MODES = ("none", "some", "torn")


def workload(directory, vfs_name, log):
    """Deterministic (seeded; one thread): the same operations in the same order every run, so
    cut number k falls at the same place. log collects what was acked and what released."""
    rng = random.Random(11)
    sp = Spool(directory, vfs=vfs_name, max_mb=4)
    try:
        _work(sp, rng, log)
    finally:
        try:
            sp.close()
        except Exception:  # a close after the cut: nothing reaches the medium
            pass


def _work(sp, rng, log):
    # scaled down so a small workload crosses checkpoints, WAL resets and WAL truncation
    # (defaults: every 1000 pages, truncated to 8 MiB): the same code paths, sooner
    sp.db.execute("PRAGMA wal_autocheckpoint=24")
    sp.db.execute("PRAGMA journal_size_limit=65536")
    seq = 0
    for round_ in range(60):
        n = rng.randint(1, 12)
        batch = [(f"n{(seq + i) % 4}", seq + i, 60.0 * (seq + i),
                  cbor2.dumps([{"n": "LAeq", "v": float(seq + i), "x": rng.randbytes(
                      rng.randint(50, 900))}]), 1) for i in range(n)]
        out = sp.store(batch)
        assert out == [STORED] * n
        log["acked"].update((e[0], e[1]) for e in batch)  # store() returned: acked
        seq += n
        if round_ % 3 == 2:
            rows = sp.oldest(rng.randint(1, 15))
            log["releasing"].update((r[1], r[2]) for r in rows)
            sp.release([r[0] for r in rows])
            log["released"].update((r[1], r[2]) for r in rows)


def run(directory, cut_at, mode, seed):
    vfs = CrashVFS(f"crash{seed}", cut_at=cut_at, seed=seed)
    log = {"acked": set(), "releasing": set(), "released": set()}
    try:
        workload(directory, vfs.name, log)
    except Exception:  # the cut: the workload's next write failed
        if cut_at is None or not vfs.dead:
            raise
    if cut_at is not None:
        vfs.cut(mode)
    vfs.unregister()
    return vfs.ops, log


def test_power_cut_at_many_points_loses_nothing_acked(tmp_path):
    total, _ = run(tmp_path / "dry", None, "none", 0)
    assert total > CUTS
    points = sorted({1 + k * (total - 1) // (CUTS - 1) for k in range(CUTS)})
    assert len(points) >= 100
    checked = acked_total = 0
    for k, cut_at in enumerate(points):
        d = tmp_path / f"cut{k}"
        mode = MODES[k % 3]
        _, log = run(d, cut_at, mode, seed=k + 1)
        sp = Spool(d)  # stdlib sqlite3 on the files as the medium left them
        try:
            assert sp.damaged_files() == [], f"cut {cut_at} ({mode}): the spool was damaged"
            assert sp.check(), f"cut {cut_at} ({mode}): quick_check failed"
            present = {(n, s) for _, n, s, *_ in sp.oldest(10**6)}
            lost = log["acked"] - present - log["releasing"]
            assert not lost, f"cut {cut_at} ({mode}): acked frames lost: {sorted(lost)[:5]}"
            back = present & log["released"]
            assert not back, f"cut {cut_at} ({mode}): committed releases undone: {sorted(back)}"
            assert present <= log["acked"] | log["releasing"] | _unacked(log), "garbage rows"
            assert sp.depth() == len(present)
            assert sp.store([("after", 1, 1.0, b"\x80", 0)]) == [STORED]
        finally:
            sp.close()
        checked += 1
        acked_total += len(log["acked"])
        shutil.rmtree(d)
    print(f"power cut at {checked} points of {total} writes/syncs ({'/'.join(MODES)}): "
          f"{acked_total} acked frames checked, none lost")


def _unacked(log):
    """A frame of the commit the cut fell in: stored but never acked (a node resends it)."""
    top = max((s for _, s in log["acked"]), default=-1)
    return {(f"n{s % 4}", s) for s in range(top + 1, top + 13)}
