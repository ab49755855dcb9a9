"""The commit stage: verified data frames wait in a bounded queue (backpressure on their links)
and are written to the spool in group commits, then acked. A frame is acked only once its
transaction committed; a full disk, a damaged file or a failing commit acks nothing (the nodes
keep their frames and send them again) and is tried again a second later."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from .spool import DUPLICATE, STALE, STORED, Spool, SpoolDamaged, SpoolFull
from .verify import spool_entry

log = logging.getLogger("sensorcity.gateway")
QUEUE_MAX = 1000
COMMIT_MAX = 200


@dataclass(slots=True)
class CommitStats:
    stored: int = 0                   # data frames committed
    duplicates: int = 0               # seen before (re-sent), acked again
    stale: int = 0                    # below the node's floor: acked, not stored (a rejection)
    spool_full: int = 0               # commits refused: the disk was full (not acked)
    spool_full_at: float = -1e9       # when the last one was (monotonic)
    errors: int = 0                   # commits that failed unexpectedly (not acked; logged)
    failing_since: float | None = None  # since when every commit fails (monotonic)
    queued: int = 0                   # frames waiting for a commit
    began: float | None = None        # when the commit under way began (monotonic)
    last_commit: float = field(default_factory=time.monotonic)


class Commit:
    def __init__(self, spool: Spool, ack: Callable, outcome: Callable[[str, str], None],
                 stored: Callable[[], None]):
        self.spool = spool
        self.ack = ack                # (link, frame): the frame is durable, tell its node
        self.outcome = outcome        # (node, spool outcome), for the status page
        self.stored = stored          # something new to publish
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.stats = CommitStats()
        self._error_logged = -1e9

    async def put(self, link, frame, records) -> None:
        """Waits while the queue is full: backpressure on the link."""
        await self.queue.put((link, frame, records))
        self.stats.queued = self.queue.qsize()

    async def run(self) -> None:
        """Group commit: everything waiting is written in one transaction, then acked."""
        st = self.stats
        while True:
            batch = [await self.queue.get()]
            while len(batch) < COMMIT_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            st.queued, st.began = self.queue.qsize(), time.monotonic()
            outcomes = await self._store(batch)
            for i, (link, frame, _) in enumerate(batch):
                if i < len(outcomes):
                    self.ack(link, frame)
                    self.outcome(frame.node, outcomes[i])
                self.queue.task_done()
            st.queued = self.queue.qsize()
            st.last_commit = time.monotonic()
            st.began = None
            st.stored += outcomes.count(STORED)
            st.duplicates += outcomes.count(DUPLICATE)
            st.stale += outcomes.count(STALE)  # acked, not stored
            if STORED in outcomes:
                self.stored()
            if not outcomes:
                await asyncio.sleep(1)

    async def _store(self, batch) -> list[str]:
        """One outcome per frame; none when nothing may be acked."""
        st = self.stats
        try:
            entries = [spool_entry(frame, records) for _, frame, records in batch]
            outcomes = await asyncio.to_thread(self.spool.store, entries)
            st.failing_since = None
            return outcomes
        except SpoolDamaged as exc:  # set aside and salvaged: the nodes resend to the new one
            log.error("spool: damaged in a commit, %d frames not acked: %s", len(batch), exc)
        except SpoolFull as exc:
            st.spool_full += 1
            st.spool_full_at = time.monotonic()
            log.error("spool: disk full, %d frames not acked: %s", len(batch), exc)
        except Exception:  # a bug must not end the gateway: not acked, the nodes resend
            st.errors += 1
            st.failing_since = st.failing_since or time.monotonic()
            if time.monotonic() - self._error_logged > 60:
                self._error_logged = time.monotonic()
                log.exception("commit of %d frames failed (%d failed commits so far); "
                              "not acked", len(batch), st.errors)
        return []
