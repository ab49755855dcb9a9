# The node runtime: sensor pipelines close interval records into the flash store; the link sends
# the oldest unacked frame until the gateway acks it; time and commands come back on the link.
# The clock: the board's ticks, set from the gateway's time frames (docs/node.md, "Clock").
# A boot that crashes before the pipelines have run healthily is counted in flash; after
# CRASH_BOOTS of them the node runs link-only (health and the store's backlog, no sensors).
# A node whose sequence state is gone (a re-flash, a worn flash, a swapped board) starts a new
# epoch and sends nothing until the gateway's SEQ frame for it says where its numbers go on
# (docs/protocol.md, "Re-flashed nodes").
import asyncio
import binascii
import gc
import json
import time

from micropython import const

import link
import senml
from store import Store

FW_VERSION = "0.2.0"
SEQ_BLOCK = const(64)  # sequence numbers reserved per flash write
SEQ_MAX = const(0x3FF00000)  # a floor from the gateway at or above this is refused: 31-bit ints
ACK_TIMEOUT_MS = const(2000)  # the oldest frame in flight goes again after this (node.json
# ack_timeout_ms: an accelerated emulated clock needs more board time for the host's round trip)
WINDOW = const(8)  # frames in flight: a backlog drains at the link's pace, not one per round trip
MAX_BACKOFF_MS = const(30000)
TIME_WAIT_MS = const(5000)
STEP_MS = const(2000)  # a clock error beyond this is stepped, a smaller one slewed
SLEW_SHIFT = const(8)  # slew by at most 1/256 of the time elapsed (3.9 ms per second)
PLAUSIBLE_MS = 1704067200000  # 2024-01-01: an RTC behind this was never set
FUTURE_MS = 4102444800000  # 2100-01-01: a time frame from this on is refused (docs/node.md)
CRASH_BOOTS = const(3)
LEAP_FILL = const(120)  # a step forward fills at most this many leapt intervals (docs/node.md)
SPAN = const(0x1FFFFFFF)  # clock seconds kept within small ints either side of the base
INTERVAL_MAX = const(86400)  # an interval command beyond a day is refused, as the gateway does
LEAPS = const(8)  # leaps kept while a task lags behind them
AHEADS = const(4)  # undone stretches ahead kept apart (beyond, the two nearest merge)
LEAPT = [("clock_leapt", "count", 1)]  # the record of an interval the clock stepped over
RX_FRAME = const(256)  # the longest downlink frame kept (COBS bytes)


def _read_int(path, default=0):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def _read_gap(base):
    """The gap (`gap`: "lo hi top"): its range, and the first start its step emitted ahead
    (top; hi when two numbers are kept, as before): (0, 0, 0) when missing or damaged."""
    try:
        with open("gap") as f:
            v = [int(x) - base for x in f.read().split()]
    except (OSError, ValueError):
        return 0, 0, 0
    if len(v) == 2:
        v.append(v[1])
    if len(v) == 3 and -SPAN <= v[0] <= v[1] <= v[2] <= SPAN:
        return v[0], v[1], v[2]
    return 0, 0, 0


def _read_ranges(path, base):
    """Ranges [lo, hi) of epoch seconds kept in flash as "lo hi lo hi ...", as seconds since
    base, in order and apart: none when missing, damaged or beyond small ints."""
    try:
        with open(path) as f:
            v = [int(x) - base for x in f.read().split()]
    except (OSError, ValueError):
        return []
    if len(v) % 2 or len(v) > 2 * AHEADS:
        return []
    out = []  # type: list
    for i in range(0, len(v), 2):
        a, b = v[i], v[i + 1]
        if not (-SPAN <= a < b <= SPAN) or (out and a <= out[-1][1]):
            return []
        out.append((a, b))
    return out


def _write_text(path, text):
    """A small flash file replaced whole: written aside, then renamed over the old one (a power
    cut leaves the one or the other). "" removes it."""
    import os
    if not text:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    with open(path + ".new", "w") as f:
        f.write(text)
    os.rename(path + ".new", path)


def _write_int(path, value):
    _write_text(path, str(value))


def _random30():
    # an epoch: the ESP32's os.urandom is its hardware RNG; ports without it fall back
    try:
        import os
        b = os.urandom(4)
        return b[0] | b[1] << 8 | b[2] << 16 | (b[3] & 0x3F) << 24
    except (ImportError, AttributeError):
        pass
    us = time.ticks_diff(time.ticks_us(), 0) & 0x3FFFFFFF
    try:
        import random
        return random.getrandbits(30) ^ us
    except (ImportError, AttributeError):
        return us


