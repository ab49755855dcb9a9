"""A damaged spool (issue 11, item 4): pages of the file overwritten as a failing SD card does,
a commit that meets SQLITE_CORRUPT, a pack that no longer decodes. The gateway must come up,
set the damaged file aside, salvage every row still readable and raise its alarm. The reference
is the undamaged file as stdlib SQLite reads it; a row may be lost only if its bytes lay on an
overwritten page."""

import os
import random
import shutil
import sqlite3
import zlib

import cbor2
import pytest
from prometheus_client import generate_latest

from sensorcity.gateway.config import Config
from sensorcity.gateway.service import Gateway
from sensorcity.gateway.spool import DUPLICATE, PAGE, STALE, STORED, Spool, SpoolDamaged
from sensorcity.gateway.uplink import Uplink

pytestmark = pytest.mark.adversarial


def pack(node, seq):
    """A resolved pack with a marker no other row has, to find the row's page in the file."""
    return cbor2.dumps([{-2: f"urn:dev:{node}:", -3: 60.0 * seq, 0: "LAeq", 2: float(seq),
                         1: f"<{node}/{seq}>" + random.randbytes(40).hex()}])  # as verify's


def marker(node, seq):
    return f"<{node}/{seq}>".encode()


def build(directory, rows=1500, released=400):
    """A spool as a gateway leaves it when power goes: part checkpointed into the file, the
    newest commits only in the -wal, some rows released (so the file has free pages)."""
    sp = Spool(directory)
    seq = 0
    for _ in range(rows // 20):
        sp.store([(f"n{i % 5}", seq + i, 60.0 * (seq + i), pack(f"n{i % 5}", seq + i), 1)
                  for i in range(20)])
        seq += 20
    sp.release([r[0] for r in sp.oldest(released)])
    sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sp.store([("w", k, 60.0 * k, pack("w", k), 1) for k in range(40)])  # only in the -wal
    return sp


def crash_copy(sp, dst):
    """The files as they are on the card, the spool still open (no clean close)."""
    dst.mkdir()
    for suffix in ("", "-wal", "-shm"):
        src = f"{sp.path}{suffix}"
        if os.path.exists(src):
            shutil.copyfile(src, dst / f"spool.sqlite3{suffix}")
    return dst / "spool.sqlite3"


def reference(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = {(n, s): bytes(p) for n, s, p in db.execute("SELECT node, seq, pack FROM outbox")}
    seen = set(db.execute("SELECT node, seq FROM seen"))
    kinds = {}
    for n in range(1, os.path.getsize(path) // PAGE + 1):
        kinds[n] = page_of(path, n)[100 if n == 1 else 0]
    db.close()
    return rows, seen, kinds


def page_of(path, n):
    with open(path, "rb") as f:
        f.seek((n - 1) * PAGE)
        return f.read(PAGE)


def overwrite(path, pages, rng):
    with open(path, "r+b") as f:
        for n in pages:
            f.seek((n - 1) * PAGE)
            f.write(rng.randbytes(PAGE))


def pick(kinds, path, rows, what, rng):
    """A page of the file by what it holds: an index page, or a table leaf holding outbox rows
    (found by their markers in the bytes)."""
    if what == "index":
        return rng.choice([n for n, k in kinds.items() if k in (0x02, 0x0A) and n > 1])
    if what == "interior":
        return rng.choice([n for n, k in kinds.items() if k == 0x05])
    leaves = [n for n, k in kinds.items() if k == 0x0D and n > 1 and
              any(marker(*key) in page_of(path, n) for key in list(rows)[::50])]
    return rng.choice(leaves)


@pytest.mark.parametrize("layout", [("schema", "index", "table"), ("index", "table", "table"),
                                    ("interior", "index", "table")])
def test_overwritten_pages_come_up_salvaged(tmp_path, layout):
    rng = random.Random(zlib.crc32(repr(layout).encode()))
    sp = build(tmp_path / "live")
    path = crash_copy(sp, tmp_path / "card")
    sp.close()
    rows, seen, kinds = reference(path)
    pages = set()
    for what in layout:
        pages.add(1 if what == "schema" else pick(kinds, path, rows, what, rng))
    on_bad_pages = {key for key in rows
                    if any(marker(*key) in page_of(path, n) for n in pages)}
    with open(f"{path}-wal", "rb") as f:
        in_wal = f.read()
    overwrite(path, sorted(pages), rng)

    # the gateway's start: open, then the check the service runs in a thread
    sp = Spool(path.parent)
    sp.check()
    assert sp.damage() and "spool damaged" in sp.damage(), "no alarm"
    kept = sp.damaged_files()
    assert len(kept) == 1 and os.path.exists(f"{kept[0]}-wal"), "damaged file not kept"
    got = {(n, s): bytes(p) for _, n, s, _, p, _ in sp.oldest(10**6)}
    # every row that was not on an overwritten page (or is also in the -wal) is back, intact
    must = {k for k in rows if k not in on_bad_pages or marker(*k) in in_wal}
    missing = must - set(got)
    assert not missing, f"{len(missing)} readable rows not salvaged, e.g. {sorted(missing)[:3]}"
    assert all(got[k] == rows[k] for k in must)
    # a salvaged row that was not in the outbox can only be one released before (a free page
    # read when the header with the freelist was lost): a duplicate downstream, never garbage
    for k in set(got) - set(rows):
        assert k[0] in {"n0", "n1", "n2", "n3", "n4"} and k[1] < 400, k
    st = sp.stats()
    assert st.salvaged == len(got) and st.rows == len(got) and st.damaged == 1
    assert st.lost <= len(on_bad_pages)
    print(f"{layout} pages {sorted(pages)}: {len(rows)} rows, {len(got)} salvaged, "
          f"{len(rows) - len(set(got) & set(rows))} lost (on those pages: {len(on_bad_pages)})")
    # de-dup: a frame the nodes send again is not stored twice where its `seen` survived
    resent = sp.store([(n, s, 0.0, pack(n, s), 1) for n, s in sorted(got)])
    assert STORED not in resent
    survived = seen & {(n, s) for n, s in sp.db.execute("SELECT node, seq FROM seen")}
    assert len(survived) >= len(must)
    # and new frames are taken, the new file is sound, and a restart does not salvage again
    assert sp.store([("new", 1, 1.0, pack("new", 1), 1)]) == [STORED]
    assert sp.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    sp.close()
    sp = Spool(path.parent)
    assert sp.check() and len(sp.damaged_files()) == 1
    assert sp.depth() == len(got) + 1


def test_corrupt_in_a_commit_acks_nothing_and_reopens(tmp_path):
    sp = build(tmp_path / "s", rows=600, released=0)
    sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sp.close()
    path = tmp_path / "s" / "spool.sqlite3"
    rows, _, kinds = reference(path)
    sp = Spool(tmp_path / "s")  # opens: the seen_key index is not read until a commit
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'seen_key'").fetchone()[0]
    db.close()
    overwrite(path, [root], random.Random(1))
    with pytest.raises(SpoolDamaged):
        sp.store([("late", 1, 1.0, pack("late", 1), 1)])
    assert len(sp.damaged_files()) == 1
    got = {(n, s) for _, n, s, *_ in sp.oldest(10**6)}
    assert got == set(rows), "an index page holds no row: nothing may be lost"
    assert ("late", 1) not in got, "the failed commit stored something (and was not acked)"
    assert sp.store([("late", 1, 1.0, pack("late", 1), 1)]) == [STORED]  # the node's resend
    assert sp.store([("n0", 0, 0.0, pack("n0", 0), 1)]) == [DUPLICATE]


def uplink_for(sp):
    cfg = Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"])
    return Uplink(sp, cfg)


def test_a_pack_that_no_longer_decodes_is_quarantined_not_fatal(tmp_path):
    sp = Spool(tmp_path)
    sp.store([("a", i, 60.0 * i, pack("a", i), 1) for i in range(5)])
    bad = sp.oldest(5)[2][0]
    sp.db.execute("UPDATE outbox SET pack = ? WHERE id = ?", (b"\xff\x00garbage", bad))
    up = uplink_for(sp)
    payload, _, readings = up.batch(sp.oldest(5))
    records = cbor2.loads(payload)
    assert sorted(r[2] for r in records) == [0.0, 1.0, 3.0, 4.0] and readings == 4
    assert sp.depth() == 4 and bad not in [r[0] for r in sp.oldest(5)]
    assert sp.stats().quarantined == 1
    kept = sp.db.execute("SELECT node, seq, pack, reason FROM quarantine").fetchall()
    assert kept == [("a", 2, b"\xff\x00garbage", "pack does not decode")]
    # a batch of nothing but bad rows publishes nothing
    sp.db.execute("UPDATE outbox SET pack = x'a1' WHERE id > 0")
    assert up.batch(sp.oldest(5))[0] is None and sp.depth() == 0
    assert sp.stats().quarantined == 5


def test_salvage_quarantines_undecodable_packs(tmp_path):
    sp = Spool(tmp_path)
    sp.store([("a", i, 60.0 * i, pack("a", i) if i != 3 else b"\x1f", 1) for i in range(8)])
    sp.salvage("test")
    assert sp.depth() == 7 and sp.stats().quarantined == 1
    assert sp.db.execute("SELECT seq FROM quarantine").fetchall() == [(3,)]


def test_gateway_comes_up_on_a_damaged_spool_and_says_so(tmp_path):
    spool_dir = tmp_path / "s"
    sp = build(spool_dir, rows=400, released=0)
    sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sp.close()
    overwrite(spool_dir / "spool.sqlite3", [1], random.Random(2))
    (tmp_path / "none.json").write_text("")  # an empty registry: allowed (and warned)
    cfg = Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool=str(spool_dir),
                 nodes=str(tmp_path / "none.json"), metrics="")
    gw = Gateway(cfg)  # before the fix: sqlite3.DatabaseError, file is not a database
    ok, why = gw.health()
    assert not ok and why.startswith("spool damaged") and "delete it" in why
    text = generate_latest(gw.metrics.registry).decode()
    assert "sensorcity_gateway_spool_damaged 1.0" in text
    assert f"sensorcity_gateway_spool_salvaged_rows_total {gw.spool.depth()}.0" in text
    assert gw.spool.depth() >= 400 - 20  # page 1 holds few rows
    for f in gw.spool.damaged_files():
        f.unlink()
    assert gw.health() == (True, "ok")
    gw.spool.close()


def test_the_service_checks_the_spool_at_start(tmp_path):
    """Damage that opening does not touch (an index page) is found by the check the service
    starts in a thread, and salvaged while the gateway runs."""
    import asyncio
    spool_dir = tmp_path / "s"
    sp = build(spool_dir, rows=400, released=0)
    sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sp.close()
    path = spool_dir / "spool.sqlite3"
    db = sqlite3.connect(path)  # a page of a real index (WITHOUT ROWID tables are read at open)
    pages = [n for n, in db.execute("SELECT pageno FROM dbstat WHERE name IN "
                                    "('seen_key', 'outbox_node_t') AND pageno > 1")]
    db.close()
    overwrite(path, [random.Random(3).choice(pages)], random.Random(4))
    (tmp_path / "none.json").write_text("")  # an empty registry: allowed (and warned)
    cfg = Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool=str(spool_dir),
                 nodes=str(tmp_path / "none.json"), metrics="", listen=[])
    gw = Gateway(cfg)
    assert gw.spool.damage() is None  # opening did not see it

    async def main():
        run = asyncio.create_task(gw.run())
        for _ in range(200):
            if gw.spool.damage():
                break
            await asyncio.sleep(0.05)
        gw.stop()
        await asyncio.wait_for(run, 30)
    asyncio.run(main())
    assert gw.spool.damage() and gw.spool.depth() == 440
    gw.spool.close()


def test_random_damage_never_keeps_the_spool_down(tmp_path):
    """Bytes flipped and runs of garbage anywhere in the file and its -wal, 40 times: the spool
    always opens, checks, takes a frame (at worst on the resend, when the commit is what finds
    the damage) and hands the uplink what it holds without an exception."""
    sp = build(tmp_path / "live", rows=600, released=200)
    found_by_commit, salvaged = [0], 0
    for k in range(40):
        rng = random.Random(k)
        path = crash_copy(sp, tmp_path / f"card{k}")
        for _ in range(rng.randint(1, 30)):
            target = rng.choice([path, f"{path}-wal"])
            size = os.path.getsize(target)
            with open(target, "r+b") as f:
                f.seek(rng.randrange(size))
                f.write(rng.randbytes(rng.choice((1, 4, 100, PAGE))))
        s = Spool(path.parent)
        s.check()
        frame = ("new", 1, 1.0, pack("new", 1), 1)
        try:
            out = s.store([frame])
        except SpoolDamaged:  # found by the commit (a free page, say): salvaged, not acked
            found_by_commit[0] += 1
            out = s.store([frame])  # the node's resend
        assert out == [STORED]
        # what the uplink does with them: a pack flipped inside (SQLite cannot tell) is
        # quarantined at publish time; every other row goes out
        up = uplink_for(s)
        rows = s.oldest(10**6)
        for i in range(0, len(rows), 200):
            up.batch(rows[i:i + 200])
        left = s.oldest(10**6)
        assert all(isinstance(cbor2.loads(r[4]), list) for r in left)
        assert len(left) + s.db.execute("SELECT count(*) FROM quarantine").fetchone()[0] >= \
            len(rows)
        assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        salvaged += bool(s.damaged_files())
        s.close()
        shutil.rmtree(path.parent)
    sp.close()
    print(f"40 damaged copies: {salvaged} salvaged, {found_by_commit[0]} of them found by a "
          f"commit")


def test_a_salvage_cut_short_resumes_at_the_next_start(tmp_path):
    """The gateway died in the salvage (its transaction rolled back): the damaged file is kept
    but nothing of it reached the fresh spool, which took new frames since. The next start
    salvages it, and rows whose ids the new frames took get new ids."""
    old = build(tmp_path / "old", rows=200, released=0)
    old.close()
    fresh = Spool(tmp_path / "s")
    fresh.store([("new", k, 1.0, pack("new", k), 1) for k in range(5)])  # ids 1..5
    fresh.close()
    for suffix in ("", "-wal"):
        src = tmp_path / "old" / f"spool.sqlite3{suffix}"
        if src.exists():
            src.rename(tmp_path / "s" / f"spool.sqlite3.damaged-20260101T000000Z{suffix}")
    sp = Spool(tmp_path / "s")
    got = {(n, s) for _, n, s, *_ in sp.oldest(10**6)}
    assert len(got) == 245 and ("new", 0) in got and ("n0", 0) in got
    assert sp.damage() and "resumed" in sp.damage() and "240 rows salvaged" in sp.damage()
    sp.close()
    assert Spool(tmp_path / "s").depth() == 245  # once only
