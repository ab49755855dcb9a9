"""Verify: CRC, the node's tag, sequence and schema. Every rejection is counted by its reason."""

from __future__ import annotations

import logging
from collections import Counter

import cbor2

from ..protocol import frames, senml
from .registry import Registry

log = logging.getLogger("sensorcity.gateway.verify")
# `stale`: a data frame at or below its node's floor in the spool (older than the de-dup window),
# acked so the node moves on, never stored twice (spool.py, docs/durability.md)
REASONS = ("cobs", "short", "too-long", "crc", "schema", "unknown-node", "tag", "replayed",
           "name", "overflow", "stale")


class Verifier:
    REASONS = REASONS

    def __init__(self, registry: Registry):
        self.registry = registry
        self.rejected: Counter[str] = Counter({r: 0 for r in REASONS})
        self.accepted = 0
        self.control_seq: dict[str, int] = {}
        self.last_reason = ""  # the latest rejection's, for the status page
        self.epochs: dict[str, int] = {}  # the epoch of each node's last accepted hello
        self.floors: dict[str, int] = {}  # the first sequence floor handed to that epoch

    def reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        self.last_reason = reason
        log.debug("rejected frame: %s %s", reason, detail)

    def check(self, cobs: bytes) -> tuple[frames.Frame, list[senml.Record]] | None:
        """A verified frame and, for data frames, its resolved records; None if rejected."""
        try:
            frame = frames.decode(cobs, self.registry.key_for)
        except frames.FrameError as exc:
            self.reject(exc.reason, str(exc))
            return None
        records: list[senml.Record] = []
        if frame.kind == frames.DATA:
            entry = self.registry.nodes[frame.node]
            try:
                records = senml.resolve(frame.body)
            except senml.SenMLError as exc:
                self.reject("schema", f"{frame.node}: {exc}")
                return None
            if any(not r.n.startswith(entry.base_name) for r in records):
                self.reject("name", f"{frame.node}: record outside its base name")
                return None
        elif frame.kind in (frames.HELLO, frames.ACK):
            # control frames are never resent: an old sequence number is a replay
            fresh = self.new_epoch(frame)
            if frame.seq <= self.control_seq.get(frame.node, -1) and not fresh:
                self.reject("replayed", f"{frame.node} seq {frame.seq}")
                return None
            self.control_seq[frame.node] = max(frame.seq, self.control_seq.get(frame.node, -1))
        self.accepted += 1
        return frame, records

    def new_epoch(self, frame: frames.Frame) -> bool:
        """A hello from a node whose sequence state was lost (docs/protocol.md, "Re-flashed
        nodes"): an epoch other than the last one's, or this epoch's before it took its floor.
        Accepting a captured one only makes us hand that epoch a floor again: harmless."""
        epoch = frames.hello_epoch(frame)
        if epoch is None:
            return False
        if epoch != self.epochs.get(frame.node):
            self.epochs[frame.node] = epoch
            self.floors.pop(frame.node, None)
            return True
        return frame.seq < self.floors.get(frame.node, 0)


def encode_records(records: list[senml.Record]) -> bytes:
    return cbor2.dumps(senml.pack(records))


def spool_entry(frame: frames.Frame, records: list[senml.Record]):
    """A verified data frame as Spool.store takes it: node, seq, interval time (the earliest
    record's: what the overflow policy drops by), resolved pack, readings."""
    return (frame.node, frame.seq, min(r.t for r in records), encode_records(records),
            len(records))