class Sequence:
    """A sequence number that survives reboots: a block is reserved in flash before use, so a
    reboot skips the unused rest of a block but never reuses a number."""

    def __init__(self, path):
        self.path = path
        self.next = _read_int(path, -1)
        self.fresh = self.next < 0  # missing or unreadable: the numbers used before are unknown
        if self.fresh:
            self.next = 0
        self.limit = self.next

    def raise_to(self, floor):
        """Go on at floor (the gateway's), persisted before any number above it is used."""
        if floor > self.next:
            self.next = floor
            self.limit = floor + SEQ_BLOCK
            _write_int(self.path, self.limit)

    def take(self):
        if self.next >= self.limit:
            self.limit = self.next + SEQ_BLOCK
            _write_int(self.path, self.limit)
        n = self.next
        self.next += 1
        return n


class Clock:
    """Wall-clock time carried forward on the board's ticks, kept as whole seconds since a base
    (the epoch second at boot) and the milliseconds into the second, so that every read is
    small-int arithmetic on a 32-bit port: epoch ms (1.7e12) and even epoch seconds (1.7e9) are
    beyond its 31-bit small ints. set() slews an error up to STEP_MS (the clock never runs
    backwards for drift) and steps a larger one."""

    def __init__(self, epoch_ms, ticks_ms=time.ticks_ms):
        self.ticks_ms = ticks_ms
        self.t = ticks_ms()
        self.base = epoch_ms // 1000  # a big int on 32 bits: read once an interval, at emit
        self.sec = 0  # seconds since base
        self.ms = epoch_ms - self.base * 1000  # 0..999 into the second
        self.slew = 0  # ms still to be slewed in
        self.acc = 0  # ms elapsed not yet slewed over
        self.steps = 0
        self.synced = False

    def tick(self):
        """Carry the clock forward to the board's ticks: the seconds since base."""
        t = self.ticks_ms()
        d = time.ticks_diff(t, self.t)  # re-anchored on every read: the ticks wrap never shows
        self.t = t
        if self.slew:
            self.acc += d
            m = self.acc >> SLEW_SHIFT
            if m:
                self.acc -= m << SLEW_SHIFT
                a = -m if self.slew < -m else (m if self.slew > m else self.slew)
                self.slew -= a
                d += a
        ms = self.ms + d
        if ms >= 1000:
            s = ms // 1000
            self.sec += s
            ms -= s * 1000
        self.ms = ms
        return self.sec

    def since_ms(self, s):
        """Milliseconds from second s (since base, not days back) to the last tick."""
        return (self.sec - s) * 1000 + self.ms

    def now_ms(self):
        self.tick()
        return (self.base + self.sec) * 1000 + self.ms

    def set(self, true_ms):
        """Take the gateway's time: the step in ms, 0 when the error is slewed in."""
        err = true_ms - self.now_ms()
        self.synced = True
        if -STEP_MS <= err <= STEP_MS:
            self.slew = err
            self.acc = 0
            return 0
        ms = self.ms + err
        s = ms // 1000
        self.sec += s
        self.ms = ms - s * 1000
        self.slew = 0
        self.steps += 1
        return err

    def plausible(self):
        return self.synced or self.now_ms() >= PLAUSIBLE_MS


def count_boot():
    """Count this boot in flash, before anything that can crash it: (boot number, boots since
    the last healthy run). The second is cleared once the pipeline runs healthily."""
    boot = _read_int("boot") + 1
    _write_int("boot", boot)
    unhealthy = _read_int("unhealthy") + 1
    _write_int("unhealthy", unhealthy)
    return boot, unhealthy


def crash_looping(counted):
    """A boot after more than CRASH_BOOTS unhealthy ones runs link-only."""
    return counted[1] > CRASH_BOOTS


