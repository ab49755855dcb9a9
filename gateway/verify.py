"""Verify: CRC, the node's tag, sequence and schema. Every rejection is counted by its reason."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import cbor2

from ..protocol import frames, senml
from .registry import Registry

log = logging.getLogger("sensorcity.gateway.verify")
# Every reason a frame is rejected for, in the order the operator sees them. Verify counts its
# own; `overflow` (a run longer than a frame on a link) is the ingest stage's count, `stale` (a
# data frame at or below its node's floor in the spool, older than the de-dup window, acked so
# the node moves on, never stored twice: spool.py, docs/durability.md) the commit stage's.
REASONS = ("cobs", "short", "too-long", "crc", "schema", "unknown-node", "tag", "replayed",
           "name", "overflow", "stale")
VERIFY_REASONS = tuple(r for r in REASONS if r not in ("overflow", "stale"))


# Bounds of what a node may send (protocol/link.cddl): anything outside is `schema`, so nothing
# a key holder puts in a frame reaches SQLite, a batch or the city's store out of range.
RECORDS_MAX = 128          # records in one data frame
BASE_NAME_MAX = senml.BASE_NAME_MAX  # bytes of a base name (bn)
QUANTITY_MAX = 32          # bytes of a record's name (n)
UNIT_MAX = 16              # bytes of a unit (u)
VALUE_MAX = 2**53          # |v|: a double holds every integer up to it (the city's store)
TIME_MAX = 2**32 - 1       # bt, t and their sum: epoch seconds (year 2106)
INTERVAL_MAX = 86400       # hello: seconds
FW_MAX = 32                # hello: bytes of the firmware version
RECORD_LABELS = {-2, -3, 0, 1, 2, 6}   # bn, bt, n, u, v, t: what link.cddl allows a record


def _text(x, lo: int, hi: int) -> bool:
    return type(x) is str and lo <= len(x.encode("utf-8", "replace")) <= hi


def _number(x, bound: float) -> bool:
    if isinstance(x, Decimal):
        x = float(x) if x.is_finite() else math.nan
    if type(x) not in (int, float):
        return False
    try:
        return abs(x) <= bound
    except OverflowError:
        return False


def _uint(x, hi: int, lo: int = 0) -> bool:
    return type(x) is int and lo <= x <= hi


def pack_error(pack) -> str | None:
    """Why a data frame's body is outside link.cddl's senml-pack and the bounds above, or None."""
    if type(pack) is not list or not 1 <= len(pack) <= RECORDS_MAX:
        return f"a pack of 1..{RECORDS_MAX} records"
    for rec in pack:
        if type(rec) is not dict or not set(rec) <= RECORD_LABELS or 0 not in rec \
                or 2 not in rec:
            return "a record is a map of bn, bt, n, u, v, t with n and v"
        if not (_text(rec[0], 1, QUANTITY_MAX) and _number(rec[2], VALUE_MAX)
                and (-2 not in rec or _text(rec[-2], 1, BASE_NAME_MAX))
                and (1 not in rec or _text(rec[1], 1, UNIT_MAX))
                and (-3 not in rec or _number(rec[-3], TIME_MAX))
                and (6 not in rec or _number(rec[6], TIME_MAX))):
            return "a record field out of its bounds"
    return None


def hello_error(hello) -> str | None:
    """Why a hello is outside link.cddl (fields it does not name are left to newer firmware)."""
    if type(hello) is not dict:
        return "hello is not a map"
    if not (_text(hello.get("fw"), 1, FW_MAX) and _uint(hello.get("boot"), frames.SEQ_MAX)
            and hello.get("kind") in ("noise", "energy", "traffic")
            and _text(hello.get("bn"), 1, BASE_NAME_MAX)
            and _uint(hello.get("interval"), INTERVAL_MAX, 1)
            and ("epoch" not in hello or _uint(hello["epoch"], frames.EPOCH_MAX))):
        return "hello field missing or out of its bounds"
    return None


@dataclass(slots=True)
class VerifyStats:
    accepted: int = 0
    rejected: Counter = field(default_factory=lambda: Counter(dict.fromkeys(VERIFY_REASONS, 0)))
    last_reason: str = ""       # the latest rejection's, for the status page
    floors_refused: int = 0     # hellos no floor could answer: the id's numbers are spent


class Verifier:
    """The verify stage, and the sequence state it judges by: per node, the highest seq
    accepted (control frames: durable in the spool, gateway/control.py), and each epoch's."""
    REASONS = VERIFY_REASONS

    def __init__(self, registry: Registry, control: dict[str, int] | None = None,
                 newest: dict[str, int] | None = None):
        self.registry = registry
        self.stats = VerifyStats()
        self.control_seq: dict[str, int] = dict(control or {})  # the last control frame's seq
        # the highest seq accepted, of any kind (routes and re-flash floors follow it): from
        # the spool once at start, then in memory, so that no hello waits for the spool's lock
        self.newest: dict[str, int] = dict(newest or {})
        for node, seq in self.control_seq.items():
            self.newest[node] = max(seq, self.newest.get(node, -1))
        self.epochs: dict[str, int] = {}  # the epoch of each node's last accepted hello
        self.floors: dict[str, int] = {}  # the first sequence floor handed to that epoch
        self.hellos: dict[str, int] = {}  # the seq of that epoch's last accepted hello

    def reject(self, reason: str, detail: str = "") -> None:
        self.stats.rejected[reason] += 1
        self.stats.last_reason = reason
        log.debug("rejected frame: %s %s", reason, detail)

    def advance(self, frame: frames.Frame) -> bool:
        """True when the frame is newer than any the node sent before (no replay): only such
        a frame may move the node's downlink."""
        if frame.seq <= self.newest.get(frame.node, -1):
            return False
        self.newest[frame.node] = frame.seq
        return True

    def floor(self, frame: frames.Frame) -> int | None:
        """The floor a hello's epoch must number above (docs/protocol.md, "Re-flashed nodes"),
        or None: no epoch, or the id's numbers are spent (counted, logged)."""
        if frames.hello_epoch(frame) is None:
            return None
        node = frame.node
        floor = max(self.newest.get(node, -1), self.control_seq.get(node, -1)) + 1
        if floor >= frames.FLOOR_MAX:  # the id's numbers are spent (a key holder's seq near
            # 2^32): no floor link.cddl allows is above them; the node must be re-provisioned
            self.stats.floors_refused += 1
            log.error("node %s: its numbers are spent up to %d, no floor can be sent: "
                      "re-provision the board under a new node id", node, floor - 1)
            return None
        self.floors.setdefault(node, floor)  # the epoch's first: below it, a hello is the
        # node still waiting for its floor (new_epoch)
        return floor

    def check(self, cobs: bytes) -> tuple[frames.Frame, list[senml.Record]] | None:
        """A verified frame and, for data frames, its resolved records; None if rejected."""
        try:
            frame = frames.decode(cobs, self.registry.key_for)
        except frames.FrameError as exc:
            self.reject(exc.reason, str(exc))
            return None
        records: list[senml.Record] = []
        if frame.kind in (frames.TIME, frames.CMD):
            self.reject("schema", f"{frame.node}: a gateway's frame kind from a node")
            return None
        if frame.kind == frames.DATA:
            entry = self.registry.nodes[frame.node]
            try:
                why = pack_error(frame.body)
                if why:
                    raise senml.SenMLError(why)
                records = senml.resolve(frame.body)
                if any(not 0 <= r.t <= TIME_MAX for r in records):
                    raise senml.SenMLError(f"a record's time outside 0..{TIME_MAX}")
            except senml.SenMLError as exc:
                self.reject("schema", f"{frame.node}: {exc}")
                return None
            if any(not r.n.startswith(entry.base_name) for r in records):
                self.reject("name", f"{frame.node}: record outside its base name")
                return None
        elif frame.kind in (frames.HELLO, frames.ACK):
            why = hello_error(frame.body) if frame.kind == frames.HELLO else \
                None if _uint(frame.body, frames.SEQ_MAX) else "acked seq out of its bounds"
            if not why and frames.hello_epoch(frame) is not None and \
                    frame.seq >= frames.FLOOR_MAX:
                why = "a hello with an epoch at a seq no floor can go above (link.cddl)"
            if why:
                self.reject("schema", f"{frame.node}: {why}")
                return None
            # control frames are never resent: an old sequence number is a replay
            fresh = self.new_epoch(frame)
            if frame.seq <= self.control_seq.get(frame.node, -1) and not fresh:
                self.reject("replayed", f"{frame.node} seq {frame.seq}")
                return None
            self.control_seq[frame.node] = max(frame.seq, self.control_seq.get(frame.node, -1))
            if frame.kind == frames.HELLO:
                self.hellos[frame.node] = frame.seq
        self.stats.accepted += 1
        return frame, records

    def new_epoch(self, frame: frames.Frame) -> bool:
        """A hello from a node whose sequence state was lost (docs/protocol.md, "Re-flashed
        nodes"): an epoch other than the last one's, or this epoch's before it took its floor,
        above this epoch's last hello (a pending node's numbers go up too: a captured hello is
        taken once, not on every replay). Accepting a captured old epoch's hello only makes us
        hand that epoch a floor again: harmless."""
        epoch = frames.hello_epoch(frame)
        if epoch is None:
            return False
        if epoch != self.epochs.get(frame.node):
            self.epochs[frame.node] = epoch
            self.floors.pop(frame.node, None)
            self.hellos.pop(frame.node, None)
            return True
        return self.hellos.get(frame.node, -1) < frame.seq < self.floors.get(frame.node, 0)


def encode_records(records: list[senml.Record]) -> bytes:
    return cbor2.dumps(senml.pack(records))


def spool_entry(frame: frames.Frame, records: list[senml.Record]):
    """A verified data frame as Spool.store takes it: node, seq, interval time (the earliest
    record's: what the overflow policy drops by), resolved pack, readings."""
    return (frame.node, frame.seq, min(r.t for r in records), encode_records(records),
            len(records))
