"""What the readers (/healthz, the metric `healthy`, the status page, systemd's watchdog) make
of the stages' stats objects: whether the gateway is healthy, and the rejections by reason.
Nothing here counts or changes a stage's state; every stage owns its own."""

from __future__ import annotations

import asyncio
import time

from . import notify
from .commit import CommitStats
from .ingest import IngestStats
from .uplink import UplinkStats
from .verify import REASONS, VerifyStats

PIPELINE_STALL = 10.0   # frames waiting this long without a commit: the pipeline is stuck


class Verdict:
    def __init__(self, ingest: IngestStats, verify: VerifyStats, commit: CommitStats,
                 uplink: UplinkStats, spool, stall: float):
        self.ingest = ingest
        self.verify = verify
        self.commit = commit
        self.uplink = uplink
        self.spool = spool              # its stats() and, when damaged, the alarm's text
        self.stall = stall              # seconds the uplink may go without progress
        self.pipeline_stall = PIPELINE_STALL

    def rejections(self) -> dict[str, int]:
        """Frames rejected, by reason, in the operator's order: each counted by the stage that
        saw it (a run too long for a frame by ingest, a frame below its floor by commit)."""
        own = {"overflow": self.ingest.overflows, "stale": self.commit.stale}
        out = {r: own.get(r, self.verify.rejected.get(r, 0)) for r in REASONS}
        for reason, n in self.verify.rejected.items():  # none today; kept if one is added
            out.setdefault(reason, n)
        return out

    def pipeline_alive(self) -> bool:
        """Frames that arrive get committed: no commit takes longer than the stall limit, and
        frames do not wait that long for the committer to come back for them."""
        c, now = self.commit, time.monotonic()
        if c.failing_since is not None and now - c.failing_since >= self.pipeline_stall:
            return False  # every commit fails (a card remounted read-only): let systemd restart
        if c.began is not None:
            return now - c.began < self.pipeline_stall
        return not c.queued or now - c.last_commit < self.pipeline_stall

    def health(self) -> tuple[bool, str]:
        c = self.commit
        if c.failing_since is not None:
            return False, (f"spool: commits fail ({c.errors} so far), frames are not "
                           f"acked; see the log")
        if not self.pipeline_alive():
            return False, (f"pipeline stalled: a commit or {c.queued} queued frames "
                           f"wait for the spool")
        if time.monotonic() - c.spool_full_at < self.pipeline_stall:
            return False, "spool: the disk is full, frames are not acked"
        spool = self.spool.stats()
        silent = time.monotonic() - self.uplink.last_progress
        if silent > self.stall and spool.rows:
            state = "connected" if self.uplink.connected else "not connected"
            return False, (f"uplink stalled: {spool.rows} frames spooled, none published for "
                           f"{silent:.0f} s ({state})")
        damage = spool.damaged and self.spool.damage()  # degraded, still acking and
        if damage:                                      # publishing: an operator's alarm
            return False, damage
        return True, "ok"

    async def watchdog(self, period: float) -> None:
        """systemd's watchdog is fed only while the pipeline progresses; an unreachable broker
        does not stop it (a restart would not help, the spool holds the data)."""
        while True:
            if self.pipeline_alive():
                notify.notify("WATCHDOG=1")
            await asyncio.sleep(period)
