# The emulated board's clock: MicroPython's `time`, with time passing `speed` times faster than
# on the host (SENSORCITY_EMU {"speed": k}, 1 = real time), so a simulated day takes 24 h / k.
# ticks, time.time and sleeps are scaled alike; the `select` shadow next to this file scales
# poll timeouts, which is how asyncio waits. {"epoch": s} starts time.time() there, as a board's
# RTC runs on through a reset (the host keeps the emulated RTC across restarts).
# A board without an environment (the QEMU board) reads the same settings from /emu.json in its
# flash, which the host writes before each boot; there time.time() counts whole seconds and the
# clock is kept in integers, as floats are single precision. time.time_ns() has the milliseconds
# on both, and machine.RTC().datetime() takes them (its 8th field, microseconds, as on an ESP32).
import json
import os
import sys

_path = sys.path[:]
sys.path.clear()  # import the built-in `time`, not this file
import time as _t  # noqa: E402
sys.path[:] = _path
del _path

_BOARD = not hasattr(os, "getenv")


def _config():
    if not _BOARD:
        return json.loads(os.getenv("SENSORCITY_EMU") or "{}")
    try:
        with open("/emu.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_CFG = _config()
SPEED = _CFG.get("speed", 1) or 1
_MS0 = _t.ticks_ms()
_US0 = _t.ticks_us()
_H0 = _t.time()  # host seconds at start
_T0 = _CFG.get("epoch", _H0)  # board seconds at start
_BOOT_MS = 0  # the board's: ms past _T0's second (it keeps the clock in integers)
_RTC_MS = 0  # what the firmware moved the RTC by, in ms: kept over a reset, as an RTC runs on
try:
    with open(_CFG["rtc"]) as _f:
        _RTC_MS = int(_f.read())
except (KeyError, OSError, ValueError):
    pass
if not _BOARD:
    _T0 += _RTC_MS / 1000


def _adjust(delta_ms):
    """machine.RTC().datetime(...) moved the board's clock by delta_ms."""
    global _T0, _BOOT_MS, _RTC_MS
    if _BOARD:
        _BOOT_MS += delta_ms
    else:
        _T0 += delta_ms / 1000
    _RTC_MS += delta_ms
    if _CFG.get("rtc"):
        with open(_CFG["rtc"], "w") as f:
            f.write(str(_RTC_MS))

ticks_diff = _t.ticks_diff
ticks_add = _t.ticks_add
gmtime = _t.gmtime
localtime = _t.localtime
mktime = _t.mktime


def time():
    return _T0 + (_t.time() - _H0) * SPEED


if _BOARD:
    _K = int(SPEED)
    _PERIOD = _t.ticks_add(0, -1) + 1  # where ticks wrap: 2^30 on a 32-bit board

    def _elapsed_ms():
        # host milliseconds since boot; ticks_diff holds for half a period (6 days)
        return _t.ticks_diff(_t.ticks_ms(), _MS0)

    # the host's epoch is the board's clock when it was powered up; it has run since
    # ("epoch_ms": the same in milliseconds, for the whole-second clock of a board)
    if "epoch_ms" in _CFG:
        _T0 += _CFG["epoch_ms"] // 1000
        _BOOT_MS = _CFG["epoch_ms"] % 1000 + _t.time_ns() // 1000000 * _K
    _BOOT_MS += _RTC_MS

    def time():  # noqa: F811
        return int(_T0) + (_BOOT_MS + _elapsed_ms() * _K) // 1000

    def time_ns():
        return (int(_T0) * 1000 + _BOOT_MS + _elapsed_ms() * _K) * 1000000
else:
    def time_ns():
        return int(time() * 1000000000)


if _BOARD and _K != 1:
    def ticks_ms():
        return (_MS0 + _elapsed_ms() * _K) % _PERIOD

    def ticks_us():
        ms = _elapsed_ms()
        # the microsecond ticks wrap every 537 s: place their difference next to the ms one
        d = (_t.ticks_diff(_t.ticks_us(), _US0) - ms * 1000) % _PERIOD
        if d >= _PERIOD // 2:
            d -= _PERIOD
        return (_US0 + (ms * 1000 + d) * _K) % _PERIOD

    ticks_cpu = ticks_us

    def sleep_ms(ms):
        _t.sleep_ms(ms // _K)

    def sleep_us(us):
        _t.sleep_us(us // _K)

    def sleep(s):
        _t.sleep_ms(int(s * 1000) // _K)
elif SPEED == 1:
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
