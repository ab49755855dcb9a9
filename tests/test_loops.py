"""firmware/loops.py under the MicroPython unix port against hand formulas for synthetic vehicles.

CPython turns hand-given vehicles (lane, time the front reaches loop A, speed, length) into loop
edges, a MicroPython driver feeds them through EdgeRing and Loops the way the node runtime does
(take(t_end) once edges up to t_end + grace are in), and the records are compared with aggregates
computed here from the vehicles alone: classes from the given length, mean speed, v85 by
numpy.percentile(method="linear"), occupancy from the exact A-occupied spans.
"""
import json
import random

import numpy as np
import pytest

from conftest import run_micropython

L = 2.0        # loop length (m)
S = 4.0        # spacing of the loops' leading edges (m)
INTERVAL = 60_000_000
MASK30 = (1 << 30) - 1

DRIVER = r"""
import gc, sys, json
import loops

lanes, length, spacing, interval, offset, t_stop = [int(a) if i != 1 and i != 2 else float(a)
                                                   for i, a in enumerate(sys.argv[1:7])]
M = (1 << 30) - 1
ring = loops.EdgeRing(64)
lp = loops.Loops(lanes=lanes, loop_length=length, loop_spacing=spacing, start_us=offset & M)
idx = 0
end = interval


live = 0


def take():
    global idx, end, live
    lp.drain(ring)
    for name, unit, value in lp.take((end + offset) & M):
        print(json.dumps([idx, name, unit, value]))
    gc.collect()
    live = max(live, gc.mem_alloc())
    idx += 1
    end += interval


while True:
    line = sys.stdin.readline()
    if not line:
        break
    e = loops.parse_edge(line)
    if e is None:
        continue
    lane, loop, state, t = e
    while t >= end + lp.grace_us:  # the runtime's contract: take after the grace period
        take()
    ring.push(lane, loop, state, (t + offset) & M)  # ticks_us as a board's, wrapping at 2**30
    if len(ring) >= 32:
        lp.drain(ring)
while end <= t_stop:
    take()
print(json.dumps({"live_heap": live, "unmatched_a": lp.unmatched_a, "unmatched_b": lp.unmatched_b,
                  "chatter": lp.chatter, "double": lp.double, "implausible": lp.implausible,
                  "stopped": lp.stopped, "lost": lp.lost, "overflow": lp.overflow, "bad": lp.bad}))
"""


def vehicle_edges(lane, t0, kmh, length):
    """Edges (t in s, lane, loop, state) of a vehicle at constant speed, front at A at t0."""
    v = kmh / 3.6
    return [(t0, lane, 0, 1), (t0 + (length + L) / v, lane, 0, 0),
            (t0 + S / v, lane, 1, 1), (t0 + (S + L + length) / v, lane, 1, 0)]


def a_span(t0, kmh, length):
    return t0, t0 + (length + L) / (kmh / 3.6)


def to_csv(edges, letters=False):
    rows = ["t,lane,loop,state"]
    for t, lane, loop, state in sorted(edges):
        rows.append("%.6f,%d,%s,%d" % (t, lane, "AB"[loop] if letters else loop, state))
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    path = tmp_path_factory.mktemp("loops") / "driver.py"
    path.write_text(DRIVER)
    return path


def run(driver, edges, lanes, n_intervals, offset=0, letters=False, heap="256K"):
    proc = run_micropython(driver, lanes, L, S, INTERVAL, offset, n_intervals * INTERVAL,
                           stdin=to_csv(edges, letters), heap=heap)
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    got = {}
    for idx, name, unit, value in lines[:-1]:
        got[idx, name] = (unit, value)
    counters = lines[-1]
    peak = counters.pop("live_heap")  # the most heap in use after a collection, over all takes
    return got, counters, peak


def length_class(length):
    return 1 if length < 5.6 else 2 if length < 12.2 else 3


