"""The durable spool: SQLite in WAL mode with synchronous=FULL. A frame is acked to its node only
after its transaction commits; an outbox row is deleted only after the broker's PUBACK.

Bounded by design (docs/durability.md): every query the service runs walks an index for at most
one batch, the outbox depth is a counter kept by triggers, the WAL is checkpointed and truncated,
`seen` (the de-dup set) is pruned by age and size, and the file never grows past the disk budget:
above it the oldest whole intervals are dropped and counted."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("sensorcity.gateway.spool")

SCHEMA_VERSION = 2
PAGE = 4096
# 30 days of a 200-node site at 60 s intervals, each interval a data frame (the largest kind,
# energy or traffic) and a health frame, at their bytes on disk as measured with `loadsim spool`
# (docs/durability.md): 6807 MiB
DATA_FRAME_BYTES, HEALTH_FRAME_BYTES = 572, 254
DEFAULT_MAX_MB = -(-30 * 24 * 60 * 200 * (DATA_FRAME_BYTES + HEALTH_FRAME_BYTES) // 2**20)
SEEN_SECONDS = 24 * 3600   # (node, seq) remembered this long for de-dup ...
SEEN_MAX = 1_000_000       # ... and at most this many of them
PRUNE_EVERY = 60.0         # seconds between two prunes of `seen`
PRUNE_CHUNK = 20_000       # rows per prune: a commit never waits on a long delete
WAL_LIMIT = 8 * 2**20      # the WAL is truncated to this after a checkpoint

STORED, DUPLICATE, STALE = "stored", "duplicate", "stale"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, seq INTEGER NOT NULL,
    received REAL NOT NULL, pack BLOB NOT NULL, readings INTEGER NOT NULL,
    t REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_t ON outbox (t);
CREATE TABLE IF NOT EXISTS seen (
    id INTEGER PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL, received REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS seen_key ON seen (node, seq);
CREATE TABLE IF NOT EXISTS floor (node TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS downlink (node TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tally (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO tally VALUES ('rows', 0), ('readings', 0), ('dropped_frames', 0),
    ('dropped_readings', 0), ('dropped_intervals', 0);
CREATE TRIGGER IF NOT EXISTS outbox_in AFTER INSERT ON outbox BEGIN
    UPDATE tally SET value = value + 1 WHERE name = 'rows';
    UPDATE tally SET value = value + NEW.readings WHERE name = 'readings'; END;
CREATE TRIGGER IF NOT EXISTS outbox_out AFTER DELETE ON outbox BEGIN
    UPDATE tally SET value = value - 1 WHERE name = 'rows';
    UPDATE tally SET value = value - OLD.readings WHERE name = 'readings'; END;
"""


class SpoolFull(Exception):
    """The disk (not the budget) is full: nothing was stored, so nothing may be acked."""


