# Board side of bench/icount_bench.py: runs on the QEMU board (qemu -icount shift=0, where the
# virtual clock advances 1 ns per guest instruction) and prints instruction counts of the
# firmware's own sensor code. The clock is the CMSDK timer 0 of the mps2-an385, free-running at
# its 25 MHz PCLK: one count is 40 ns of virtual time, 40 instructions. It counts down from
# 2**30 - 1 so every reading stays a small int (nothing allocated by the clock itself) and wraps
# after 43 s of virtual time, far beyond any window here.
#
# Each function prints "<label> <instructions> <units>" lines; the host takes differences of two
# windows (K and 2K units of work) so fixed overheads cancel. Inputs are files the host wrote.
import gc
from array import array

from machine import mem32
import micropython
from micropython import const

_T0 = const(0x40000000)  # CMSDK APB timer 0: CTRL, VALUE, RELOAD
_MASK = const(0x3FFFFFFF)
_NS = const(40)  # ns per count: 25 MHz


def clock_start():
    mem32[_T0] = 0
    mem32[_T0 + 8] = _MASK
    mem32[_T0 + 4] = _MASK
    mem32[_T0] = 1  # enable, no interrupt


def now():
    return mem32[_T0 + 4]


def elapsed(t0):
    """Instructions since the reading t0 (the timer counts down)."""
    return ((t0 - mem32[_T0 + 4]) & _MASK) * _NS


def spin(n):
    """A loop of n iterations of plain bytecode: the harness's linearity check."""
    gc.collect()
    t = now()
    i = 0
    while i < n:
        i += 1
    print("spin", elapsed(t), n)


@micropython.asm_thumb
def _spin2(r0):
    label(loop)
    sub(r0, r0, 1)
    bne(loop)


def spin_asm(n):
    """n iterations of a two-instruction Thumb loop (subs, bne): 2n instructions by the ISA."""
    t = now()
    _spin2(n)
    print("asm", elapsed(t), n)


def _blocks(path, nblk):
    with open(path, "rb") as f:
        return [f.read(1024) for _ in range(nblk)]


def noise(rate, path, nblk, windows, plain=False):
    """The noise pipeline's work per 1 KiB I2S read (firmware/sensors.noise): NoiseMeter.feed of
    256 raw words; the reads cycle through nblk distinct blocks of the file. Each window of w
    reads is timed, then one take() (the interval's close) alone."""
    if plain:
        import noise_plain as mod
    else:
        import noise as mod
    blocks = [bytearray(b) for b in _blocks(path, nblk)]
    if plain:  # the plain-Python _run indexes words, as viper's ptr32 does
        blocks = [array("i", b) for b in blocks]
    m = mod.NoiseMeter(rate, -26.0, 0.0, "inmp441")
    k = 0
    for _ in range(rate // 256 + 1):  # a second to warm up, then a fresh interval
        m.feed(blocks[k % nblk], 256)
        k += 1
    m.take()
    for w in windows:
        gc.collect()
        t = now()
        for _ in range(w):
            m.feed(blocks[k % nblk], 256)
            k += 1
        c = elapsed(t)
        gc.collect()
        t = now()
        levels = m.take()
        c_take = elapsed(t)
        print("feed", c, w * 256)
        print("take", c_take, 1)
    print("levels", " ".join("%.2f" % v for v in levels))


def p1(path, reps, chunk, windows):
    """The energy pipeline's work per read (firmware/sensors._read_p1 and energy): P1Reader.feed
    of `chunk`-byte reads of a stream of the telegram repeated, each valid telegram added to the
    interval (EnergyInterval)."""
    from energy import EnergyInterval
    from p1 import P1Reader
    with open(path, "rb") as f:
        tel = f.read()
    stream = tel * reps
    reads = [bytearray(stream[i:i + chunk]) for i in range(0, len(stream), chunk)]
    del stream
    reader = P1Reader()
    agg = EnergyInterval(reader)
    for r in reads:  # warm up: every path taken once
        reader.feed(r, len(r))
    for w in windows:
        gc.collect()
        good = reader.telegrams
        t = now()
        for _ in range(w):
            for r in reads:
                reader.feed(r, len(r))
        c = elapsed(t)
        assert reader.telegrams - good == w * reps, "telegrams lost"
        print("feed", c, w * reps * len(tel))
        gc.collect()
        t = now()
        agg.take(exact=True)
        print("take", elapsed(t), 1)
    print("rejected", reader.rejected())


def loops(path, lanes, windows, null=False):
    """The traffic pipeline's work per edge (firmware/sensors.traffic): EdgeRing.push (the pin
    IRQ's part) and Loops.drain; edges come from the file's (t_us, lane, loop, state) rows,
    drained every 100 ms of their time, as the task does; take() per second of traffic is timed
    on its own. null: the same loop without push and drain, the bench's own share."""
    from loops import EdgeRing, Loops
    with open(path, "rb") as f:
        raw = f.read()
    ev = array("i", raw)
    del raw
    ring = EdgeRing(256)
    det = Loops(lanes, 2.0, 4.0, min_speed=5.0, start_us=0)
    pos = 0
    n = len(ev) // 4
    sec = 1000000

    def run(until_us):
        nonlocal pos
        slot = 0
        e = 0
        while pos < n and ev[4 * pos] < until_us:
            t = ev[4 * pos]
            if t >= slot:
                if not null:
                    det.drain(ring)
                slot = t - t % 100000 + 100000
            if not null:
                ring.push(ev[4 * pos + 1], ev[4 * pos + 2], ev[4 * pos + 3], t)
            pos += 1
            e += 1
        det.drain(ring)
        return e

    end = 5 * sec  # warm up
    run(end)
    det.take(end - det.grace_us)
    for w in windows:
        gc.collect()
        t = now()
        e = run(end + w * sec)
        c = elapsed(t)
        print("edge", c, e)
        gc.collect()
        t = now()
        det.take(end + w * sec - det.grace_us)
        print("take", elapsed(t), 1)
        end += w * sec
    print("unmatched", det.unmatched, "implausible", det.implausible, "lost", det.lost)


clock_start()
