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
import sys, json
import loops

lanes, length, spacing, interval, offset, t_stop = [int(a) if i != 1 and i != 2 else float(a)
                                                   for i, a in enumerate(sys.argv[1:7])]
M = (1 << 30) - 1
ring = loops.EdgeRing(64)
lp = loops.Loops(lanes=lanes, loop_length=length, loop_spacing=spacing, start_us=offset & M)
idx = 0
end = interval


def take():
    global idx, end
    lp.drain(ring)
    for name, unit, value in lp.take((end + offset) & M):
        print(json.dumps([idx, name, unit, value]))
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
print(json.dumps({"unmatched_a": lp.unmatched_a, "unmatched_b": lp.unmatched_b,
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


def run(driver, edges, lanes, n_intervals, offset=0, letters=False):
    proc = run_micropython(driver, lanes, L, S, INTERVAL, offset, n_intervals * INTERVAL,
                           stdin=to_csv(edges, letters))
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    got = {}
    for idx, name, unit, value in lines[:-1]:
        got[idx, name] = (unit, value)
    return got, lines[-1]


def length_class(length):
    return 1 if length < 5.6 else 2 if length < 12.2 else 3


def expected(vehicles, lanes, n_intervals, extra_a_spans=()):
    """vehicles: counted ones (lane, t0, kmh, length); extra_a_spans: (lane, on, off) of A pulses
    that occupy the loop without being counted vehicles."""
    spans = [(lane, *a_span(t0, kmh, ln)) for lane, t0, kmh, ln in vehicles] + list(extra_a_spans)
    exp = {}
    for i in range(n_intervals):
        lo, hi = i * INTERVAL / 1e6, (i + 1) * INTERVAL / 1e6
        for k in range(1, lanes + 1):
            mine = [(kmh, ln) for lane, t0, kmh, ln in vehicles if lane == k and lo <= t0 < hi]
            p = "lane%d/" % k
            exp[i, p + "count"] = ("count", len(mine))
            for c in (1, 2, 3):
                exp[i, p + "count_c%d" % c] = ("count", sum(length_class(ln) == c for _, ln in mine))
            if mine:
                speeds = [kmh for kmh, _ in mine]
                exp[i, p + "speed_mean"] = ("km/h", sum(speeds) / len(speeds))
                exp[i, p + "speed_v85"] = ("km/h", float(np.percentile(speeds, 85, method="linear")))
            occ = sum(max(0.0, min(off, hi) - max(on, lo)) for lane, on, off in spans if lane == k)
            exp[i, p + "occupancy"] = ("%", 100.0 * occ / (hi - lo))
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
    got, counters = run(driver, all_edges(vs), lanes=2, n_intervals=4, letters=True)
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
    got, counters = run(driver, all_edges(vs), lanes=2, n_intervals=4, offset=offset)
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
    got, counters = run(driver, edges, lanes=1, n_intervals=4)
    compare(got, expected(good, 1, 4, extra))
    assert counters["chatter"] == chatter
    for k, n in counts.items():
        assert counters[k] == n, (k, counters)


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
