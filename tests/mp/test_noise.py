# NoiseMeter and its histogram under the MicroPython unix port, against hand-computed truth.
import math
import struct

from levels import Histogram
from noise import NoiseMeter

RATE = 48000
N = 4800  # 100 periods of 1 kHz at 48 kHz, so a repeated buffer is a continuous tone


def periodic(period, amp_fs, shape=math.sin):
    buf = bytearray(4 * N)
    for i in range(N):
        v = int(round(amp_fs * 2 ** 23 * shape(2 * math.pi * (i % period) / period)))
        v = max(-2 ** 23, min(2 ** 23 - 1, v))
        struct.pack_into("<i", buf, 4 * i, v * 256)
    return buf


def run(meter, buf, seconds):
    for _ in range(int(seconds * RATE) // N):
        meter.feed(buf, N)


def a_weight_db(f):
    f1, f2, f3, f4 = 20.598997, 107.65265, 737.86223, 12194.217
    s = f * f
    ra = f4 ** 2 * s * s / ((s + f1 ** 2) * math.sqrt((s + f2 ** 2) * (s + f3 ** 2)) * (s + f4 ** 2))
    return 20 * math.log10(ra) + 2.0


def test_histogram_ranks():
    h = Histogram()
    assert h.exceeded(10) is None
    for v in [60.0] * 70 + [70.04] * 20 + [80.0] * 10:
        h.add(v)
    # ranks from the top: 10 -> 10th (80.0), 50 -> 50th (60.0), 90 -> 90th (60.0)
    assert h.exceeded(10) == 80.0
    assert h.exceeded(11) == 70.0
    assert h.exceeded(30) == 70.0
    assert h.exceeded(31) == 60.0
    assert h.exceeded(90) == 60.0
    h.add(-99.0)
    h.add(500.0)
    assert h.exceeded(100) == -20.0 and h.exceeded(0) == 140.0  # clamped to the end bins
    h.reset()
    assert h.n == 0 and h.exceeded(50) is None


def test_none_without_a_complete_block():
    m = NoiseMeter(RATE)
    m.feed(periodic(48, 0.05), N)  # 0.1 s
    assert m.take() is None
    run(m, periodic(48, 0.05), 0.1)  # the 125 ms block ends in this second 0.1 s
    assert m.take() is not None


def test_94_db_tone_and_interval_split():
    # 94 dB SPL at 1 kHz on a -26 dBFS microphone: a sine peaking at 10**(-26/20) of full scale
    # (dBFS re a full-scale sine, as the datasheets and AES17 define it).
    m = NoiseMeter(RATE, -26.0, 0.0)
    buf = periodic(48, 10 ** (-26 / 20))
    run(m, buf, 0.5)
    m.take()
    m.feed(buf, 1000)  # intervals cut mid-block and mid-sub-block
    first = m.take()
    m.feed(memoryview(buf)[4000:], N - 1000)
    run(m, buf, 1.0)
    second = m.take()
    assert first is None  # 1000 samples, no block ended
    for v in second:
        assert abs(v - 94.0) < 0.1, second


def test_silence_and_dc_read_low():
    m = NoiseMeter(RATE)
    run(m, bytearray(4 * N), 0.5)
    r = m.take()
    assert r[0] < -50, r
    # A DC offset of half full scale: the A-weighting has four zeros at DC.
    m = NoiseMeter(RATE)
    buf = periodic(48, 0.5, lambda p: 1.0)
    run(m, buf, 1.0)
    m.take()
    run(m, buf, 1.0)
    r = m.take()
    assert r[0] < 0, r


def test_full_scale_square_wave():
    # Extreme input: a full-scale 1 kHz square wave. Expected from its 48-point DFT, each
    # harmonic weighted by the analytic A curve (aliased harmonics included, they are real).
    period = 48
    x = [1.0 if k < period // 2 else -1.0 for k in range(period)]
    power = 0.0
    for h in range(1, period // 2 + 1):
        re = sum(x[k] * math.cos(2 * math.pi * h * k / period) for k in range(period))
        im = sum(x[k] * math.sin(2 * math.pi * h * k / period) for k in range(period))
        p = 2 * (re * re + im * im) / period ** 2
        if h == period // 2:
            p /= 2
        power += p * 10 ** (a_weight_db(h * 1000.0) / 10)
    # + 3.01: dBFS is re a full-scale sine, whose mean square is 1/2
    expected = 10 * math.log10(2 * power) + 26.0 + 94.0
    m = NoiseMeter(RATE, -26.0)
    buf = periodic(period, 1.0, lambda p: 1.0 if p < math.pi else -1.0)
    run(m, buf, 0.5)
    m.take()
    run(m, buf, 0.5)
    r = m.take()
    assert abs(r[0] - expected) < 0.2, (r, expected)


def test_rejects_what_it_cannot_measure():
    for args in ((44100,), (48000, -26.0, 0.0, "no-such-mic")):
        try:
            NoiseMeter(*args)
        except ValueError:
            continue
        raise AssertionError(args)
    assert NoiseMeter.QUANTITIES == ("LAeq", "LAFmax", "LAFmin", "LA10", "LA50", "LA90")


def test_a_readings_bin_in_integers_is_its_level_rounded_to_a_tenth():
    # the 125 ms reading's histogram bin (integers only, issue 14) against 10 log10 of the mean
    # square in floats, over 19 decades: equal but within 1e-4 dB of a bin's edge
    m = NoiseMeter(16000, -26.0, 0.0, "ideal")
    x = 1e-4
    n = edge = 0
    while x < 1e15:
        e = math.frexp(x)[1]
        fm, fe = int(math.frexp(x)[0] * (1 << 30)), e - 30
        level = 10 * (10 * math.log10(fm * 2.0 ** fe) + m._k)
        if level < 10 * (-30 + m._k):  # the meter's floor, a mean square of 1e-3
            level = 10 * (-30 + m._k)
        want = math.floor(level + 0.5)
        if m._tenths(fm, fe) != want:
            assert abs(level - math.floor(level) - 0.5) < 1e-3, (x, level, m._tenths(fm, fe))
            edge += 1
        n += 1
        x *= 1.00137
    assert n > 30000 and edge < n // 1000, (n, edge)


import mptest  # noqa: E402

mptest.run(globals())
