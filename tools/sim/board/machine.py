# The emulated board's `machine` module for the MicroPython unix port: the same interface as the
# ESP32 port's, with the peripherals behind loopback sockets that the host emulator
# (sensorcity.tools.emulate) feeds: I2S samples, P1 bytes, loop-detector edges.
import asyncio
import json
import os
import socket
import sys
import time

_CFG = json.loads(os.getenv("SENSORCITY_EMU") or "{}")
RESET_EXIT = 4  # the host emulator restarts the process, as a board reboots
WDT_EXIT = 3


def _connect(name):
    port = _CFG.get(name)
    if not port:
        raise OSError("emulated board: no %s attached" % name)
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.setblocking(False)
    return s


class Pin:
    IN = 1
    OUT = 2
    PULL_UP = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    _all = {}
    _task = None

    def __init__(self, id, mode=IN, pull=None, value=None):
        self.id = id
        self._value = value or 0
        self._handler = None
        Pin._all[id] = self

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def irq(self, handler=None, trigger=3, hard=False):
        self._handler = handler
        if Pin._task is None:
            Pin._task = asyncio.create_task(_edges())


async def _edges():
    # Each line from the host is "<pin> <state>": the edge happens now, as an interrupt would.
    reader = asyncio.StreamReader(_connect("edges"))
    while True:
        line = await reader.readline()
        if not line:
            return
        pin_id, state = line.split()
        pin = Pin._all.get(int(pin_id))
        if pin is not None:
            pin._value = int(state)
            if pin._handler:
                pin._handler(pin)


class I2S:
    RX = 0
    TX = 1
    MONO = 0
    STEREO = 1

    def __new__(cls, id, sck=None, ws=None, sd=None, mode=0, bits=32, format=0, rate=48000,
                ibuf=20000):
        # The host sends little-endian 32-bit words, as the ESP32's I2S DMA delivers them.
        return _connect("i2s")


class UART:
    INV_RX = 2
    INV_TX = 1

    def __new__(cls, id, baudrate=115200, bits=8, parity=None, stop=1, tx=None, rx=None,
                invert=0, rxbuf=256, timeout=0):
        return _connect("uart%d" % id)


class WDT:
    # On an accelerated clock (time.py here) the timeout is measured on the host's clock, scaled
    # down but never under 2 s: the host's scheduling jitter, multiplied by the speed, must not
    # reset a board that is feeding its watchdog.
    def __init__(self, id=0, timeout=5000):
        self.timeout = max(int(timeout / time.SPEED), 2000) if time.SPEED != 1 else timeout
        self.last = time._t.ticks_ms()
        asyncio.create_task(self._watch())

    def feed(self):
        self.last = time._t.ticks_ms()

    async def _watch(self):
        while True:
            await asyncio.sleep_ms(500)
            if time._t.ticks_diff(time._t.ticks_ms(), self.last) > self.timeout:
                sys.stderr.write("emulated board: watchdog reset\n")
                sys.exit(WDT_EXIT)


class RTC:
    # As the ESP32 port's: the 8th field is microseconds (settimeofday/gettimeofday there)
    def datetime(self, dt=None):
        if dt is None:
            ns = time.time_ns()
            t = time.gmtime(ns // 1000000000)
            return (t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], ns // 1000 % 1000000)
        # the emulated clock (time.py here) moves by the difference, and keeps it over a reset
        secs = _utc_seconds(dt[0], dt[1], dt[2]) + dt[4] * 3600 + dt[5] * 60 + dt[6]
        time._adjust(secs * 1000 + dt[7] // 1000 - time.time_ns() // 1000000)


def _utc_seconds(y, m, d):
    # days since 1970-01-01 of a proleptic Gregorian date (time.mktime would apply the host's TZ)
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468) * 86400


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def reset_cause():
    return int(_CFG.get("reset_cause", PWRON_RESET))


def reset():
    sys.exit(RESET_EXIT)


def soft_reset():
    sys.exit(RESET_EXIT)


def unique_id():
    import binascii
    return binascii.unhexlify(_CFG.get("uid", "a0b1c2d3e4f5"))


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def freq():
    return 240000000
