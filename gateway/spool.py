"""The durable spool: SQLite in WAL mode with synchronous=FULL. A frame is acked to its node only
after its transaction commits; an outbox row is deleted only after the broker's PUBACK.

A damaged file (SQLite keeps no page checksums; a failing card overwrites pages) is set aside
and what is readable salvaged into a fresh one; a pack that no longer decodes is quarantined
(docs/durability.md, "A damaged spool").

Bounded by design (docs/durability.md): every query the service runs walks an index for at most
one batch, the outbox depth is a counter kept by triggers, the WAL is checkpointed and truncated,
`seen` (the de-dup set) is pruned by age and size, and the file never grows past the disk budget:
above it the oldest whole intervals are dropped and counted."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import cbor2

from . import salvage

log = logging.getLogger("sensorcity.gateway.spool")

SCHEMA_VERSION = 3
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
DROP_CHUNK = 200           # a node far above the others loses at most this many intervals a round

STORED, DUPLICATE, STALE = "stored", "duplicate", "stale"
DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, seq INTEGER NOT NULL,
    received REAL NOT NULL, pack BLOB NOT NULL, readings INTEGER NOT NULL,
    t REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_node_t ON outbox (node, t);
CREATE TABLE IF NOT EXISTS held (node TEXT PRIMARY KEY, rows INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    id INTEGER PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL, received REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS seen_key ON seen (node, seq);
CREATE TABLE IF NOT EXISTS floor (node TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS downlink (node TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY, node TEXT NOT NULL, body TEXT NOT NULL, request_id TEXT NOT NULL,
    received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS control (node TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tally (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO tally VALUES ('rows', 0), ('readings', 0), ('dropped_frames', 0),
    ('dropped_readings', 0), ('dropped_intervals', 0), ('quarantined', 0), ('salvaged', 0),
    ('lost', 0);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, node, seq, received, pack, readings, t, reason TEXT, at REAL);
CREATE TABLE IF NOT EXISTS salvage (
    at REAL NOT NULL, file TEXT NOT NULL, cause TEXT NOT NULL, salvaged INTEGER NOT NULL,
    quarantined INTEGER NOT NULL, lost INTEGER);
CREATE TRIGGER IF NOT EXISTS outbox_in AFTER INSERT ON outbox BEGIN
    UPDATE tally SET value = value + 1 WHERE name = 'rows';
    UPDATE tally SET value = value + NEW.readings WHERE name = 'readings'; END;
CREATE TRIGGER IF NOT EXISTS outbox_out AFTER DELETE ON outbox BEGIN
    UPDATE tally SET value = value - 1 WHERE name = 'rows';
    UPDATE tally SET value = value - OLD.readings WHERE name = 'readings'; END;
CREATE TRIGGER IF NOT EXISTS outbox_in_node AFTER INSERT ON outbox BEGIN
    INSERT INTO held VALUES (NEW.node, 1) ON CONFLICT (node) DO UPDATE SET rows = rows + 1; END;
CREATE TRIGGER IF NOT EXISTS outbox_out_node AFTER DELETE ON outbox BEGIN
    UPDATE held SET rows = rows - 1 WHERE node = OLD.node; END;
"""


class Row(NamedTuple):
    """An outbox row: a data frame waiting for the broker's PUBACK."""
    id: int
    node: str
    seq: int
    received: float   # when the gateway stored it (time.time())
    pack: bytes       # its records, a SenML-CBOR pack
    readings: int


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """The spool's counters as of its last commit, replaced whole after each one, so a reader on
    the event loop or in another thread never waits for the lock a long commit holds."""
    rows: int = 0                 # in the outbox, waiting for the broker's PUBACK
    readings: int = 0
    dropped_frames: int = 0       # over the disk budget, since the spool was made
    dropped_readings: int = 0
    dropped_intervals: int = 0
    quarantined: int = 0          # their pack no longer decodes
    salvaged: int = 0             # rows copied out of damaged files
    lost: int = 0                 # rows of damaged files that could not be read
    used_bytes: int = 0           # the pages in use
    budget_bytes: int = 0         # the disk budget
    damaged: int = 0              # damaged files kept beside the spool (stats() looks)