class Node:
    def __init__(self, cfg, hw, ticks_ms=time.ticks_ms, counted=None):
        self.cfg = cfg
        self.hw = hw
        self.node_id = cfg["node_id"]
        self.key = binascii.unhexlify(cfg["key"])
        self.base_name = cfg["base_name"]
        self.kind = cfg["sensor"]
        self.interval = int(cfg.get("interval", 60))
        self.boot, self.unhealthy = counted or count_boot()
        self.safe = crash_looping((self.boot, self.unhealthy))
        self.seq = Sequence("seq")
        self._load_epoch()
        self.store = Store("store.d", cfg.get("store_segments", 96))
        self.clock = Clock(hw.epoch_ms(), ticks_ms)
        # no interval may start before one already opened (seconds since the clock's base)
        self.floor = min(max(_read_int("floor") - self.clock.base, -SPAN), SPAN)
        self._phase = self.clock.base % self.interval
        self.leaps = []  # (first, first flagged, end): interval starts a step leapt; [first,
        # first flagged) is a gap (a step beyond LEAP_FILL), the rest is flagged
        # the starts the last step beyond the fill left unflagged, never emitted: a step back
        # into them undoes that step (docs/node.md, "Clock")
        # (gap_top: the first start that step emitted ahead, its fill's first: the gap ends
        # before it where a stretch undone earlier lies between them)
        self.gap_lo, self.gap_hi, self.gap_top = _read_gap(self.clock.base)
        # starts emitted while the clock ran ahead, and since undone: skipped when the clock
        # gets there (a walker still among them goes on at resume, the true time's start)
        # (in time order, apart: a stretch ahead undone, corrected partway and undone again
        # leaves two, and the never-emitted starts between them are not skipped)
        self.aheads = _read_ranges("ahead", self.clock.base)
        self.resume = None  # None: a walker among them goes on at the range's end
        self.back_lo = self.back_hi = 0  # the stretch the last undo left (merged or not):
        # a walker in it goes on at resume after its end, not after the merged range's
        self.walkers = []  # every task's Intervals: a leap is kept until all have passed it
        self.ticks_ms = ticks_ms
        self.started = ticks_ms()
        self.resends = 0
        self.rx_rejects = 0
        self.gw_seq = _read_int("gwseq", -1)  # the last downlink accepted, kept over reboots
        self.progress = 0  # advanced by the sensor pipelines only: it feeds the watchdog
        self.sent = 0
        self.flight = []  # the sender's frames in flight (seq numbers), oldest first
        self.acks = []  # the acked ones among them, and among those sent earlier, unreleased
        self.top = -1  # the highest sequence number the sender wrote since boot
        self.heap_peak = 0
        self.wake = asyncio.Event()  # a frame stored, an ack, the link up or down
        self.timed = asyncio.Event()
        self.write = None
        self.reboot_requested = False
        self.trace = cfg.get("trace", False)  # never on a board whose console is its link

    # --- epoch: whose sequence numbers these are ------------------------------------------
    def _load_epoch(self):
        """`epoch` holds "<epoch> <floor> <seg> <off>": floor -1 while no SEQ frame has come
        for this epoch (pending: nothing is sent), and (seg, off) >= 0 while the store's
        records before that position still go under new numbers."""
        try:
            with open("epoch") as f:
                e, fl, seg, off = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            e = -1
        if self.seq.fresh or e < 0:  # the numbers used before are unknown: a new epoch
            e, fl, seg, off = _random30(), -1, -1, 0
            self._write_epoch(e, fl, seg, off)
        self.epoch, self.move_seg, self.move_off = e, seg, off
        self.pending = fl < 0
        if fl > 0:
            self.seq.raise_to(fl)  # should the seq file be older than the epoch file

    def _write_epoch(self, e, floor, seg, off):
        _write_text("epoch", "%d %d %d %d" % (e, floor, seg, off))

    def take_floor(self, body):
        """The gateway's SEQ frame: {"epoch", "floor"}. A floor for another epoch is a replay
        (False). One above our numbers (or the first of a pending epoch) moves us above it, and
        every frame already stored goes again under a new number before anything is sent."""
        if not isinstance(body, dict) or body.get("epoch") != self.epoch:
            return False
        floor = body.get("floor")
        if not isinstance(floor, int) or not 0 <= floor < SEQ_MAX:
            return False
        if self.pending or floor > self.seq.next:
            self.seq.raise_to(floor)
            st = self.store
            self.move_seg, self.move_off = (st.head_seg, st.head_off) if st.depth else (-1, 0)
            self._write_epoch(self.epoch, floor, self.move_seg, self.move_off)
            self.pending = False
            if self.clock.synced:
                self.timed.set()
            self.wake.set()
        return True

    async def renumber(self):
        """Every record stored before the floor came goes to the store's head under a number
        above the floor, oldest first; the old one is released. Resumed after a reboot."""
        st = self.store
        from renumber import reseq
        st.max_segments += 1  # the copies' head segment: a full ring drops nothing for them
        while self.move_seg >= 0 and (st.tail_seg < self.move_seg or (
                st.tail_seg == self.move_seg and st.tail_off < self.move_off)):
            frame = st.peek()
            if frame is None:
                break
            old = st.seq
            seq = self.seq.take()
            st.append(reseq(self.key, frame, seq), seq)
            st.pop()
            if self.trace:
                import sys
                sys.stderr.write("renumbered %d %d\n" % (old, seq))
            await asyncio.sleep_ms(0)  # flash writes: let the pipelines run between them
        st.max_segments -= 1
        if self.move_seg >= 0:
            self.move_seg = -1
            self._write_epoch(self.epoch, self.seq.next, -1, 0)

    # --- clock -----------------------------------------------------------------------------
    def epoch_ms(self):
        return self.clock.now_ms()

    def interval_start(self):
        """The start of the interval in progress, in seconds since the clock's base: a small
        int, cheap enough for every block a pipeline reads (epoch_s turns it into the record's
        t). Never earlier than one already opened: after the clock steps back, the open
        interval runs on until the clock passes its end."""
        s = self.clock.tick()
        s -= (s + self._phase) % self.interval
        h = self.ahead_end(s)
        if h is not None:  # emitted while the clock ran ahead
            s = h
        if s < self.floor:
            return self.floor
        self.floor = s
        return s

    def next_interval(self, s):
        """The start of the interval after the one starting at s (past a step's unfilled leap,
        and past the starts a clock run ahead emitted)."""
        n = s + self.interval - (s + self._phase) % self.interval
        h = self.back_hi if self.back_lo <= s < self.back_hi else self.ahead_end(s)
        if h is not None:  # a task closing them after the undo: the last goes on at the true
            if n < h:  # time
                return n
            n = h if self.resume is None else self.resume
        m = None
        while m != n:  # a leap's end may lie at a stretch's start and the other way round
            m = n
            for lo, mid, _hi in self.leaps:
                if lo <= n < mid:
                    n = mid
            h = self.ahead_end(n)
            if h is not None:
                n = h
        return n

    def ahead_end(self, s):
        """The end of the undone stretch ahead holding start s, None if none does."""
        for lo, hi in self.aheads:
            if lo <= s < hi:
                return hi
        return None

    def epoch_s(self, s):
        return self.clock.base + s

    def leapt(self, s):
        """Whether a clock step forward leapt over the interval starting at s."""
        for _lo, mid, hi in self.leaps:
            if mid <= s < hi:
                return True
        return False

    def _leap(self, lo, mid, hi):
        """Skip [lo, mid) on every task's walk, flagging [mid, hi). A leap is kept until every task
        has walked past it (dropped sooner, a task lagging behind a burst of steps closed its gap
        one by one as empty intervals); beyond LEAPS the oldest two merge: the measured
        intervals between them are a gap then, never a flood nor a record set invented."""
        oldest = hi
        for w in self.walkers:  # one among the stretches ahead goes back to resume after them
            st = w.start
            if self.resume is not None and self.ahead_end(st) is not None:
                st = min(st, self.resume)
            oldest = min(oldest, st)
        leaps = [x for x in self.leaps if x[2] > oldest]
        leaps.append((lo, mid, hi))
        leaps.sort()  # in time order (an undone step leaves leaps ahead of the clock)
        if len(leaps) > LEAPS:
            leaps[:2] = [(leaps[0][0], leaps[1][1], leaps[1][2])]
        self.leaps = leaps

    def set_time(self, ms):
        was = self.interval_start()
        step = self.clock.set(ms)
        if self.clock.slew > 0:  # the clock runs ahead of the RTC while it gains: a reset
            self.hw.set_epoch_ms(ms)  # must not go back behind an interval already closed
        if step:
            self.hw.set_epoch_ms(self.clock.now_ms())  # the RTC keeps it over a reset
            if step < 0:
                s = self.clock.tick()
                s -= (s + self._phase) % self.interval
                if self.gap_lo <= s < self.gap_hi:
                    self._undo(s)
                elif s < self.gap_lo < self.gap_hi and self.gap_lo <= s + self.interval:
                    self._undo(self.gap_lo)  # on the start closed at the step forward (the
                    # gateway set right within that interval): held to the gap's first only
                # a reboot must not reopen earlier intervals
                _write_int("floor", self.epoch_s(self.floor))
            else:
                lo = self.next_interval(was)
                hi = self.interval_start()
                if lo < hi:  # every task closes these in turn, flagged (docs/node.md, "Clock")
                    mid = max(lo, hi - LEAP_FILL * self.interval)
                    g_lo = lo
                    for a_lo, a_hi in self.aheads:  # back over undone stretches: their starts
                        if lo < a_hi and a_lo < hi:  # are not flagged
                            mid = max(mid, min(hi, a_hi))
                            if a_lo <= lo:
                                g_lo = a_hi
                    g_hi = mid
                    for a_lo, _a_hi in self.aheads:  # nor taken for never emitted
                        if g_lo <= a_lo < g_hi:
                            g_hi = a_lo
                    self._leap(lo, mid, hi)
                    if g_lo < g_hi:  # never emitted: a step back into them undoes this one
                        self.gap_lo, self.gap_hi, self.gap_top = g_lo, g_hi, mid
                        _write_text("gap", "%d %d %d" % (self.epoch_s(g_lo), self.epoch_s(g_hi),
                                                         self.epoch_s(mid)))
        if not self.pending:
            self.timed.set()  # the gateway has answered: time, and where our numbers go

    def _undo(self, s):
        """A step back to s, among the starts the last step beyond the fill left unemitted: that
        step was wrong (a gateway clock run ahead, set right). The interval in progress closes
        under its own start, as at a step forward, and every task goes on at s; the starts
        emitted ahead, [gap_top, the interval in progress's end), are skipped when the clock
        gets there, and those from the leap's first to s stay a gap."""
        f = self.floor
        lo, hi = self.gap_top, f + self.interval - (f + self._phase) % self.interval
        # the earlier undos' ranges and this one, in order; touching ones merge
        rs = []  # type: list
        for a in sorted(self.aheads + [(lo, hi)] if lo < hi else self.aheads):
            if rs and a[0] <= rs[-1][1]:
                rs[-1] = (rs[-1][0], max(rs[-1][1], a[1]))
            else:
                rs.append(a)
        while len(rs) > AHEADS:  # the two nearest become one (its starts between: skipped)
            k = min(range(len(rs) - 1), key=lambda i: rs[i + 1][0] - rs[i][1])
            rs[k:k + 2] = [(rs[k][0], rs[k + 1][1])]
        self.aheads, self.resume, self.back_lo, self.back_hi = rs, s, lo, hi
        _write_text("ahead", " ".join("%d %d" % (self.epoch_s(a), self.epoch_s(b)) for a, b in rs))
        # the undone leap's flagged starts lie ahead now, among the skipped ones: no flags
        # when the clock gets there; a task still behind it skips the starts to s
        self.leaps = [x for x in self.leaps if not x[0] <= s < x[2]]
        if self.gap_lo < s:
            self._leap(self.gap_lo, s, s)
        # the starts from the gap's first to s stay never emitted: a step back among them (a
        # correction partway, then the true time) undoes this stretch too
        self.gap_hi = self.gap_top = max(self.gap_lo, s)
        if self.gap_lo < s:
            _write_text("gap", "%d %d %d" % (self.epoch_s(self.gap_lo), self.epoch_s(s),
                                             self.epoch_s(s)))
        else:
            _write_text("gap", "")
        self.floor = s

    # --- records ---------------------------------------------------------------------------
    def emit(self, t, records):
        """Close one interval's records into a tagged frame in flash."""
        seq = self.seq.take()
        frame = link.encode_frame(self.key, link.DATA, self.node_id, seq,
                                  senml.pack(self.base_name, t, records))
        self.store.append(frame, seq)
        if self.trace:  # the node's own record of what it produced, for the fault tests
            import sys
            sys.stderr.write("emitted %d %d %s\n" % (seq, t, " ".join(r[0] for r in records)))
        frame = records = None
        self.note_heap()
        self.wake.set()

    def note_heap(self):
        used = gc.mem_alloc()
        if used > self.heap_peak:
            self.heap_peak = used

    def health(self):
        return [
            ("uptime", "s", time.ticks_diff(self.ticks_ms(), self.started) // 1000),
            ("heap_free", "B", self.hw.free_heap()),
            ("heap_peak", "B", self.heap_peak),
            ("link_resends", "count", self.resends),
            ("rx_rejects", "count", self.rx_rejects),
            ("store_depth", "count", self.store.depth),
            ("store_dropped", "count", self.store.dropped),
            ("boot_count", "count", self.boot),
            ("clock_steps", "count", self.clock.steps),
            ("safe_mode", "count", 1 if self.safe else 0),
        ]

    # --- link ------------------------------------------------------------------------------
    def send_control(self, kind, body):
        if self.write:
            self.write(link.encode_frame(self.key, kind, self.node_id, self.seq.take(), body))

    def hello(self):
        self.send_control(link.HELLO, {"fw": FW_VERSION, "boot": self.boot, "kind": self.kind,
                                       "bn": self.base_name, "interval": self.interval,
                                       "safe": self.safe, "epoch": self.epoch})

    def on_frame(self, raw):
        try:
            kind, node, seq, body = link.parse_frame(
                link.split_frame(link.cobs_decode(raw)),
                lambda n: self.key if n == self.node_id else None)
        except link.LinkError:
            self.rx_rejects += 1
            return
        if kind == link.ACK:
            # a frame sent and not yet released, in flight or not: after a timeout the probe
            # goes alone, and the window's acks that come late still count (a slow gateway)
            if type(body) is int and body <= self.top and body not in self.acks:
                self.acks.append(body)
                self.wake.set()
            return
        if seq <= self.gw_seq:  # a replayed or old downlink frame
            self.rx_rejects += 1
            return
        if kind == link.SEQ and not self.take_floor(body):
            self.rx_rejects += 1  # another epoch's floor: a replay
            return
        self.gw_seq = seq
        _write_int("gwseq", seq)  # before acting on it: a reboot must not take it again
        if kind == link.TIME:
            if isinstance(body, int) and PLAUSIBLE_MS <= body < FUTURE_MS:
                self.set_time(body)
            else:  # a gateway booted without its clock (a Pi has no RTC: 1970)
                self.rx_rejects += 1
        elif kind == link.CMD:
            self.command(body)
        if not self.pending:  # a pending epoch's numbers may be ones the gateway saw before
            self.send_control(link.ACK, seq)

    def command(self, body):
        if not isinstance(body, dict):
            return
        op = body.get("op")
        if op == "interval" and not (type(body.get("value")) is int
                                     and 1 <= body["value"] <= INTERVAL_MAX):
            self.rx_rejects += 1  # 10**9 (ms by mistake) held the open interval for 31 years
        elif op == "interval":
            was = self.interval_start()
            self.interval = body["value"]
            self._phase = self.clock.base % self.interval
            # the interval in progress runs on to the new grid's next start: the time it
            # measured is not closed again as intervals of the new length (docs/node.md)
            lo = self.next_interval(was)
            hi = self.next_interval(self.clock.tick())
            if lo < hi:
                self._leap(lo, hi, hi)
        elif op == "reboot":
            self.reboot_requested = True
        elif op == "calibration" and isinstance(body.get("value"), (int, float)):
            # `sensorcity calibrate`: the noise offset is kept in node.json, applied at reboot
            self.cfg["calibration_db"] = body["value"]
            save_config(self.cfg)
            self.reboot_requested = True

    async def reader(self, sr):
        # downlink frames (ack, time, command) are short: a small deframer and one read buffer
        deframer = link.Deframer(RX_FRAME)
        buf = bytearray(128)
        mv = memoryview(buf)
        frames = []  # type: list
        while True:
            n = await sr.readinto(buf)
            if not n:
                return
            deframer.feed(mv[:n], frames)
            while frames:
                self.on_frame(frames.pop(0))

    async def sender(self):
        """Up to WINDOW frames in flight, oldest first; acks may come in any order and the store
        releases frames in order as they are acked. When the oldest in flight goes unacked for
        the timeout, the timeout doubles, up to MAX_BACKOFF_MS, and only the oldest unacked frame
        goes again, alone, until the gateway answers (a release): a dead link is not fed a window
        at every timeout, and a link that comes back mid-window (a cable, a cut frame) takes the
        backlog in order instead of the window's later frames before the cut one. Then the rest
        of the unacked frames go again (the gateway drops copies by sequence number). An ack
        counts for any frame sent and not yet released, so a gateway slower than the timeout
        releases the window with its probe. A link that drops before releasing anything gets a
        probe on its next connection, not the window (docs/node.md, "Sending")."""
        store = self.store
        flight = self.flight  # sequence numbers sent and not yet released, ascending
        acks = self.acks  # of those, the ones the gateway acked
        base = self.cfg.get("ack_timeout_ms", ACK_TIMEOUT_MS)
        backoff = base
        seg = -1  # the cursor: where the next frame to send starts in the store
        off = 0
        room = WINDOW  # frames that may be in flight: 1 from a timeout to the next release
        up = -1  # self.sent when the sender last saw the link come up
        since = self.ticks_ms()  # the last progress: a frame released, or a first send
        while True:
            self.wake.clear()
            if self.pending:  # no number of ours is known to be new to the gateway yet
                flight.clear()
                acks.clear()
                seg = -1
                await self.wake.wait()
                continue
            if self.move_seg >= 0:
                flight.clear()
                acks.clear()
                seg = -1
                self.top = -1  # the store's frames have new numbers
                await self.renumber()
            frame = store.peek()  # release what is acked, oldest first
            while frame is not None and store.seq in acks:
                acks.remove(store.seq)
                store.pop()
                self.sent += 1
                backoff = base
                room = WINDOW
                await asyncio.sleep_ms(0)  # a release rewrites flash (ms each): let the
                since = self.ticks_ms()  # pipelines run between them while a backlog drains
                frame = store.peek()
            # seq numbers rise through the store: anything in flight below its oldest is gone
            # (released, or dropped by a full store)
            low = store.seq if frame is not None else self.seq.next
            gone = flight and flight[0] < low
            while flight and flight[0] < low:
                flight.pop(0)
            while acks and min(acks) < low:
                acks.remove(min(acks))
            if gone and room == 1 and not flight and frame is not None:
                # a full store dropped the probe: the new oldest stands in for it, unsent, so
                # a dead link still gets one frame per timeout
                frame = store.peek_after(store.tail_seg, store.tail_off)
                seg, off = store.at_seg, store.at_off
                flight.append(store.seq)
            if self.write is None:
                if flight and self.sent == up:  # this link released nothing: the next one
                    room = 1  # (a gateway dropping each connection) gets a probe, not a window
                up = -1
                flight.clear()
                seg = -1
                await self.wake.wait()
                continue
            if up < 0:
                up = self.sent
            if flight and time.ticks_diff(self.ticks_ms(), since) >= backoff:
                backoff = min(backoff * 2, max(MAX_BACKOFF_MS, base))
                room = 1
                since = self.ticks_ms()
                flight.clear()
                seg = -1  # go back to the oldest unreleased frame
            if seg < 0 or seg < store.tail_seg or (seg == store.tail_seg and off < store.tail_off):
                seg, off = store.tail_seg, store.tail_off
                flight.clear()
            while len(flight) < room:
                frame = store.peek_after(seg, off)
                if frame is None:
                    break
                seq = store.seq
                seg, off = store.at_seg, store.at_off
                if seq in acks:  # acked while others before it were not: not sent again
                    flight.append(seq)
                    continue
                if not flight:
                    since = self.ticks_ms()
                flight.append(seq)
                if seq <= self.top:  # one at or below the highest sent goes again
                    self.resends += 1
                else:
                    self.top = seq
                self.write(frame)
            frame = None
            if not flight:
                await self.wake.wait()
                continue
            wait = backoff - time.ticks_diff(self.ticks_ms(), since)
            if wait > 0:
                try:
                    await asyncio.wait_for_ms(self.wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass

    async def serial_link(self):
        rd, self.write = self.hw.console_link()
        self.write(b"\x00")  # ends whatever frame a reset cut off, so the hello arrives whole
        self.hello()
        await self.reader(asyncio.StreamReader(rd))

    async def tcp_link(self, host, port):
        delay = 1
        while True:
            if not self.hw.wifi_up(self.cfg.get("link", {})):
                await asyncio.sleep(delay)  # the access point is not there yet
                delay = min(delay * 2, 30)
                continue
            try:
                r, w = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1

            def write(b, w=w):
                try:
                    w.write(b)  # drained by the stream; a dead socket shows in the reader
                except OSError:
                    pass
            self.write = write
            self.wake.set()
            self.hello()
            try:
                await self.reader(r)
            except OSError:
                pass
            self.write = None
            self.wake.set()  # the sender notices the link is gone
            try:
                w.close()
            except OSError:
                pass
            await asyncio.sleep(delay)

    async def hello_until_timed(self):
        while not self.timed.is_set():
            self.hello()
            try:
                await asyncio.wait_for_ms(self.timed.wait(), TIME_WAIT_MS)
            except asyncio.TimeoutError:
                pass

    # --- housekeeping ----------------------------------------------------------------------
    async def housekeeping(self):
        cfg = self.cfg
        iv = Intervals(self)
        last_progress = self.progress
        stalled_ms = 0
        stall_ms = cfg.get("stall_ms", 3 * self.interval * 1000 + 10000)
        healthy_ms = cfg.get("healthy_ms", 2 * self.interval * 1000 + 10000)
        safe_ms = cfg.get("safe_ms", 3600000)
        healthy = False
        self.hw.start_watchdog(cfg.get("watchdog_ms", 30000))
        while True:
            await asyncio.sleep_ms(1000)
            self.note_heap()
            if self.progress != last_progress:
                last_progress = self.progress
                stalled_ms = 0
            else:
                stalled_ms += 1000
            up_ms = time.ticks_diff(self.ticks_ms(), self.started)
            if self.safe or stalled_ms < stall_ms:
                self.hw.feed_watchdog()  # fed only while the pipelines progress
            if not healthy and not self.safe and stalled_ms == 0 and up_ms >= healthy_ms:
                healthy = True
                _write_int("unhealthy", 0)
            if self.safe and up_ms >= safe_ms:
                _write_int("unhealthy", 0)  # try the sensors again
                self.reboot_requested = True
            if self.reboot_requested:
                await asyncio.sleep_ms(200)
                self.hw.reset()
            while iv.ended():  # health is a state: each interval passed gets it, leapt or not
                iv.close(self.health())  # (the pipeline flags a leapt one, once)
                gc.collect()
                await asyncio.sleep_ms(0)

    async def main(self, pipeline):
        link_cfg = self.cfg.get("link", {})
        if link_cfg.get("tcp"):
            host, port = link_cfg["tcp"].rsplit(":", 1)
            asyncio.create_task(self.tcp_link(host, int(port)))
        else:
            asyncio.create_task(self.serial_link())
        asyncio.create_task(self.sender())
        try:
            await asyncio.wait_for_ms(self.hello_until_timed(), TIME_WAIT_MS * 2)
        except asyncio.TimeoutError:
            pass  # keep the RTC's time and go on; records are still stored
        asyncio.create_task(self.hello_until_timed())
        while not self.clock.plausible():  # records stamped 2000-01-01 would be worthless
            await asyncio.sleep_ms(1000)
        asyncio.create_task(self.housekeeping())
        if self.safe:
            while True:  # link-only: health from housekeeping, the store drains
                await asyncio.sleep_ms(60000)
        await pipeline(self)


class Intervals:
    """One task's walk over the node's intervals: each closes in turn, once, under its own start
    (a stalled task catches up; docs/node.md, "Clock")."""

    def __init__(self, node):
        self.node = node
        self.start = node.interval_start()
        node.walkers.append(self)

    def ended(self):
        """The oldest interval not yet closed has ended (one the clock ran ahead to has, once
        a step back undid that: docs/node.md, "Clock")."""
        n = self.node
        s = self.start
        return s < n.interval_start() or n.ahead_end(s) is not None

    def late(self):
        """More than that one has ended."""
        n = self.node
        return n.next_interval(self.start) < n.interval_start()

    def close(self, records):
        """Close the oldest ended interval, emitting records unless None."""
        n = self.node
        if records is not None:
            n.emit(n.epoch_s(self.start), records)
        self.start = n.next_interval(self.start)

    def end_us(self, prev_us):
        """Its end in ticks_us, never before prev_us (a step forward leaves the leapt intervals
        no time on the board), and how many ms ago that was."""
        n = self.node
        now_us = time.ticks_us()
        late = n.clock.since_ms(n.next_interval(self.start))
        if late < 0:  # it ends ahead of the clock: closed early by an undone step, or skipped to
            late = 0
        d = time.ticks_diff(now_us, prev_us) // 1000
        if 0 <= d < late:
            late = d
        return time.ticks_add(now_us, -late * 1000), late

    def leapt(self):
        """Close it with the leapt flag if a clock step leapt over it: True then."""
        if not self.node.leapt(self.start):
            return False
        self.close(LEAPT)
        return True


def save_config(cfg, path="node.json"):
    _write_text(path, json.dumps(cfg))


def load_config(path="node.json"):
    with open(path) as f:
        cfg = json.load(f)
    for k in ("node_id", "key", "sensor", "base_name"):
        if k not in cfg:
            raise ValueError("node.json: missing " + k)
    return cfg
