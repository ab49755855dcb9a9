"""The simulated day (issue 3, node runtime): an energy node (the real firmware in the unix port,
60 s intervals) on the emulated board's accelerated clock, its serial link unplugged for a stretch
in the middle of the run, the real gateway in-process and a real mosquitto behind it. Every
interval the node produced reaches the broker, the backlog after the outage oldest first, nothing
dropped from the node's flash; the run reports the node's heap peak (its health records'
heap_peak) and the host time taken.

The suite runs a shortened day; the whole one is a script:

    .venv/bin/python hil_tests/test_node_day.py --hours 24 --outage 6 --speed 240

`--target qemu` runs the energy node on the 32-bit QEMU board instead, its modules in the
flash's ROMFS as on a production board (tools/qemu.QemuNode), in `--heap 64k`:

    .venv/bin/python hil_tests/test_node_day.py --target qemu --heap 64k --speed 60

That board's console is its link, so it writes no trace of what it emitted: what it produced is
read from the gateway's spool and the broker (every interval of the day, none missing, until its health says its flash holds
no backlog).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rigs.gateway import wait_until  # noqa: E402
from rigs.node import Rig, gaps, series  # noqa: E402

pytestmark = pytest.mark.alone  # an accelerated board clock: a loaded host shifts it

INTERVAL = 60
DATA = {"energy": "p1_crc_errors", "noise": "LAeq", "traffic": "lane1/count"}


def simulated_day(work: Path, broker_port: int, hours: float, outage: float, speed: float,
                  kind: str = "energy", heap: str = "128k", target: str = "unix") -> dict:
    """Run `hours` of board time at `speed`, the link unplugged for `outage` hours in the
    middle; check delivery; the figures."""
    began = time.monotonic()
    h0 = time.time()
    board = {}
    if target == "qemu":
        from sensorcity.tools.sim.qemu import QemuNode
        board = {"emulated": QemuNode}
        speed = int(speed)
    rig = Rig(work, broker_port, kind=kind, interval=INTERVAL, speed=speed, heap=heap, **board,
              # the gateway lives in the simulated day too: its time frames keep the board's
              # pace (a wall-clock gateway would step the board back hours at each hello)
              clock=lambda: h0 + (time.time() - h0) * speed,
              # the acks' host round trip (a few ms, an fsync) is `speed` times longer on the
              # board's clock: give it 100 ms of the host's before a frame goes again
              node_settings={"ack_timeout_ms": int(speed * 100), "min_speed": 20.0})
    try:
        host = 3600 / speed  # host seconds per simulated hour
        t0 = time.monotonic()
        time.sleep(max(0.0, t0 + (hours - outage) / 2 * host - time.monotonic()))
        rig.cable.connected.clear()
        out_at = time.time()
        out_board = (time.monotonic() - t0) * speed / 3600
        time.sleep(outage * host)
        rig.cable.connected.set()
        back_at = time.time()
        time.sleep(max(0.0, t0 + hours * host - time.monotonic()))
        drain = time.monotonic()
        if target == "qemu":
            ts, produced = _delivered_from_qemu(rig, timeout=max(180.0, 0.2 * hours * host))
        else:
            produced = rig.produced()
            rig.wait_delivered(produced, timeout=max(180.0, 0.2 * hours * host))
            ts = series(produced, DATA[kind])
        drained = time.monotonic() - drain
        health = rig.health()
        resets = rig.board.log().count("watchdog reset")
        arrival = [t for (n, t) in list(rig.stats.records) if n == rig.base + DATA[kind]]
        stored = rig.gateway.stored_order(rig.node_id)
        # intervals the node's clock was stepped over carry clock_leapt alone (docs/records.md)
        leapt = sorted(t for (n, t) in list(rig.stats.records) if n == rig.base + "clock_leapt")
        c = rig.finish()
    finally:
        rig.close()
    return {
        "kind": kind, "target": target, "speed": speed, "heap": heap, "hours": hours, "outage_hours": outage,
        "intervals": len(ts), "simulated_hours": (ts[-1] - ts[0] + INTERVAL) / 3600 if ts else 0,
        # starts with no record at all: a leapt interval is not a hole
        "gaps": gaps(sorted(set(ts) | set(leapt)), INTERVAL),
        "gaps_at_h": [round((a - ts[0]) / 3600, 2)
                      for a, _ in gaps(sorted(set(ts) | set(leapt)), INTERVAL)],
        "leapt": len(leapt), "leapt_at_h": [round((t - ts[0]) / 3600, 2) for t in leapt[:5]],
        "frames_produced": len(produced),
        "arrival_in_order": arrival == sorted(arrival), "arrival": arrival, "ts": ts,
        "broker_late": lateness(arrival), "broker_disorder": disorder(arrival, INTERVAL),
        "spool_late": lateness(stored), "spool_disorder": disorder(stored, 1),
        "heap_peak": max(h.get("heap_peak") or 0 for h in health),
        "heap_free_min": min(h.get("heap_free") or 1 << 30 for h in health),
        "store_depth_max": max(h.get("store_depth") or 0 for h in health),
        "store_dropped": max(h.get("store_dropped") or 0 for h in health),
        "boots": sorted({h.get("boot_count") for h in health}), "watchdog_resets": resets,
        "link_resends": max(h.get("link_resends") or 0 for h in health),
        "duplicate_frames": c["duplicate_frames"], "broker_duplicates": c["broker_duplicates"],
        "rejected": {r: n for r, n in c["rejected"].items() if n},
        "outage_host_s": round(back_at - out_at, 1), "outage_at_h": round(out_board, 2),
        "drain_after_end_s": round(drained, 1), "run_s": round(time.monotonic() - began, 1),
    }


def lateness(xs: list) -> int:
    """How far the list is from ascending: the most items that came before one of it and are
    greater than it (0: in order)."""
    return max((sum(1 for y in xs[:i] if y > x) for i, x in enumerate(xs)), default=0)


def disorder(xs: list, unit: int) -> list:
    """The first places where the list goes back, as (index, from, to) in units."""
    base = min(xs, default=0)
    return [(i, (a - base) // unit, (b - base) // unit)
            for i, (a, b) in enumerate(zip(xs, xs[1:])) if b < a][:6]


def _delivered_from_qemu(rig: Rig, timeout: float) -> tuple[list[int], list]:
    """The data series' interval starts at the broker once the node has caught up: the series
    reaches the board's clock (less the intervals still closing) and the node's latest health
    record says its flash holds no backlog. Also the spool's sequence numbers of data frames,
    which stand for the frames produced (hellos take sequence numbers too, so they have holes)."""
    name = rig.base + DATA[rig.config.stem]
    end = rig.board.node.board_time()
    state = {}

    def caught_up():
        ts = sorted(t for (n, t) in list(rig.stats.records) if n == name)
        health = rig.health()
        state.update(ts=ts, depth=health[-1].get("store_depth") if health else None)
        return ts and ts[-1] >= end - 3 * INTERVAL and state["depth"] is not None \
            and state["depth"] <= 2
    try:
        wait_until(caught_up, timeout, "the QEMU node's backlog to reach the broker")
    except AssertionError as exc:
        ts = state.get("ts") or [0]
        raise AssertionError(f"{exc}: series ends {ts[-1] - end:+.0f} s from the board's clock, "
                             f"store depth {state.get('depth')}, "
                             f"gaps {gaps(ts, INTERVAL)[:5]}") from None
    return state["ts"], sorted(rig.gateway.seen(rig.node_id))


def check(r: dict) -> None:
    ts = r["ts"]
    want = r["hours"] * 3600 / INTERVAL
    assert len(ts) >= 0.9 * want, (len(ts), want)  # the board's clock kept its pace
    # every interval the node closed reached the broker (Rig.wait_delivered), each once; the
    # node sends its backlog oldest first (after a timeout one frame probes the link, so
    # a cable back mid-window cuts no frame out of order, docs/node.md "Sending") and the gateway
    # stores and publishes in the order it took them
    assert r["spool_late"] == 0, ("the spool took the backlog out of order", r["spool_disorder"])
    assert r["arrival_in_order"], ("the backlog did not arrive oldest first", r["broker_disorder"])
    assert r["arrival"][:len(ts)] == ts
    # No interval left out, but for one: at 240x a 250 ms pause of the host (the machine is
    # shared; 500 ms at the suite's 120x) is a whole 60 s interval on the board's clock, and the energy pipeline, which looks
    # at the clock every 200 ms, then closes two intervals as one. Seen once at boot in a 24 h
    # run; the drain's flash writes did it too until the sender yielded between releases.
    assert len(r["gaps"]) <= 1 and all(b - a == 2 * INTERVAL for a, b in r["gaps"]), r["gaps"]
    assert r["store_dropped"] == 0 and r["boots"] == [1] and r["watchdog_resets"] == 0
    assert r["store_depth_max"] >= 2 * r["outage_hours"] * 3600 / INTERVAL * 0.8
    assert r["broker_duplicates"] == 0


@pytest.fixture
def ram_dir(tmp_path):
    """The board's flash image, its node log and the gateway's spool in RAM (tmpfs) where there
    is one: at 120x a 100 ms stall of a shared host's disk is 12 s on the board's clock."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="sensorcity-day-") as d:
        yield Path(d)