_TALLIES = tuple(f.name for f in fields(SpoolStats))


class Waiting(NamedTuple):
    """A command waiting for its node (gateway/commands.py)."""
    id: int
    node: str
    body: str         # JSON
    request_id: str   # JSON
    received: float   # time.time()


class SpoolFull(Exception):
    """The disk (not the budget) is full: nothing was stored, so nothing may be acked."""


class SpoolDamaged(SpoolFull):
    """The file was found damaged in a commit: nothing of it was stored (nothing may be acked);
    the file was set aside and what was readable salvaged into a fresh one."""


# what SQLite raises on a damaged file: its errors, and, when a damaged schema puts bytes that are
# not UTF-8 into an error message, the decoding of that message
DAMAGE = (sqlite3.DatabaseError, UnicodeDecodeError)


def damaged(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file, not the statement, is at fault."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and \
        code & 0xFF in DAMAGE_CODES


def _guarded(method):
    """A read or release that meets a damaged file salvages it and runs once more on the fresh
    one (ids survive a salvage, so a release still finds its rows)."""
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DAMAGE as exc:
            if not damaged(exc):
                raise
            self.salvage(f"{method.__name__}: {exc}")
        return method(self, *args, **kwargs)
    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run


class Spool:
    def __init__(self, directory: Path | str, max_mb: int = DEFAULT_MAX_MB,
                 seen_seconds: float = SEEN_SECONDS, seen_max: int = SEEN_MAX,
                 vfs: str | None = None):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.sqlite3"
        self.seen_seconds = seen_seconds
        self.seen_max = seen_max
        self.vfs = vfs  # a test's fault-injecting file layer (tests/crashvfs.py); None: the OS
        self.max_mb = max_mb
        # one connection, used from the event loop and from worker threads: one user at a time
        self.lock = threading.RLock()
        self.pruned_at = 0.0
        try:
            self._open()
            done = {f for (f,) in self.db.execute("SELECT file FROM salvage")}
        except DAMAGE as exc:  # the salvage table's pages are damage found too
            if not damaged(exc):
                raise
            self.salvage(f"open: {exc}")
            done = {f for (f,) in self.db.execute("SELECT file FROM salvage")}
        for aside in self.damaged_files():  # a salvage cut short (a crash, a full disk) resumes
            if aside.name not in done:
                self._copy_readable(aside, "resumed: a salvage was cut short")
                log.critical("spool: resumed the salvage of %s", aside)

    def _connect(self, path: Path, mode: str = "rwc") -> sqlite3.Connection:
        vfs = f"&vfs={self.vfs}" if self.vfs else ""
        db = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}{vfs}", uri=True,
                             isolation_level=None, check_same_thread=False)
        # a damaged page may hand back text that is not UTF-8 (a node name, even a pragma's
        # answer): read it, replaced, so that damage is SQLite's error to find, never ours
        db.text_factory = lambda b: b.decode("utf-8", "replace")
        return db

    def _open(self) -> None:
        self.db = db = self._connect(self.path)
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
            db.execute("INSERT OR REPLACE INTO held "
                       "SELECT node, count(*) FROM outbox GROUP BY node")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.page_size = db.execute("PRAGMA page_size").fetchone()[0]
        self.set_budget(self.max_mb)
        self._count()
        self.floor = dict(db.execute("SELECT node, seq FROM floor"))
        self.ident = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file at the spool's path, None when there is none."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _migrate(self) -> bool:
        """Version 1 (the walking skeleton): seen WITHOUT ROWID, outbox without t; version 2:
        outbox indexed on t alone, no `held` (frames per node, counted by triggers)."""
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
        db.execute("DROP INDEX IF EXISTS outbox_t")
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
        spool, lock = self, self.lock

        class _Tx:
            def __enter__(self):
                lock.acquire()
                self.db = spool.db  # read under the lock: a salvage may have replaced it
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                except BaseException:
                    lock.release()
                    raise

            def __exit__(self, exc_type, exc, _tb):
                db = self.db
                try:
                    if exc_type is None:
                        db.execute("COMMIT")
                        spool._count()
                    elif db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                        try:
                            db.execute("ROLLBACK")
                        except sqlite3.DatabaseError:
                            if not damaged(exc):
                                raise
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
                    pruned = self._prune_seen(now) if self._prune_due(now) else False
                if pruned:
                    self.floor = dict(self.db.execute("SELECT node, seq FROM floor"))
                if self._identity() != self.ident:  # committed to a file no path leads to:
                    self.relocate("the spool file was deleted or replaced under the gateway")
                return out  # (relocated: this batch is in the fresh file too, committed)
            except DAMAGE as exc:
                if damaged(exc):  # nothing of this batch is stored: set the file aside, no ack
                    self.salvage(f"store: {exc}")
                    raise SpoolDamaged(str(exc)) from exc
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                if attempt == 0 and self._at_budget():
                    with self.transaction():  # a batch larger than the reserve: make room
                        self._drop_oldest(self.low)
                    continue
                raise SpoolFull(str(exc)) from exc
        raise AssertionError("unreachable")

    def insert(self, node: str, seq: int, pack: bytes, readings: int, t: float, *,
               now: float | None = None) -> str:
        """Add one data frame inside a transaction: STORED, DUPLICATE or STALE (see store)."""
        now = time.time() if now is None else now
        if seq <= self.floor.get(node, -1):
            outcome = STALE
        elif self.db.execute("INSERT OR IGNORE INTO seen (node, seq, received) VALUES (?, ?, ?)",
                             (node, seq, now)).rowcount == 0:
            outcome = DUPLICATE
        else:
            self.db.execute(
                "INSERT INTO outbox (node, seq, received, pack, readings, t) "
                "VALUES (?, ?, ?, ?, ?, ?)", (node, seq, now, pack, readings, t))
            outcome = STORED
        return outcome

    def _prune_due(self, now: float) -> bool:
        """A prune is due at pruned_at, or at once when the clock went back past the last prune
        (a Pi without an RTC started a year ahead, then NTP set it right): else `seen` would go
        unpruned until the clock caught up."""
        return now >= self.pruned_at or now < self.pruned_at - 2 * PRUNE_EVERY

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
        """Until under target, the nodes holding the most frames lose their oldest intervals
        (all their frames of those interval times), so that no node takes another's room: a
        key holder's frames dated far ahead go before another node's real ones. Equal nodes
        lose the same oldest interval each round; a node k frames above the next loses up to k
        intervals (at most DROP_CHUNK) at once. Counted in `tally` (an interval once, however
        many nodes lost it) and logged. Runs inside the caller's transaction."""
        frames = readings = intervals = 0
        db = self.db
        while self.used_pages() > target:
            top = db.execute("SELECT max(rows) FROM held").fetchone()[0] or 0
            if top <= 0:
                break
            below = db.execute("SELECT coalesce(max(rows), 0) FROM held WHERE rows < ?",
                               (top,)).fetchone()[0]
            k, before = min(max(top - below, 1), DROP_CHUNK), frames
            for (node,) in db.execute("SELECT node FROM held WHERE rows = ?", (top,)).fetchall():
                cut = db.execute("SELECT t FROM outbox WHERE node = ? ORDER BY t LIMIT 1 "
                                 "OFFSET ?", (node, k - 1)).fetchone()
                cut = cut[0] if cut else db.execute("SELECT max(t) FROM outbox WHERE node = ?",
                                                    (node,)).fetchone()[0]
                n, r = db.execute("SELECT count(*), coalesce(sum(readings), 0) FROM outbox "
                                  "WHERE node = ? AND t <= ?", (node, cut)).fetchone()
                db.execute("DELETE FROM outbox WHERE node = ? AND t <= ?", (node, cut))
                frames, readings = frames + n, readings + r
            if frames == before:  # `held` disagrees with the outbox: never loop on it
                log.error("spool: the per-node frame counts are wrong; recounted")
                db.execute("DELETE FROM held")
                db.execute("INSERT INTO held SELECT node, count(*) FROM outbox GROUP BY node")
                continue
            intervals += k
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
        # replaced whole: a reader in another thread sees the old or the new
        self.counts = SpoolStats(**{k: v for k, v in counts.items() if k in _TALLIES},
                                 used_bytes=self.used_pages() * self.page_size)

    def stats(self) -> SpoolStats:
        """The counters as of the last commit (no lock, no query), with the budget and the
        number of damaged files kept beside the spool."""
        return replace(self.counts, budget_bytes=self.max_pages * self.page_size,
                       damaged=len(self.damaged_files()))

    # --- uplink side -----------------------------------------------------------------------
    @_guarded
    def oldest(self, limit: int, after: int = 0) -> list[Row]:
        """The first `limit` outbox rows with an id above `after`, in id (arrival) order. A row
        whose pack, time or count is not of its column's type (one bit of a record's header
        turns a BLOB into TEXT, SQLite checks none on a read) is quarantined, not returned."""
        with self.lock:
            rows = [Row(*r) for r in self.db.execute(
                "SELECT id, node, seq, received, pack, readings FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT ?", (after, limit))]
            bad = [r.id for r in rows if type(r.pack) is not bytes or type(r.readings) is not int
                   or type(r.received) not in (int, float)]
            if bad:
                self.quarantine(bad, "a column of the wrong type")
                rows = [r for r in rows if r.id not in bad]
            return rows

    @_guarded
    def newest_id(self) -> int:
        """The id of the newest outbox row (0 when empty): where a backlog ends."""
        with self.lock:
            return self.db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]

    @_guarded
    def release(self, ids: list[int]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def depth(self) -> int:
        """Frames in the outbox as of the last commit: no lock, no query (see _count)."""
        return self.counts.rows

    # --- downlink numbers (gateway/downlink.py) --------------------------------------------
    def downlink_reserved(self) -> dict[str, int]:
        """node -> the highest downlink number that may have been used: go on above it."""
        return self._marks("downlink")

    def reserve_downlink(self, upto: dict[str, int]) -> None:
        """Numbers up to upto[node] may be used from now on: one transaction for all nodes."""
        self._raise_marks("downlink", upto)

    # per-node high-water marks (downlink, control): read whole, raised, never lowered
    def _marks(self, table: str) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute(f"SELECT node, seq FROM {table}"))

    def _raise_marks(self, table: str, seqs: dict[str, int]) -> None:
        with self.transaction():
            self.db.executemany(
                f"INSERT INTO {table} (node, seq) VALUES (?, ?) ON CONFLICT (node) "
                "DO UPDATE SET seq = max(seq, excluded.seq)", list(seqs.items()))

    @_guarded
    def seq_floors(self) -> dict[str, int]:
        """node -> the highest data seq the spool knows (stored within the window, or its
        floor): a re-flashed node's numbers must go above it. One pass, at start."""
        with self.lock:
            out = dict(self.db.execute("SELECT node, max(seq) FROM seen GROUP BY node"))
            for node, seq in self.db.execute("SELECT node, seq FROM floor"):
                out[node] = max(out.get(node, -1), seq)
        return out

    # --- operator commands waiting for their node (gateway/commands.py) --------------------
    @_guarded
    def commands_waiting(self) -> list[Waiting]:
        """The commands waiting for their nodes, oldest first."""
        with self.lock:
            return [Waiting(*r) for r in self.db.execute(
                "SELECT id, node, body, request_id, received FROM commands ORDER BY id")]

    def save_commands(self, add: list[Waiting], remove: list[int]) -> None:
        """Commands taken and commands done (acked, expired), in one transaction."""
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO commands VALUES (?, ?, ?, ?, ?)", add)
            self.db.executemany("DELETE FROM commands WHERE id = ?", [(i,) for i in remove])

    # --- control seqs (gateway/control.py) -------------------------------------------------
    @_guarded
    def control_seqs(self) -> dict[str, int]:
        """node -> the highest control-frame (hello, ack) seq accepted from it."""
        return self._marks("control")

    @_guarded
    def save_control(self, seqs: dict[str, int]) -> None:
        """Control seqs accepted (they only go up): one transaction for all nodes."""
        self._raise_marks("control", seqs)

    @_guarded
    def next_downlink_seq(self, node: str) -> int:
        """The old way, a transaction per number; kept for the bench's before/after figure."""
        with self.transaction():
            row = self.db.execute("SELECT seq FROM downlink WHERE node = ?", (node,)).fetchone()
            seq = (row[0] + 1) if row else 0
            self.db.execute("INSERT OR REPLACE INTO downlink (node, seq) VALUES (?, ?)",
                            (node, seq))
        return seq

    # --- damage: quarantine, check, salvage (docs/durability.md, "A damaged spool") -------
    @_guarded
    def quarantine(self, ids: list[int], reason: str) -> None:
        """Move outbox rows that cannot be published (a pack that no longer decodes) into
        `quarantine`: kept for salvage, counted, out of the way of the rows behind them."""
        moved = 0
        with self.transaction():
            for i in ids:
                moved += self.db.execute(  # its own id: one a salvage kept may hold the row's
                    "INSERT INTO quarantine (node, seq, received, pack, readings, t, reason, at) "
                    "SELECT node, seq, received, pack, readings, t, ?, ? FROM outbox WHERE id = ?",
                    (reason, time.time(), i)).rowcount
                self.db.execute("DELETE FROM outbox WHERE id = ?", (i,))
            self.db.execute("UPDATE tally SET value = value + ? WHERE name = 'quarantined'",
                            (moved,))
        log.error("spool: %d rows quarantined (%s): ids %s", moved, reason, ids[:10])

    def check(self) -> bool:
        """PRAGMA quick_check on a second connection (in WAL mode it blocks no commit); a damaged
        file is salvaged. It reads the whole file: the service runs it in a thread after start."""
        inode = self.path.stat().st_ino
        try:
            db = self._connect(self.path, "ro")
            try:
                result = [r[0] for r in db.execute("PRAGMA quick_check")]
            finally:
                db.close()
        except DAMAGE as exc:
            if not damaged(exc):  # busy, or out of memory: not a verdict on the file
                log.warning("spool check did not run: %s", exc)
                return True
            result = [str(exc)]
        if result == ["ok"]:
            return True
        with self.lock:
            if self.path.stat().st_ino != inode:
                return True  # salvaged meanwhile (a commit found it): the verdict was on the old
            self.salvage(("quick_check: " + "; ".join(result[:3]))[:300])
        return False

    def damaged_files(self) -> list[Path]:
        return sorted(p for p in self.path.parent.glob(self.path.name + ".damaged-*")
                      if not p.name.endswith(("-wal", "-shm")))

    def damage(self) -> str | None:
        """The alarm's text while a damaged file is kept beside the spool, else None."""
        files = self.damaged_files()
        if not files:
            return None
        with self.lock:
            row = self.db.execute("SELECT cause, salvaged, quarantined, lost FROM salvage "
                                  "ORDER BY rowid DESC LIMIT 1").fetchone()
        cause, saved, quar, lost = row or ("unknown", 0, 0, None)
        return (f"spool damaged ({cause}): {saved} rows salvaged, {quar} quarantined, "
                f"{'an unknown number' if lost is None else lost} lost; kept as {files[-1].name} "
                f"(delete it to clear this alarm)")

    def salvage(self, cause: str) -> None:
        """Set the damaged file aside (with its -wal and -shm, as `<name>.damaged-<UTC time>`),
        start a fresh spool and copy into it every row still readable."""
        with self.lock:
            try:
                self.db.close()
            except (AttributeError, sqlite3.Error):
                pass
            aside = self._set_aside()
            self._reopen()
            saved, quar, lost = self._copy_readable(aside, cause)
        log.critical("spool damaged (%s): set aside as %s; %d rows salvaged, %d quarantined, %s "
                     "lost; a fresh spool takes new frames", cause, aside, saved, quar,
                     "an unknown number" if lost is None else lost)

    def _reopen(self) -> None:
        """A fresh file at the path; the counts stay as they were until the copy into it
        commits (before, the fresh file's 0 showed: nothing waiting, while a salvage copied)."""
        kept = getattr(self, "counts", None)
        self._open()
        if kept is not None:
            self.counts = kept

    def _aside_name(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside, k = self.path.with_name(f"{self.path.name}.damaged-{stamp}"), 0
        while aside.exists():
            k += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{k}")
        return aside

    def _set_aside(self) -> Path:
        """Rename the file at the path (with its -wal and -shm) to a new damaged-<time> name."""
        aside = self._aside_name()
        for suffix in ("-wal", "-shm", ""):  # the database last: never a -wal without it
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return aside

    def relocate(self, cause: str) -> None:
        """The path no longer leads to the open file (deleted: SQLite writes on to the unlinked
        inode, which no restart finds; or replaced). What the open file holds is copied out
        through its connection (SQLite's backup) to a damaged-<time> file; a file found at the
        path is set aside as damaged too; a fresh spool takes both files' readable rows, and the
        kept files raise the alarm (damage()) like a salvage's."""
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = self._aside_name()
            out = self._connect(kept)
            try:
                self.db.backup(out)
            finally:
                out.close()
            found = self._set_aside() if self._identity() is not None else None
            self.db.close()  # after the set-aside: its close deletes the -wal and -shm by name
            self._reopen()
            for aside in (kept, found) if found else (kept,):
                saved, quar, lost = self._copy_readable(aside, cause)
                log.critical("spool: %s: kept as %s; %d rows copied into a fresh spool",
                             cause, aside.name, saved)

    def _copy_readable(self, aside: Path, cause: str) -> tuple[int, int, int | None]:
        """Rows stream into the fresh spool in one transaction (memory stays bounded whatever
        the file's size); (node, seq) de-dups what both passes find (an index for the salvage's
        length), ids are kept where free. A pack that does not decode goes to `quarantine`."""
        small: dict[str, dict] = {"floor": {}, "downlink": {}, "control": {}, "tally": {}}
        now, quar = time.time(), [0]
        db = self.db

        def outbox(r):
            if not _decodes(r[4]):
                quar[0] += db.execute("INSERT OR IGNORE INTO quarantine VALUES "
                                      "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                      (*r, "pack does not decode (salvage)", now)).rowcount
            elif not db.execute("SELECT 1 FROM outbox WHERE node = ? AND seq = ?",
                                r[1:3]).fetchone():
                if not db.execute("INSERT OR IGNORE INTO outbox (id, node, seq, received, pack, "
                                  "readings, t) VALUES (?, ?, ?, ?, ?, ?, ?)", r).rowcount:
                    # a resumed salvage: the id went to a frame taken since; a new one
                    db.execute("INSERT INTO outbox (node, seq, received, pack, readings, t) "
                               "VALUES (?, ?, ?, ?, ?, ?)", r[1:])
                seen(r[1], r[2], r[3])

        def quarantined(r):
            db.execute("INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", r)

        def seen(node, seq, received):
            db.execute("INSERT OR IGNORE INTO seen (node, seq, received) VALUES (?, ?, ?)",
                       (node, seq, now if received is None else received))

        reads = {  # 1. through SQLite, where the schema still reads: each table to its first error
            "SELECT id, node, seq, received, pack, readings, t FROM outbox": outbox,
            "SELECT * FROM quarantine": quarantined,
            "SELECT node, seq, received FROM seen": lambda r: seen(*r),
            "SELECT node, seq FROM floor": lambda r: small["floor"].__setitem__(*r),
            "SELECT node, seq FROM downlink": lambda r: small["downlink"].__setitem__(*r),
            "SELECT node, seq FROM control": lambda r: small["control"].__setitem__(*r),
            "SELECT name, value FROM tally": lambda r: small["tally"].__setitem__(*r),
        }
        with self.transaction():
            db.execute("CREATE INDEX IF NOT EXISTS salvage_key ON outbox (node, seq)")
            before = db.execute("SELECT value FROM tally WHERE name = 'rows'").fetchone()[0]
            try:
                src = self._connect(aside, "ro")
            except sqlite3.Error:
                src = None
            for sql, keep in reads.items() if src else ():
                try:
                    for row in src.execute(sql):
                        keep(row)
                except DAMAGE:
                    pass
            if src:
                src.close()
            try:  # 2. page by page, what SQLite could not reach (salvage.py)
                for rowid, v in salvage.records(aside, self.page_size):
                    try:
                        _classify(rowid, v, outbox, quarantined, seen)
                    except sqlite3.Error as exc:  # a value SQLite will not take: that row only
                        log.warning("spool salvage: a row skipped: %s", exc)
            except OSError as exc:
                log.error("spool salvage: reading %s: %s", aside, exc)
            db.executemany("INSERT INTO floor VALUES (?, ?) ON CONFLICT (node) DO UPDATE "
                           "SET seq = max(seq, excluded.seq)", small["floor"].items())
            for table in ("downlink", "control"):
                db.executemany(f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (node) DO UPDATE "
                               "SET seq = max(seq, excluded.seq)", small[table].items())
            saved = db.execute("SELECT value FROM tally WHERE name = 'rows'").fetchone()[0] - before
            old = small["tally"]
            lost = None if old.get("rows") is None else max(0, old["rows"] - saved - quar[0])
            old = {k: v for k, v in old.items() if k not in ("rows", "readings")}
            for name, add in (("quarantined", quar[0]), ("salvaged", saved), ("lost", lost or 0)):
                old[name] = old.get(name, 0) + add
            db.executemany("UPDATE tally SET value = value + ? WHERE name = ?",
                           [(v, k) for k, v in old.items() if type(v) is int])
            db.execute("INSERT INTO salvage VALUES (?, ?, ?, ?, ?, ?)",
                       (now, aside.name, cause, saved, quar[0], lost))
            db.execute("DROP INDEX salvage_key")
        self.floor = dict(db.execute("SELECT node, seq FROM floor"))
        return saved, quar[0], lost


NUM, ANY = (int, float), object


def _shape(values: list, kinds: tuple) -> bool:
    """A salvaged record has a table's row shape: its length, and each value's type (None: a
    NULL, as the rowid alias's place holds; ANY: any value)."""
    if len(values) != len(kinds):
        return False
    for v, k in zip(values, kinds):
        if (v is not None) if k is None else (k is not ANY and not isinstance(v, k)):
            return False
    return True


def _classify(rowid, v, outbox, quarantined, seen) -> None:
    """A record read off a page, to the table whose row it has the shape of (or nowhere)."""
    if _shape(v, (None, str, int, NUM, bytes, int, NUM)):
        outbox((rowid, *v[1:]))
    elif _shape(v, (None, str, int, NUM, ANY, ANY, ANY, str, NUM)):
        quarantined((rowid, *v[1:]))
    elif _shape(v, (None, str, int, NUM)):
        seen(*v[1:])
    elif rowid is None and _shape(v, (str, int, int)):  # an entry of the seen_key index
        seen(v[0], v[1], None)


def _decodes(pack) -> bool:
    """A pack the uplink can publish: CBOR of a list of SenML records (maps)."""
    try:
        records = cbor2.loads(pack)
    except Exception:  # garbage can raise anything a decoder raises
        return False
    return isinstance(records, list) and all(isinstance(r, dict) for r in records)
