# Traffic from dual presence detectors per lane (loop A upstream, loop B downstream).
# Definitions, the interval contract and the validation are in docs/traffic.md.
from array import array

from micropython import const

# Every time is reduced to 30 bits, the ESP32's ticks_us period, whatever the caller passes (a
# board's ticks_us, the unix port's 62-bit ticks, or replay's unwrapped microseconds): values stay
# small ints on a 32-bit port and all wrap alike. Two times compared must lie within 2**29 us.
_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)

# debouncer states of one loop
_IDLE = const(0)
_RISING = const(1)   # on seen, not yet held for the debounce time
_ON = const(2)
_FALLING = const(3)  # off seen, not yet held for the debounce time

# vehicle-in-progress flags of one lane
_HAS_A = const(1)
_HAS_B = const(2)
_HAS_OFF = const(4)


def ticks(t_us):
    """Any integer microsecond time in the 30-bit tick domain Loops works in."""
    return t_us & _MASK


def ticks_diff(a, b):
    """a - b in the 30-bit tick domain, signed; small ints only, so no allocation on a board."""
    d = (a - b) & _MASK
    if d >= _HALF:
        d = d - _MASK - 1
    return d


class EdgeRing:
    """Edges from pin IRQs, preallocated; one producer (the IRQ handlers, which do not preempt one
    another) and one consumer (Loops.drain in a task). push() only stores small ints into
    preallocated arrays and publishes the slot by moving head last, so it is safe in a hard IRQ and
    a reader never sees a half-written slot."""

    def __init__(self, size=256):
        self.size = size
        self.t = array("I", bytes(4 * size))
        self.meta = bytearray(size)  # lane << 2 | loop << 1 | state
        self.head = 0
        self.tail = 0
        self.overflow = 0

    def push(self, lane, loop, state, t_us):
        h = self.head
        n = h + 1
        if n == self.size:
            n = 0
        if n == self.tail:
            self.overflow += 1  # full: the newest edge is lost, and counted
            return
        self.t[h] = t_us & _MASK
        self.meta[h] = ((lane & 63) << 2) | ((loop & 1) << 1) | (1 if state else 0)
        self.head = n

    def __len__(self):
        return (self.head - self.tail) % self.size


def parse_edge(line):
    """One line of a `t,lane,loop,state` edge CSV -> (lane, loop, state, t_us), ready for
    Loops.edge(); None for a blank line, a comment (#) or the header; further columns are
    ignored. t is seconds from the start; t_us is exact integer microseconds (no float: a board's
    single-precision float would lose milliseconds after a few hours). loop is A/B or 0/1.
    Raises ValueError on a malformed line."""
    line = line.strip().lstrip("\ufeff")
    if not line or line[0] == "#":
        return None
    f = line.split(",")
    if len(f) < 4:  # columns after the fourth are ignored
        raise ValueError("edge line needs t,lane,loop,state: %r" % line)
    ts = f[0].strip()
    if ts and (ts[0].isalpha() or ts[0] == '"'):
        return None  # header
    loop = f[2].strip().upper()
    if loop == "A" or loop == "0":
        loop = 0
    elif loop == "B" or loop == "1":
        loop = 1
    else:
        raise ValueError("loop must be A, B, 0 or 1: %r" % line)
    state = int(float(f[3]))
    return int(f[1].strip()), loop, 1 if state else 0, _micros(ts)


def _micros(s):
    # decimal seconds -> integer microseconds, rounded half up at the microsecond
    if "e" in s or "E" in s:
        return int(float(s) * 1000000 + 0.5)
    neg = s[0] == "-"
    if neg:
        s = s[1:]
    parts = s.split(".")
    if len(parts) > 2:
        raise ValueError("bad time %r" % s)
    whole = parts[0]
    frac = parts[1] if len(parts) == 2 else ""
    if not (whole or frac) or (whole and not whole.isdigit()) or (frac and not frac.isdigit()):
        raise ValueError("bad time %r" % s)
    frac = frac + "0000000"
    us = int(whole or "0") * 1000000 + int(frac[:6])
    if frac[6] >= "5":
        us += 1
    return -us if neg else us