@pytest.mark.fault
@pytest.mark.mosquitto
@pytest.mark.unixport
def test_shortened_day_with_an_outage(mosquitto, ram_dir):
    # 2 simulated hours with a 40 min outage in the middle at 120x: 60 s of the host's. At 240x
    # a 250 ms pause of a loaded host (seen, the suite's files running beside it or not) is a
    # whole 60 s interval on the board's clock, and the energy pipeline's 200 ms loop then
    # closes two intervals as one; at 120x it takes a 500 ms pause
    r = simulated_day(ram_dir, mosquitto, hours=2, outage=2 / 3, speed=120)
    print("day:", json.dumps({k: v for k, v in r.items() if k not in ("arrival", "ts")}))
    check(r)


@pytest.mark.fault
@pytest.mark.mosquitto
@pytest.mark.qemu
@pytest.mark.unixport  # the unix port writes the QEMU board's flash image
def test_shortened_day_in_64k_on_the_qemu_board(mosquitto, ram_dir):
    # the 32-bit board, its modules in the ROMFS: 2 simulated hours with a 40 min outage in
    # 64 KiB of heap at 60x (2 min of the host's; at 120x the emulated CPU is saturated and the
    # energy pipeline closes two intervals as one)
    r = simulated_day(ram_dir, mosquitto, hours=2, outage=2 / 3, speed=60, heap="64k",
                      target="qemu")
    print("day:", json.dumps({k: v for k, v in r.items() if k not in ("arrival", "ts")}))
    check(r)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=24)
    p.add_argument("--outage", type=float, default=6)
    p.add_argument("--speed", type=float, default=240)
    p.add_argument("--kind", choices=sorted(DATA), default="energy")
    p.add_argument("--heap", default="128k")
    p.add_argument("--target", choices=["unix", "qemu"], default="unix")
    p.add_argument("--work", help="keep the run's files (node log, spool) in this new folder")
    a = p.parse_args(argv)
    from rigs.mosquitto import Mosquitto
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mq")
        try:
            work = Path(a.work) if a.work else Path(tmp) / "day"
            work.mkdir()
            r = simulated_day(work, broker.port, a.hours, a.outage, a.speed, a.kind, a.heap,
                              a.target)
        finally:
            broker.stop()
    print(json.dumps({k: v for k, v in r.items() if k not in ("arrival", "ts")}, indent=1))
    check(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
