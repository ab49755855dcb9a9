"""The gateway's state as one JSON-able dict: what the status page and its event stream show.

`snapshot(gw, spool)` is the contract the page rests on; the stages behind it may change.
`spool` is `spool_state(gw.spool)`, read apart (in a worker thread) because the spool's lock
may be held by a long commit and the event loop must not wait for it.

No secret is read here: brokers appear as host:port (never user or password), nodes by their
registry's public fields (never their keys), the page token nowhere."""

from __future__ import annotations

import functools
import time
from importlib import metadata


@functools.cache
def version() -> str:
    try:
        return metadata.version("sensorcity")
    except metadata.PackageNotFoundError:
        return "unknown"


def spool_state(spool) -> dict:
    """The spool's counters and the age of its oldest waiting frame (both O(1) queries)."""
    st = spool.stats()
    oldest = spool.oldest(1)
    return {"frames": st.rows, "readings": st.readings,
            "oldest_received": oldest[0].received if oldest else None,
            "used_bytes": st.used_bytes, "budget_bytes": st.budget_bytes,
            "dropped_frames": st.dropped_frames, "dropped_readings": st.dropped_readings,
            "dropped_intervals": st.dropped_intervals}


def _pending(commands, now_mono: float) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in commands.pending:
        out.setdefault(p.node, []).append({
            "op": p.body.get("op"), "value": p.body.get("value"), "attempts": len(p.seqs),
            "waiting_s": round(now_mono - p.received, 1)})
    return out


def snapshot(gw, spool: dict, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    up = gw.uplink.stats
    ok, why = gw.verdict.health()
    oldest = spool.get("oldest_received")
    pending = _pending(gw.commands, time.monotonic())
    nodes = gw.nodes.view(now)
    for row in nodes:
        row["pending"] = pending.get(row["node"], [])
    rejected = gw.verdict.rejections()
    return {
        "now": now,
        "gateway": {"id": gw.cfg.gateway_id, "version": version(), "started": gw.started,
                    "uptime_s": now - gw.started, "healthy": ok, "health": why},
        "uplink": {
            "broker": up.broker if up.connected else None,
            "brokers": list(up.brokers),
            "tls": up.tls if up.connected else None,
            "connected": up.connected,
            "connected_since": up.connected_at if up.connected else None,
            "last_puback": up.last_puback, "in_flight": up.in_flight,
            "batches": up.published_batches, "readings": up.published_readings,
            "failures": up.failures, "last_error": up.last_error,
            "last_error_at": up.last_error_at},
        "spool": dict(spool, oldest_age_s=None if oldest is None else max(0.0, now - oldest)),
        "rejections": {"total": sum(rejected.values()), "by_reason": rejected,
                       "recent": list(reversed(gw.nodes.recent))},
        "nodes": nodes,
    }