class Spool:
    def __init__(self, directory: Path | str, max_mb: int = DEFAULT_MAX_MB,
                 seen_seconds: float = SEEN_SECONDS, seen_max: int = SEEN_MAX):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.sqlite3"
        self.seen_seconds = seen_seconds
        self.seen_max = seen_max
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db = self.db
        db.execute(f"PRAGMA page_size={PAGE}")  # only takes on a new file
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        db.execute("PRAGMA cache_size=-2048")  # 2 MiB, whatever the backlog
        migrated = self._migrate()
        db.executescript(SCHEMA)
        if migrated:
            db.execute("UPDATE tally SET value = (SELECT count(*) FROM outbox) WHERE name = 'rows'")
            db.execute("UPDATE tally SET value = (SELECT coalesce(sum(readings), 0) FROM outbox) "
                       "WHERE name = 'readings'")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.page_size = db.execute("PRAGMA page_size").fetchone()[0]
        self.set_budget(max_mb)
        # one connection, used from the event loop and from worker threads: one user at a time
        self.lock = threading.RLock()
        self._count()
        self.floor = dict(db.execute("SELECT node, seq FROM floor"))
        self.pruned_at = 0.0

    def _migrate(self) -> bool:
        """Version 1 (the walking skeleton): seen WITHOUT ROWID, outbox without t."""
        db = self.db
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return False
        old = bool(db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone())
        cols = {r[1] for r in db.execute("PRAGMA table_info(seen)")}
        if cols and "id" not in cols:
            db.executescript("""BEGIN IMMEDIATE;
                ALTER TABLE seen RENAME TO seen_v1;
                CREATE TABLE seen (id INTEGER PRIMARY KEY, node TEXT NOT NULL,
                    seq INTEGER NOT NULL, received REAL NOT NULL);
                INSERT INTO seen (node, seq, received)
                    SELECT node, seq, received FROM seen_v1 ORDER BY received;
                DROP TABLE seen_v1;
                COMMIT;""")
        cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        if cols and "t" not in cols:
            db.executescript("""BEGIN IMMEDIATE;
                ALTER TABLE outbox ADD COLUMN t REAL NOT NULL DEFAULT 0;
                UPDATE outbox SET t = received;
                COMMIT;""")
        return old

    def set_budget(self, max_mb: int) -> None:
        """The file never grows past max_mb (SQLite's max_page_count); above `high` the oldest
        whole intervals go until the store is back under `low`, so a commit always has room."""
        if max_mb < 4:
            raise ValueError("spool_max_mb must be at least 4")
        pages = max_mb * 2**20 // self.page_size
        reserve = max(pages // 25, 2**20 // self.page_size)
        self.max_pages = self.db.execute(f"PRAGMA max_page_count={pages}").fetchone()[0]
        self.high = pages - reserve
        self.low = pages - 2 * reserve

    def close(self):
        self.db.close()

    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): one fsync for many frames."""
        db, lock, count = self.db, self.lock, self._count

        class _Tx:
            def __enter__(self):
                lock.acquire()
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                try:
                    if exc_type is None:
                        db.execute("COMMIT")
                        count()
                    elif db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                        db.execute("ROLLBACK")
                finally:
                    lock.release()
        return _Tx()

    # --- ingest side -----------------------------------------------------------------------
    def store(self, entries: list[tuple[str, int, float, bytes, int]],
              now: float | None = None) -> list[str]:
        """Commit data frames (node, seq, interval time, pack, readings) in one transaction; one
        outcome per entry: STORED, DUPLICATE (seen before) or STALE (older than the de-dup
        window: stored long ago, or a replay). Raises SpoolFull when the disk is full."""
        for attempt in (0, 1):
            try:
                with self.transaction():
                    if self.used_pages() > self.high:
                        self._drop_oldest(self.low)
                    now = time.time() if now is None else now
                    out = [self.insert(node, seq, pack, n, t, now=now)
                           for node, seq, t, pack, n in entries]
                    pruned = self._prune_seen(now) if now >= self.pruned_at else False
                if pruned:
                    self.floor = dict(self.db.execute("SELECT node, seq FROM floor"))
                return out
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                if attempt == 0 and self._at_budget():
                    with self.transaction():  # a batch larger than the reserve: make room
                        self._drop_oldest(self.low)
                    continue
                raise SpoolFull(str(exc)) from exc
        raise AssertionError("unreachable")

    def insert(self, node: str, seq: int, pack: bytes, readings: int, t: float | None = None,
               *, now: float | None = None) -> str | bool:
        """Add one data frame inside a transaction. Without t (the skeleton's call) the result
        is True when stored, False otherwise; with t it is the outcome."""
        now = time.time() if now is None else now
        if seq <= self.floor.get(node, -1):
            outcome = STALE
        elif self.db.execute("INSERT OR IGNORE INTO seen (node, seq, received) VALUES (?, ?, ?)",
                             (node, seq, now)).rowcount == 0:
            outcome = DUPLICATE
        else:
            self.db.execute(
                "INSERT INTO outbox (node, seq, received, pack, readings, t) "
                "VALUES (?, ?, ?, ?, ?, ?)", (node, seq, now, pack, readings,
                                              now if t is None else t))
            outcome = STORED
        return outcome if t is not None else outcome == STORED

    def _prune_seen(self, now: float | None = None) -> bool:
        """Forget (node, seq) pairs older than the window or beyond its size, at most a chunk at
        a time; a node's floor keeps the highest forgotten seq, so a frame at or below it is
        STALE, never stored twice. Rows come in time order, so id order is age order."""
        now = time.time() if now is None else now
        self.pruned_at = now + PRUNE_EVERY
        lo, hi = self.db.execute("SELECT min(id), max(id) FROM seen").fetchone()
        if lo is None:
            return False
        upto = min(lo + PRUNE_CHUNK, hi + 1)
        cut = self.db.execute(
            "SELECT coalesce(max(id) + 1, ?) FROM seen WHERE id < ? AND received < ?",
            (lo, upto, now - self.seen_seconds)).fetchone()[0]
        cut = max(cut, min(hi + 1 - self.seen_max, upto))
        if cut <= lo:
            return False
        self.db.execute(
            "INSERT INTO floor (node, seq) SELECT node, max(seq) FROM seen WHERE id < ? "
            "GROUP BY node ON CONFLICT (node) DO UPDATE SET seq = max(seq, excluded.seq)", (cut,))
        self.db.execute("DELETE FROM seen WHERE id < ?", (cut,))
        if cut >= upto <= hi:
            self.pruned_at = now  # a whole chunk went and more may be due: the next commit goes on
        return True

    # --- disk budget -----------------------------------------------------------------------
    def used_pages(self) -> int:
        return (self.db.execute("PRAGMA page_count").fetchone()[0]
                - self.db.execute("PRAGMA freelist_count").fetchone()[0])

    def _at_budget(self) -> bool:
        return self.db.execute("PRAGMA page_count").fetchone()[0] >= self.max_pages - 8

    def _drop_oldest(self, target: int) -> None:
        """Drop whole intervals (every frame of the oldest interval time) until under target;
        counted in `tally` and logged. Runs inside the caller's transaction."""
        frames = readings = intervals = 0
        while self.used_pages() > target:
            t = self.db.execute("SELECT min(t) FROM outbox").fetchone()[0]
            if t is None:
                break
            n, r = self.db.execute("SELECT count(*), coalesce(sum(readings), 0) FROM outbox "
                                   "WHERE t = ?", (t,)).fetchone()
            self.db.execute("DELETE FROM outbox WHERE t = ?", (t,))
            frames, readings, intervals = frames + n, readings + r, intervals + 1
        if intervals:
            self.db.executemany("UPDATE tally SET value = value + ? WHERE name = ?",
                                [(frames, "dropped_frames"), (readings, "dropped_readings"),
                                 (intervals, "dropped_intervals")])
            log.warning("spool over its budget: dropped the %d oldest intervals (%d frames, "
                        "%d readings)", intervals, frames, readings)

    def _count(self) -> None:
        """The counters stats() and depth() give, read after each commit under the lock (O(1)),
        so that the event loop reads them without waiting for the lock: a long commit holds it."""
        counts = dict(self.db.execute("SELECT name, value FROM tally"))
        counts["used_bytes"] = self.used_pages() * self.page_size
        self.counts = counts  # replaced whole: a reader in another thread sees old or new

    def stats(self) -> dict[str, int]:
        """rows, readings (in the outbox), dropped_frames/_readings/_intervals (since the spool
        was made), used_bytes and budget_bytes, as of the last commit: no lock, no query."""
        return {**self.counts, "budget_bytes": self.max_pages * self.page_size}

    # --- uplink side -----------------------------------------------------------------------
    def oldest(self, limit: int) -> list[tuple[int, str, int, float, bytes, int]]:
        with self.lock:
            return self.db.execute(
                "SELECT id, node, seq, received, pack, readings FROM outbox ORDER BY id LIMIT ?",
                (limit,)).fetchall()

    def release(self, ids: list[int]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def depth(self) -> int:
        """Frames in the outbox as of the last commit: no lock, no query (see _count)."""
        return self.counts["rows"]

    # --- downlink numbers (gateway/downlink.py) --------------------------------------------
    def downlink_reserved(self) -> dict[str, int]:
        """node -> the highest downlink number that may have been used: go on above it."""
        with self.lock:
            return dict(self.db.execute("SELECT node, seq FROM downlink"))

    def reserve_downlink(self, upto: dict[str, int]) -> None:
        """Numbers up to upto[node] may be used from now on: one transaction for all nodes."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO downlink (node, seq) VALUES (?, ?) ON CONFLICT (node) "
                "DO UPDATE SET seq = max(seq, excluded.seq)", list(upto.items()))

    def next_downlink_seq(self, node: str) -> int:
        """The old way, a transaction per number; kept for the bench's before/after figure."""
        with self.transaction():
            row = self.db.execute("SELECT seq FROM downlink WHERE node = ?", (node,)).fetchone()
            seq = (row[0] + 1) if row else 0
            self.db.execute("INSERT OR REPLACE INTO downlink (node, seq) VALUES (?, ?)",
                            (node, seq))
        return seq
