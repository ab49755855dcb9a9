# Feed a file of raw I2S words (little-endian int32) through NoiseMeter and print each interval.
# usage: noise_driver.py FILE RATE SENS_DBFS OFFSET_DB MIC INTERVALS [CHUNK] [--time]
# INTERVALS: samples per interval, or a comma-separated list of them used in turn, cyclically.
# Prints one line per take(): "None" or six floats; with --time a last line "rtf R heap H".
import gc
import sys
import time

from noise import NoiseMeter

args = sys.argv[1:]
timed = "--time" in args
args = [a for a in args if a != "--time"]
path, rate, sens, offset, mic, interval = args[:6]
chunk = int(args[6]) if len(args) > 6 else 1024
rate = int(rate)
intervals = [int(v) for v in interval.split(",")]
turn = 0
gc.collect()
free0 = gc.mem_free()
meter = NoiseMeter(rate, float(sens), float(offset), mic)
gc.collect()
used = free0 - gc.mem_free()  # what the meter keeps on the heap
buf = bytearray(4 * chunk)
mv = memoryview(buf)
left = intervals[0]


def show(r):
    print("None" if r is None else " ".join(repr(v) for v in r))


total = 0
busy = 0
with open(path, "rb") as f:
    while True:
        got = f.readinto(buf) // 4
        if not got:
            break
        off = 0
        while off < got:
            k = min(got - off, left)
            t0 = time.ticks_us()
            meter.feed(mv[4 * off:], k)
            busy += time.ticks_diff(time.ticks_us(), t0)
            off += k
            left -= k
            total += k
            if left == 0:
                show(meter.take())
                turn = (turn + 1) % len(intervals)
                left = intervals[turn]
if left != intervals[turn]:
    show(meter.take())
if timed:
    print("rtf %.1f heap %d" % (total / rate / (busy / 1e6), used))
