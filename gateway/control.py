"""The last control-frame (hello, ack) seq accepted from each node, kept in the spool, so that a
restarted gateway still refuses a replay of one as `replayed` and no replay moves a node's
downlink (docs/protocol.md, threat model). A control frame is acted on only once its seq is
durable; it is written by a worker thread, never on the event loop, and the seqs of every frame
that arrives meanwhile go in that transaction or the next one."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("sensorcity.gateway.control")


class ControlSeqs:
    def __init__(self, spool):
        self.spool = spool
        self.durable: dict[str, int] = spool.control_seqs()
        self.wanted: dict[str, int] = {}       # accepted, still to write
        self.batch: asyncio.Future | None = None  # done when `wanted` is written
        self.writer: asyncio.Task | None = None
        self.failures = 0                     # transactions the spool refused (logged)
        self.failed_at = -1e9

    async def save(self, node: str, seq: int) -> None:
        """Returns once seq is on disk (or its write failed: then in memory only, logged)."""
        if seq <= self.durable.get(node, -1):
            return
        self.wanted[node] = max(seq, self.wanted.get(node, -1))
        loop = asyncio.get_running_loop()
        if self.batch is None:
            self.batch = loop.create_future()
        batch = self.batch
        if self.writer is None or self.writer.done():
            self.writer = loop.create_task(self._write(), name="control seqs")
        await asyncio.shield(batch)

    async def _write(self) -> None:
        try:
            while self.wanted:
                want, self.wanted = self.wanted, {}
                batch, self.batch = self.batch, None
                try:
                    await asyncio.to_thread(self.spool.save_control, want)
                except Exception as exc:  # a full or failing disk (or a bug): go on, from memory
                    self.failures += 1
                    if time.monotonic() - self.failed_at > 60:
                        self.failed_at = time.monotonic()
                        log.error("control seqs of %d nodes not saved (%d failures): a restart "
                                  "now would forget them: %s", len(want), self.failures, exc)
                else:
                    for node, seq in want.items():
                        self.durable[node] = max(self.durable.get(node, -1), seq)
                finally:
                    if batch is not None and not batch.done():
                        batch.set_result(None)
        finally:  # cancelled (a stop): nobody waits for a batch that will not be written
            if self.batch is not None and not self.batch.done():
                self.batch.set_result(None)
                self.batch = None
