# The emulated board's clock: MicroPython's `time`, with time passing `speed` times faster than
# on the host (SENSORCITY_EMU {"speed": k}, 1 = real time), so a simulated day takes 24 h / k.
# ticks, time.time and sleeps are scaled alike; the `select` shadow next to this file scales
# poll timeouts, which is how asyncio waits. {"epoch": s} starts time.time() there, as a board's
# RTC runs on through a reset (the host keeps the emulated RTC across restarts).
import json
import os
import sys

_path = sys.path[:]
sys.path.clear()  # import the built-in `time`, not this file
import time as _t  # noqa: E402
sys.path[:] = _path
del _path

_CFG = json.loads(os.getenv("SENSORCITY_EMU") or "{}")
SPEED = _CFG.get("speed", 1) or 1
_MS0 = _t.ticks_ms()
_US0 = _t.ticks_us()
_H0 = _t.time()  # host seconds at start
_T0 = _CFG.get("epoch", _H0)  # board seconds at start
try:
    with open(_CFG["rtc"]) as _f:  # what the firmware set the RTC to, kept over a reset
        _T0 += float(_f.read())
except (KeyError, OSError, ValueError):
    pass


def _adjust(delta_s):
    """machine.RTC().datetime(...) moved the board's clock by delta_s."""
    global _T0
    _T0 += delta_s
    if _CFG.get("rtc"):
        try:
            with open(_CFG["rtc"]) as f:
                delta_s += float(f.read())
        except (OSError, ValueError):
            pass
        with open(_CFG["rtc"], "w") as f:
            f.write(repr(delta_s))

ticks_diff = _t.ticks_diff
ticks_add = _t.ticks_add
gmtime = _t.gmtime
localtime = _t.localtime
mktime = _t.mktime


def time():
    return _T0 + (_t.time() - _H0) * SPEED


def time_ns():
    return int(time() * 1000000000)


if SPEED == 1:
    ticks_ms = _t.ticks_ms
    ticks_us = _t.ticks_us
    ticks_cpu = _t.ticks_cpu
    sleep = _t.sleep
    sleep_ms = _t.sleep_ms
    sleep_us = _t.sleep_us
else:
    def ticks_ms():
        return _t.ticks_add(_MS0, int(_t.ticks_diff(_t.ticks_ms(), _MS0) * SPEED))

    def ticks_us():
        return _t.ticks_add(_US0, int(_t.ticks_diff(_t.ticks_us(), _US0) * SPEED))

    ticks_cpu = ticks_us

    def sleep_ms(ms):
        _t.sleep_ms(int(ms / SPEED))

    def sleep_us(us):
        _t.sleep_us(int(us / SPEED))

    def sleep(s):
        _t.sleep(s / SPEED)
