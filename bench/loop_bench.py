"""The event loop's stalls for `make bench` (bench/run.py calls run()).

loop_stall_ms_p99_before/_after, loop_stall_ms_max_before/_after: 200 protocol-level nodes on
TCP say hello to an in-process gateway while every commit holds the spool's lock for
LOOP_HOLD_S (a slow SD card) and a feeder node keeps the committer busy; a task on the loop
sleeps 5 ms at a time and records how late it wakes (hil_tests/rigs/loopstall.py). "before" is
the old downlink (each TIME/CMD number a synchronous transaction on the loop,
spool.next_downlink_seq); "after" is gateway/downlink.py. Both in the same run, alternating.
"""

from __future__ import annotations

from pathlib import Path

from gateway_bench import summary
from rigs import loopstall

LOOP_NODES = 200
LOOP_HOLD_S = 2.0


def run(tmp: Path, runs: int) -> dict:
    got: dict = {}
    for i in range(runs):
        for variant in ("before", "after"):
            r = loopstall.storm(tmp / f"loop-{variant}-{i}", LOOP_NODES, LOOP_HOLD_S, variant)
            if len(r["times"]) != LOOP_NODES:
                raise RuntimeError(f"{variant}: {len(r['times'])} of {LOOP_NODES} nodes got TIME")
            p99, worst = loopstall.stall_ms(r["samples"])
            got.setdefault(f"loop_stall_ms_p99_{variant}", []).append(p99)
            got.setdefault(f"loop_stall_ms_max_{variant}", []).append(worst)
    out = {k: summary(v) for k, v in got.items()}
    out["loop_stall_nodes"] = LOOP_NODES
    out["loop_stall_commit_hold_ms"] = LOOP_HOLD_S * 1000
    return out
