"""The durable spool: SQLite in WAL mode with synchronous=FULL. A frame is acked to its node only
after its transaction commits; an outbox row is deleted only after the broker's PUBACK."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    node TEXT NOT NULL, seq INTEGER NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (node, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, seq INTEGER NOT NULL,
    received REAL NOT NULL, pack BLOB NOT NULL, readings INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS downlink (node TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


class Spool:
    def __init__(self, directory: Path | str):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # one connection, used from the event loop and from worker threads: one user at a time
        self.lock = threading.RLock()

    def close(self):
        self.db.close()

    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): one fsync for many frames."""
        db, lock = self.db, self.lock

        class _Tx:
            def __enter__(self):
                lock.acquire()
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                try:
                    db.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    lock.release()
        return _Tx()

    def insert(self, node: str, seq: int, pack: bytes, readings: int) -> bool:
        """Add one data frame inside a transaction; False when (node, seq) was stored before."""
        now = time.time()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO seen (node, seq, received) VALUES (?, ?, ?)", (node, seq, now))
        if cur.rowcount == 0:
            return False
        self.db.execute(
            "INSERT INTO outbox (node, seq, received, pack, readings) VALUES (?, ?, ?, ?, ?)",
            (node, seq, now, pack, readings))
        return True

    def oldest(self, limit: int) -> list[tuple[int, str, int, float, bytes, int]]:
        with self.lock:
            return self.db.execute(
                "SELECT id, node, seq, received, pack, readings FROM outbox ORDER BY id LIMIT ?",
                (limit,)).fetchall()

    def release(self, ids: list[int]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def depth(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def next_downlink_seq(self, node: str) -> int:
        with self.transaction():
            row = self.db.execute("SELECT seq FROM downlink WHERE node = ?", (node,)).fetchone()
            seq = (row[0] + 1) if row else 0
            self.db.execute("INSERT OR REPLACE INTO downlink (node, seq) VALUES (?, ?)", (node, seq))
        return seq