class Loops:
    """Dual-loop traffic measurement, pure logic: edges in, per-interval records out.

    lanes: lanes 1..lanes. loop_length: effective detection length of one loop (m).
    loop_spacing: distance between the leading edges of loops A and B (m).
    min_speed/max_speed (km/h), max_length (m): plausibility bounds of a vehicle.
    debounce_ms: a pulse or a gap shorter than this is chatter.
    max_vehicles: vehicles (and A pulses) stored per lane per interval.
    start_us: the start of the first interval, in the edges' time base (replay: 0).
    The runtime must call take(t_end) no earlier than t_end + self.grace_us (see docs/traffic.md).
    """

    def __init__(self, lanes=1, loop_length=2.0, loop_spacing=4.0, min_speed=5.0,
                 max_speed=250.0, max_length=30.0, debounce_ms=20, max_vehicles=256, start_us=0):
        self.lanes = lanes
        self.loop_length = loop_length
        self.loop_spacing = loop_spacing
        self.min_speed = min_speed
        self.max_speed = max_speed
        self.max_length = max_length
        self.debounce_us = int(debounce_ms * 1000)
        # A->B onset delay beyond which A and B are not one vehicle, and the longest A occupancy a
        # vehicle of max_length at min_speed can take
        self.timeout_us = int(loop_spacing * 3600000 / min_speed)
        self.max_occupancy_us = int((max_length + loop_length) * 3600000 / min_speed)
        # every vehicle that reached A before t_end is complete (and confirmed) by t_end + grace
        self.grace_us = max(self.timeout_us, self.max_occupancy_us) + self.debounce_us
        self._kmh = loop_spacing * 3600000.0  # km/h = this / (B onset - A onset in us)

        n = 2 * lanes  # one debouncer per loop, index 2 * (lane - 1) + loop
        self._st = [_IDLE] * n
        self._tt = [0] * n        # time of the unconfirmed edge (RISING, FALLING)
        self._flags = [0] * lanes  # vehicle in progress, per lane
        self._va = [0] * lanes     # its A onset
        self._vb = [0] * lanes     # its B onset
        self._vo = [0] * lanes     # its A offset
        self._a_on = [0] * lanes   # onset of loop A's current pulse (occupancy)

        cap = max_vehicles * lanes
        self._cap = cap
        self._v_t = array("i", bytes(4 * cap))       # vehicle: A onset
        self._v_kmh = array("f", bytes(4 * cap))     # vehicle: speed
        self._v_tag = bytearray(cap)                 # vehicle: (lane - 1) << 2 | class (0..2)
        self._nv = 0
        self._s_on = array("i", bytes(4 * cap))      # closed A pulse: onset, offset, lane - 1
        self._s_off = array("i", bytes(4 * cap))
        self._s_lane = bytearray(cap)
        self._ns = 0

        self._t_start = start_us & _MASK
        # rejected edges and vehicles, by reason (cumulative)
        self.unmatched_a = 0   # A onset with no B onset within timeout
        self.unmatched_b = 0   # B onset with no A onset before it within timeout
        self.double = 0        # an edge repeating the loop's state (a lost edge in between)
        self.chatter = 0       # a pulse or a gap shorter than debounce
        self.implausible = 0   # speed, length or A occupancy outside the bounds
        self.stopped = 0       # A still occupied at t_end + grace (length unmeasurable)
        self.bad = 0           # lane or loop out of range
        self.lost = 0          # vehicle or A pulse beyond max_vehicles in one interval
        self.overflow = 0      # edges the ring dropped, as of the last drain

    @property
    def unmatched(self):
        return self.unmatched_a + self.unmatched_b

    # --- edges --------------------------------------------------------------------------------
    def drain(self, ring):
        t = ring.t
        meta = ring.meta
        size = ring.size
        i = ring.tail
        while i != ring.head:
            m = meta[i]
            self.edge(m >> 2, (m >> 1) & 1, m & 1, t[i])
            i += 1
            if i == size:
                i = 0
            ring.tail = i
        self.overflow = ring.overflow

    def edge(self, lane, loop, state, t_us):
        if lane < 1 or lane > self.lanes or loop < 0 or loop > 1:
            self.bad += 1
            return
        t = t_us & _MASK
        self._settle(lane, t)
        j = 2 * (lane - 1) + loop
        s = self._st[j]
        if state:
            if s == _IDLE:
                self._st[j] = _RISING
                self._tt[j] = t
            elif s == _FALLING:  # a gap shorter than debounce: the pulse goes on
                self._st[j] = _ON
                self.chatter += 1
            else:
                self.double += 1
        else:
            if s == _RISING:  # a pulse shorter than debounce
                self._st[j] = _IDLE
                self.chatter += 1
            elif s == _ON:
                self._st[j] = _FALLING
                self._tt[j] = t
            else:
                self.double += 1

    def _settle(self, lane, now):
        # confirm this lane's pending edges that have held for debounce by `now`, oldest first,
        # so the vehicle logic sees each lane's onsets and offsets in time order
        ja = 2 * (lane - 1)
        deb = self.debounce_us
        st = self._st
        tt = self._tt
        while True:
            ra = (st[ja] & 1) and ticks_diff(now, tt[ja]) >= deb
            rb = (st[ja + 1] & 1) and ticks_diff(now, tt[ja + 1]) >= deb
            if ra and (not rb or ticks_diff(tt[ja], tt[ja + 1]) <= 0):
                j = ja
            elif rb:
                j = ja + 1
            else:
                return
            if st[j] == _RISING:
                st[j] = _ON
                self._onset(lane, j - ja, tt[j])
            else:
                st[j] = _IDLE
                if j == ja:
                    self._a_offset(lane, tt[j])

    def _onset(self, lane, loop, t):
        k = lane - 1
        f = self._flags[k]
        if loop == 0:
            if f:  # the previous vehicle never reached B (a complete one has no flags)
                self.unmatched_a += 1
            self._flags[k] = _HAS_A
            self._va[k] = t
            self._a_on[k] = t
            return
        if f & _HAS_A and not f & _HAS_B:
            d = ticks_diff(t, self._va[k])
            if 0 < d <= self.timeout_us:
                self._vb[k] = t
                self._flags[k] = f | _HAS_B
                self._complete(k)
                return
        self.unmatched_b += 1

    def _a_offset(self, lane, t):
        k = lane - 1
        self._segment(k, self._a_on[k], t)
        f = self._flags[k]
        if f & _HAS_A:
            self._vo[k] = t
            self._flags[k] = f | _HAS_OFF
            self._complete(k)

    def _segment(self, k, on, off):
        n = self._ns
        if n == self._cap:
            self.lost += 1
            return
        self._s_on[n] = on
        self._s_off[n] = off
        self._s_lane[n] = k
        self._ns = n + 1

    def _complete(self, k):
        f = self._flags[k]
        if f != _HAS_A | _HAS_B | _HAS_OFF:
            return
        self._flags[k] = 0
        va = self._va[k]
        occ = ticks_diff(self._vo[k], va)
        kmh = self._kmh / ticks_diff(self._vb[k], va)
        length = kmh / 3.6 * occ * 1e-6 - self.loop_length
        if (kmh < self.min_speed or kmh > self.max_speed or length <= 0.0
                or length > self.max_length or occ > self.max_occupancy_us):
            self.implausible += 1
            return
        n = self._nv
        if n == self._cap:
            self.lost += 1
            return
        self._v_t[n] = va
        self._v_kmh[n] = kmh
        self._v_tag[n] = (k << 2) | (0 if length < 5.6 else 1 if length < 12.2 else 2)
        self._nv = n + 1

    # --- intervals ----------------------------------------------------------------------------
    def take(self, t_end_us):
        """Close the interval [previous t_end (or start_us), t_end_us): records for every lane.

        Call it once the edges up to t_end_us + grace_us have been drained (at EOF in a replay,
        whenever): each vehicle that reached A before t_end is complete by then."""
        t_end = t_end_us & _MASK
        t0 = self._t_start
        dur = (t_end - t0) & _MASK
        now = (t_end + self.grace_us) & _MASK
        lanes = self.lanes
        occ = [0] * lanes
        for lane in range(1, lanes + 1):
            self._settle(lane, now)
            k = lane - 1
            f = self._flags[k]
            if f and ticks_diff(t_end, self._va[k]) > 0:
                if f & _HAS_B:
                    self.stopped += 1  # on A beyond max occupancy: no length, no class
                else:
                    self.unmatched_a += 1
                self._flags[k] = 0
            if self._st[2 * k] != _IDLE and self._st[2 * k] != _RISING:
                # A occupied across the boundary: its part before t_end counts here, the rest
                # later; moving its start keeps a detector stuck "occupied" within 2**29 us
                on = self._a_on[k]
                if ticks_diff(t_end, on) > 0:
                    occ[k] += ticks_diff(t_end, on if ticks_diff(on, t0) > 0 else t0)
                    self._a_on[k] = t_end

        # closed A pulses: clip to the interval, keep what lies after t_end
        n = 0
        for i in range(self._ns):
            on = self._s_on[i]
            off = self._s_off[i]
            k = self._s_lane[i]
            if ticks_diff(t_end, on) > 0:
                d = ticks_diff(off if ticks_diff(off, t_end) < 0 else t_end,
                               on if ticks_diff(on, t0) > 0 else t0)
                if d > 0:  # a pulse drained late, wholly before t0, adds nothing
                    occ[k] += d
                if ticks_diff(off, t_end) <= 0:
                    continue
                on = t_end
            self._s_on[n] = on
            self._s_off[n] = off
            self._s_lane[n] = k
            n += 1
        self._ns = n

        # vehicles that reached A before t_end: to the front, sorted by lane then speed
        t = self._v_t
        kmh = self._v_kmh
        tag = self._v_tag
        m = 0
        for i in range(self._nv):
            if ticks_diff(t_end, t[i]) > 0:
                if i != m:
                    t[i], t[m] = t[m], t[i]
                    kmh[i], kmh[m] = kmh[m], kmh[i]
                    tag[i], tag[m] = tag[m], tag[i]
                m += 1
        for i in range(1, m):  # insertion sort: a few dozen vehicles per lane and minute
            ti, vi, gi = t[i], kmh[i], tag[i]
            j = i - 1
            while j >= 0 and (tag[j] >> 2 > gi >> 2 or (tag[j] >> 2 == gi >> 2 and kmh[j] > vi)):
                t[j + 1], kmh[j + 1], tag[j + 1] = t[j], kmh[j], tag[j]
                j -= 1
            t[j + 1], kmh[j + 1], tag[j + 1] = ti, vi, gi
        out = []  # type: list
        lo = 0
        for k in range(lanes):
            hi = lo
            while hi < m and tag[hi] >> 2 == k:
                hi += 1
            self._lane_records(out, k, lo, hi, occ[k], dur)
            lo = hi
        # the rest reached A after t_end: they wait for the next interval
        n = self._nv - m
        for i in range(n):
            t[i], kmh[i], tag[i] = t[m + i], kmh[m + i], tag[m + i]
        self._nv = n
        self._t_start = t_end
        return out

    def _lane_records(self, out, k, lo, hi, occ_us, dur):
        # this lane's vehicles are kmh[lo:hi], sorted
        cls = [0, 0, 0]
        total = 0.0
        for i in range(lo, hi):
            cls[self._v_tag[i] & 3] += 1
            total += self._v_kmh[i]
        n = hi - lo
        p = "lane%d/" % (k + 1)
        out.append((p + "count", "count", n))
        out.append((p + "count_c1", "count", cls[0]))
        out.append((p + "count_c2", "count", cls[1]))
        out.append((p + "count_c3", "count", cls[2]))
        if n:
            out.append((p + "speed_mean", "km/h", total / n))
            out.append((p + "speed_v85", "km/h", v85(self._v_kmh, lo, hi)))
        out.append((p + "occupancy", "%", 100.0 * occ_us / dur if dur else 0.0))


def v85(s, lo, hi):
    """85th percentile of s[lo:hi], sorted ascending: linear interpolation at the 0-based rank
    0.85 * (n - 1) between the two closest ranks, as numpy.percentile(method="linear") does."""
    n = hi - lo
    r = 0.85 * (n - 1)
    i = int(r)
    if i + 1 >= n:
        return s[hi - 1]
    return s[lo + i] + (r - i) * (s[lo + i + 1] - s[lo + i])