def expected(vehicles, lanes, n_intervals, extra_a_spans=()):
    """vehicles: counted ones (lane, t0, kmh, length); extra_a_spans: (lane, on, off) of A pulses
    that occupy the loop without being counted vehicles."""
    width = INTERVAL / 1e6
    mine = {}
    occ = {}
    for lane, t0, kmh, ln in vehicles:
        mine.setdefault((int(t0 // width), lane), []).append((kmh, ln))
    for lane, on, off in [(v[0], *a_span(*v[1:])) for v in vehicles] + list(extra_a_spans):
        for i in range(int(on // width), int(off // width) + 1):
            lo, hi = i * width, (i + 1) * width
            occ[i, lane] = occ.get((i, lane), 0.0) + max(0.0, min(off, hi) - max(on, lo))
    exp = {}
    for i in range(n_intervals):
        for k in range(1, lanes + 1):
            vs = mine.get((i, k), [])
            p = "lane%d/" % k
            exp[i, p + "count"] = ("count", len(vs))
            for c in (1, 2, 3):
                exp[i, p + "count_c%d" % c] = ("count", sum(length_class(ln) == c for _, ln in vs))
            if vs:
                speeds = [kmh for kmh, _ in vs]
                exp[i, p + "speed_mean"] = ("km/h", sum(speeds) / len(speeds))
                exp[i, p + "speed_v85"] = ("km/h", float(np.percentile(speeds, 85, method="linear")))
            exp[i, p + "occupancy"] = ("%", 100.0 * occ.get((i, k), 0.0) / width)
    return exp


def compare(got, exp):
    assert set(got) == set(exp), (sorted(set(got) ^ set(exp)))
    for key, (unit, value) in exp.items():
        gunit, gvalue = got[key]
        assert gunit == unit, key
        if unit == "count":
            assert gvalue == value, (key, gvalue, value)
        elif unit == "km/h":  # 1 us timestamps and float32 storage: well under 0.01 km/h
            assert abs(gvalue - value) < 0.01, (key, gvalue, value)
        else:
            assert abs(gvalue - value) < 1e-4, (key, gvalue, value)


def traffic(rng, lane, t_from, t_to, headway=(1.5, 9.0)):
    """A lane's free-flowing vehicles between t_from and t_to, none overlapping the next."""
    out = []
    t = t_from + rng.uniform(0.2, 2.0)
    while True:
        kmh = rng.uniform(12.0, 140.0)
        ln = rng.choice([rng.uniform(1.8, 5.4), rng.uniform(5.8, 12.0), rng.uniform(12.4, 25.0)])
        end = t + (S + L + ln) / (kmh / 3.6)
        if end >= t_to:
            return out
        out.append((lane, t, kmh, ln))
        t = end + rng.uniform(*headway)


def straddlers():
    # lane 1: on loop A across the first boundary (A from 59.8 s to 60.6 s); lane 2: reaches A
    # just before the second boundary, reaches B after it
    return [(1, 59.8, 20.0, 2.4), (2, 119.95, 50.0, 4.0)]


def borderline():
    # lengths 2 cm either side of the class limits (the measurement is good to about 0.1 mm)
    return [(1, 171.0, 60.0, 5.58), (1, 173.0, 60.0, 5.62), (1, 175.0, 60.0, 12.18),
            (1, 177.0, 60.0, 12.22)]


def scenario(seed):
    rng = random.Random(seed)
    vs = straddlers() + borderline()
    vs += traffic(rng, 1, 0.0, 59.0) + traffic(rng, 1, 61.5, 170.0)
    vs += traffic(rng, 2, 0.0, 119.0) + traffic(rng, 2, 121.0, 175.0)
    # 180-240 s: no vehicle on either lane
    return vs


def all_edges(vehicles):
    return [e for v in vehicles for e in vehicle_edges(*v)]


@pytest.mark.unixport
def test_two_lanes_random_traffic_and_boundaries(driver):
    vs = scenario(1)
    got, counters, _ = run(driver, all_edges(vs), lanes=2, n_intervals=4, letters=True)
    compare(got, expected(vs, 2, 4))
    assert got[3, "lane1/count"][1] == 0 and (3, "lane1/speed_mean") not in got
    assert not any(counters.values()), counters


@pytest.mark.unixport
def test_ticks_wrap_at_2_30_inside_a_vehicle(driver):
    vs = scenario(2)
    lane, t0, kmh, ln = sorted(v for v in vs if v[0] == 1 and 80 < v[1] < 120)[0]
    wrap_at = t0 + 0.5 * S / (kmh / 3.6)  # between its A and B onsets
    offset = (1 << 30) - round(wrap_at * 1e6)
    assert (round(t0 * 1e6) + offset) < (1 << 30) <= round((t0 + S / (kmh / 3.6)) * 1e6) + offset
    got, counters, _ = run(driver, all_edges(vs), lanes=2, n_intervals=4, offset=offset)
    compare(got, expected(vs, 2, 4))
    assert not any(counters.values()), counters


@pytest.mark.unixport
def test_faults_are_counted_and_survived(driver):
    rng = random.Random(3)
    good = traffic(rng, 1, 0.0, 238.0, headway=(3.0, 7.0))
    edges = []
    extra = []
    chatter = 0
    for i, (lane, t0, kmh, ln) in enumerate(good):
        edges += vehicle_edges(lane, t0, kmh, ln)
        if i % 3 == 0:  # contact bounce before the A and B onsets
            tb = t0 + S / (kmh / 3.6)
            edges += [(t0 - 0.003, 1, 0, 1), (t0 - 0.002, 1, 0, 0),
                      (tb - 0.004, 1, 1, 1), (tb - 0.0035, 1, 1, 0)]
            chatter += 2
        if i % 4 == 1:  # a 2 ms drop-out in the middle of the A pulse
            on, off = a_span(t0, kmh, ln)
            tm = (on + off) / 2
            edges += [(tm, 1, 0, 0), (tm + 0.002, 1, 0, 1)]
            chatter += 1
    # faults placed in the gaps after some vehicles: (gap start, kind)
    kinds = ["spike_a", "spike_b", "missing_b", "b_only", "too_fast", "double_on", "double_off"]
    counts = dict.fromkeys(["unmatched_a", "unmatched_b", "double", "implausible"], 0)
    for j, kind in enumerate(kinds * 2):
        lane, t0, kmh, ln = good[2 + 2 * j]
        nxt = good[3 + 2 * j][1]
        tf = t0 + (S + L + ln) / (kmh / 3.6) + 1.0  # a second after it left B
        assert tf + 2.0 < nxt
        if kind == "spike_a":
            edges += [(tf, 1, 0, 1), (tf + 0.004, 1, 0, 0)]
            chatter += 1
        elif kind == "spike_b":
            edges += [(tf, 1, 1, 1), (tf + 0.004, 1, 1, 0)]
            chatter += 1
        elif kind == "missing_b":  # a car whose B edges are lost: A pulse only
            edges += [(tf, 1, 0, 1), (tf + 0.4, 1, 0, 0)]
            extra.append((1, tf, tf + 0.4))
            counts["unmatched_a"] += 1
        elif kind == "b_only":
            edges += [(tf, 1, 1, 1), (tf + 0.4, 1, 1, 0)]
            counts["unmatched_b"] += 1
        elif kind == "too_fast":  # B onset 30 ms after A: 480 km/h
            edges += [(tf, 1, 0, 1), (tf + 0.030, 1, 1, 1), (tf + 0.3, 1, 0, 0), (tf + 0.33, 1, 1, 0)]
            extra.append((1, tf, tf + 0.3))
            counts["implausible"] += 1
        elif kind == "double_on":  # a repeated "occupied" during this vehicle's A pulse
            on, off = a_span(t0, kmh, ln)
            edges.append((on + 0.6 * (off - on), 1, 0, 1))
            counts["double"] += 1
        else:  # a repeated "free" on B after it left
            edges.append((tf, 1, 1, 0))
            counts["double"] += 1
    got, counters, _ = run(driver, edges, lanes=1, n_intervals=4)
    compare(got, expected(good, 1, 4, extra))
    assert counters["chatter"] == chatter
    for k, n in counts.items():
        assert counters[k] == n, (k, counters)


def a_day(seed=5):
    rng = random.Random(seed)
    return [v for lane in (1, 2) for v in traffic(rng, lane, 0.0, 86400.0, headway=(0.5, 6.0))]


@pytest.mark.unixport
def test_a_day_of_two_lanes_in_a_64k_heap(driver):
    # about 40 000 vehicles, 160 000 edges, 1440 intervals: every record of every interval
    vs = a_day()
    got, counters, peak = run(driver, all_edges(vs), lanes=2, n_intervals=1440, heap="64K")
    compare(got, expected(vs, 2, 1440))
    assert not any(counters.values()), counters
    assert peak < 32 * 1024, peak


@pytest.mark.unixport
def test_v85_matches_numpy_linear_percentile(tmp_path):
    rng = random.Random(4)
    sets = [[round(rng.uniform(10, 150), 3) for _ in range(n)] for n in (1, 2, 3, 7, 20, 101)]
    sets.append([50.0, 50.0, 60.0, 60.0])
    script = "import loops, sys\nfrom array import array\n" \
             "for line in sys.stdin:\n" \
             "    xs = sorted(float(x) for x in line.split())\n" \
             "    a = array('d', [-1.0] + xs + [1e9])\n" \
             "    print(repr(loops.v85(a, 1, len(xs) + 1)))\n"
    path = tmp_path / "v85.py"
    path.write_text(script)
    out = run_micropython(path, stdin="\n".join(" ".join(map(str, s)) for s in sets) + "\n")
    for s, line in zip(sets, out.stdout.split()):
        assert float(line) == pytest.approx(np.percentile(s, 85, method="linear"), abs=1e-9)


BENCH = r"""
import time
from array import array
import loops
# 20 000 vehicles on 2 lanes, 60 km/h, 4.5 m, one every 3 s per lane, as edges in arrays
n = 20000
t = array("i", bytes(16 * n))
meta = bytearray(4 * n)
for i in range(n):
    lane = 1 + (i & 1)
    t0 = (i // 2) * 3000000 + (i & 1) * 700000
    for j, (dt, loop, state) in enumerate(((0, 0, 1), (240000, 1, 1), (390000, 0, 0), (630000, 1, 0))):
        t[4 * i + j] = (t0 + dt) & 0x3FFFFFFF
        meta[4 * i + j] = lane << 2 | loop << 1 | state
lp = loops.Loops(lanes=2)
start = time.ticks_us()
for i in range(4 * n):
    m = meta[i]
    lp.edge(m >> 2, (m >> 1) & 1, m & 1, t[i])
us = time.ticks_diff(time.ticks_us(), start)
print(4 * n, us)
"""


def figures():
    """The figures docs/traffic.md quotes: a day of two lanes against the oracle, and speed."""
    import tempfile
    import time
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    (tmp / "driver.py").write_text(DRIVER)
    (tmp / "bench.py").write_text(BENCH)
    vs = a_day()
    edges = all_edges(vs)
    t0 = time.perf_counter()
    got, counters, peak = run(tmp / "driver.py", edges, lanes=2, n_intervals=1440, heap="64K")
    wall = time.perf_counter() - t0
    exp = expected(vs, 2, 1440)
    compare(got, exp)
    worst = {}
    for key, (unit, value) in exp.items():
        name = key[1].split("/")[1]
        worst[name] = max(worst.get(name, 0.0), abs(got[key][1] - value))
    print("a day, 2 lanes: %d vehicles, %d edges, 1440 intervals, --heap 64K: %.1f s wall "
          "(CSV parse, ring, Loops, JSON out), heap in use after GC at most %d bytes"
          % (len(vs), len(edges), wall, peak))
    for name in sorted(worst):
        print("  max |error| %-11s %.3g" % (name, worst[name]))
    n, us = map(int, run_micropython(tmp / "bench.py", heap="2M").stdout.split())
    print("Loops.edge alone: %d edges in %.3f s, %.1f us per edge (unix port)" % (n, us / 1e6, us / n))


if __name__ == "__main__":
    figures()
