"""What the gateway knows of each registered node, for the status page: its link, the last frame
seen, frames in the last hour, duplicates and rejections, its latest health and readings. Fed by
one-line calls from the service's hooks (frame, hello, reject, outcome); read by status.snapshot.

Bounded: one row per registered node (a rejected frame claiming an unregistered name adds no
row), at most QUANTITIES_MAX quantities per node, 60 one-minute buckets per node, RECENT_MAX
recent rejections. Nothing here holds a key: rows are built from the registry's public fields."""

from __future__ import annotations

import math
import time
from collections import deque

import cbor2

from ..protocol import frames

# the health quantities a node sends each interval under its base name (firmware/node.py health)
HEALTH = ("uptime", "heap_free", "heap_peak", "link_resends", "rx_rejects", "store_depth",
          "store_dropped", "boot_count", "clock_steps", "safe_mode")
DEFAULT_INTERVAL = 60       # the firmware's default, until a node says or shows otherwise
STALE_INTERVALS = 3         # a node is stale after this many intervals without a frame ...
STALE_MIN = 10.0            # ... and never sooner than this many seconds
TIMES_KEPT = 8              # distinct interval starts kept to measure a node's interval
QUANTITIES_MAX = 64
RECENT_MAX = 10
NAME_MAX = 64               # a claimed node name is shown cut to this


def claimed_node(cobs: bytes) -> str | None:
    """The node field of a frame whose CRC holds, unverified (a rejected frame's claim), or None
    when the frame is too broken to name one."""
    try:
        item = cbor2.loads(frames.check_crc(cobs))
    except Exception:  # noqa: BLE001 (any broken frame: cbor2 raises several types)
        return None
    if isinstance(item, list) and len(item) == 6 and isinstance(item[2], str):
        return item[2][:NAME_MAX]
    return None


def _shown(v):
    """A record value as JSON can carry it (bytes and strings cut short)."""
    if isinstance(v, bool) or isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)):
        return v
    if isinstance(v, bytes):
        return v[:32].hex()
    return str(v)[:NAME_MAX]


class NodeRow:
    __slots__ = ("node", "sensor", "base", "link", "last_seen", "seq", "duplicates", "rejects",
                 "health", "readings", "firmware", "hello_interval", "times", "minutes")

    def __init__(self, node: str, sensor: str, base: str):
        self.node, self.sensor, self.base = node, sensor, base
        self.link: str | None = None
        self.last_seen: float | None = None
        self.seq: int | None = None
        self.duplicates = 0
        self.rejects = 0
        self.health: dict[str, object] = {}
        self.readings: dict[str, tuple] = {}   # quantity -> (value, unit, record time)
        self.firmware: str | None = None
        self.hello_interval: int | None = None
        self.times: list[float] = []           # the last distinct interval starts, sorted
        self.minutes: list[list[int]] = []      # [minute, frames] for the last 60 minutes

    def interval(self) -> tuple[float, str]:
        """The node's interval and where it comes from: the smallest gap between the interval
        starts of its last data frames, else its hello's, else the firmware's default."""
        gaps = [b - a for a, b in zip(self.times, self.times[1:]) if b > a]
        if gaps:
            return min(gaps), "records"
        if self.hello_interval:
            return float(self.hello_interval), "hello"
        return float(DEFAULT_INTERVAL), "default"

    def frames_last_hour(self, now: float) -> int:
        minute = int(now // 60)
        return sum(n for m, n in self.minutes if minute - m < 60)

    def _count(self, now: float) -> None:
        minute = int(now // 60)
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1][1] += 1
        else:
            self.minutes.append([minute, 1])
            del self.minutes[:-60]


class NodeTable:
    def __init__(self, registry):
        self.rows = {nid: NodeRow(nid, e.sensor, e.base_name)
                     for nid, e in sorted(registry.nodes.items())}
        self.recent: deque = deque(maxlen=RECENT_MAX)

    def _seen(self, node: str, link: str | None, now: float) -> NodeRow | None:
        row = self.rows.get(node)
        if row is not None:
            row.last_seen = now
            if link:
                row.link = link
        return row

    def frame(self, node: str, link: str | None, seq: int, records, now: float | None = None):
        """A verified data frame: its records become the node's latest health and readings."""
        now = time.time() if now is None else now
        row = self._seen(node, link, now)
        if row is None:
            return
        row.seq = seq
        row._count(now)
        if records:
            t = min(r.t for r in records)
            if t not in row.times:
                row.times = sorted(row.times + [t])[-TIMES_KEPT:]
        for r in records:
            q = r.n[len(row.base):] if r.n.startswith(row.base) else r.n
            if q in HEALTH:
                if r.t >= row.health.get("t", 0):
                    row.health[q] = _shown(r.v)
                    row.health["t"] = r.t
            elif q in row.readings or len(row.readings) < QUANTITIES_MAX:
                if r.t >= row.readings.get(q, (None, None, 0))[2]:
                    row.readings[q] = (_shown(r.v), r.u, r.t)

    def hello(self, node: str, link: str | None, body, now: float | None = None):
        row = self._seen(node, link, time.time() if now is None else now)
        if row is None or not isinstance(body, dict):
            return
        if isinstance(body.get("fw"), str):
            row.firmware = body["fw"][:NAME_MAX]
        if type(body.get("interval")) is int and body["interval"] > 0:
            row.hello_interval = body["interval"]

    def seen(self, node: str, link: str | None, now: float | None = None):
        """Any other verified frame (an ack): the node is alive on that link."""
        self._seen(node, link, time.time() if now is None else now)

    def reject(self, reason: str, node: str | None, link: str | None,
               now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.recent.append({"reason": reason, "node": node, "link": link, "t": now})
        row = self.rows.get(node) if node else None
        if row is not None:
            row.rejects += 1

    def duplicate(self, node: str) -> None:
        row = self.rows.get(node)
        if row is not None:
            row.duplicates += 1

    def outcome(self, node: str, outcome: str, now: float | None = None) -> None:
        """A data frame's fate in the spool (spool.STORED, DUPLICATE or STALE)."""
        if outcome == "duplicate":
            self.duplicate(node)
        elif outcome == "stale":
            row = self.rows.get(node)
            self.reject("stale", node, row.link if row else None, now)

    def view(self, now: float) -> list[dict]:
        """The rows as JSON-able dicts, in node id order."""
        out = []
        for row in self.rows.values():
            interval, source = row.interval()
            age = None if row.last_seen is None else max(0.0, now - row.last_seen)
            stale_after = max(STALE_INTERVALS * interval, STALE_MIN)
            state = "never" if age is None else "stale" if age > stale_after else "ok"
            health = dict(row.health)
            out.append({
                "node": row.node, "sensor": row.sensor, "base_name": row.base,
                "link": row.link, "last_seen": row.last_seen, "age_s": age, "state": state,
                "interval_s": interval, "interval_from": source, "stale_after_s": stale_after,
                "seq": row.seq, "frames_hour": row.frames_last_hour(now),
                "duplicates": row.duplicates, "rejects": row.rejects,
                "firmware": row.firmware, "health": health,
                "readings": [{"q": q, "v": v, "u": u, "t": t}
                             for q, (v, u, t) in sorted(row.readings.items())],
            })
        return out
