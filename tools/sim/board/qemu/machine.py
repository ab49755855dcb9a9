# `machine` for the firmware's hw.py on the QEMU board (mps2-an385), copied to the board's /lib:
# a file named like an extensible built-in module comes first, and `umachine` is the port's own.
# The ESP32 API the node uses, over what this board has: the P1 port (the ESP32's UART 2) is
# UART 1 here, on the host's second pty; WDT is the board's CMSDK watchdog and reset() a
# Cortex-M system reset, both of which QEMU carries out by restarting the board in place (the
# flash, a host file behind the PSRAM, keeps its contents). I2S (a noise node's microphone, which
# has no P1 port) also comes in on UART 1, in the compact format below. So do a traffic node's loop
# detector edges (it has neither): Pin.irq below.
import io
import time
from array import array

import micropython
import umachine
from micropython import const
from umachine import *  # noqa: F401,F403

_WDOG = const(0x40008000)  # CMSDK APB watchdog, clocked at the 25 MHz system clock
_WDOG_LOAD = const(0x000)
_WDOG_CONTROL = const(0x008)
_WDOG_INTCLR = const(0x00C)
_WDOG_LOCK = const(0xC00)
_UNLOCK = 0x1ACCE551
_AIRCR = const(0xE000ED0C)
_SYSRESETREQ = 0x05FA0004


class UART:
    INV_TX = 1
    INV_RX = 2

    def __new__(cls, id, baudrate=115200, bits=8, parity=None, stop=1, tx=None, rx=None,
                invert=0, rxbuf=256, timeout=0):
        return umachine.UART(1, baudrate, bits=bits, parity=parity, stop=stop, timeout=timeout)


class Pin:
    # A pin as a peripheral's constructor takes it (the microphone's I2S lines), or a loop
    # detector's input. The AN385 has no GPIO for the firmware to drive and no pin interrupts: the
    # host sends each edge as a line "<pin> <state>\n" on UART 1, and a task sets the pin's value
    # and calls its handler at once, as the interrupt would (docs/qemu.md).
    IN = 1
    OUT = 2
    PULL_UP = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    _irq = {}  # pin id -> the Pin whose irq() is set
    _task = None

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._value = value or 0
        self._handler = None

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def irq(self, handler=None, trigger=3, hard=False):
        self._handler = handler
        Pin._irq[self.id] = self
        if Pin._task is None:
            import asyncio
            Pin._task = asyncio.create_task(_edges(asyncio))


async def _edges(asyncio):
    # The edge lines, parsed digit by digit from one buffer: nothing allocated per edge. A line
    # with anything but "<digits> <digits>" in it (joined mid-line, a garbled byte) is dropped.
    reader = asyncio.StreamReader(umachine.UART(1, timeout=0))
    buf = bytearray(32)
    mv = memoryview(buf)
    irq = Pin._irq
    num = -1  # the field being read, -1 before its first digit
    pin_id = -1  # the first field, once its space has come
    bad = False
    while True:
        n = await reader.readinto(mv)
        for i in range(n or 0):
            c = buf[i]
            if 48 <= c <= 57:
                num = (num * 10 if num > 0 else 0) + c - 48
            elif c == 32 and pin_id < 0 and num >= 0:
                pin_id = num
                num = -1
            elif c == 10:
                if pin_id >= 0 and num >= 0 and not bad:
                    pin = irq.get(pin_id)
                    if pin is not None:
                        pin._value = 1 if num else 0
                        if pin._handler:
                            pin._handler(pin)
                num = -1
                pin_id = -1
                bad = False
            else:
                bad = True


# The microphone line (docs/qemu.md): the UART carries about 10 kB/s, a 16 kHz microphone's
# 32-bit words 64 kB/s. So the host sends block floating point: frames of a sync byte 0x80, a shift
# (0..24) and _FRAME signed bytes (-127..127, never 0x80), each sample the raw word >> shift. A
# frame cut short (a byte dropped, a board reset mid-stream) ends at the next 0x80.
_SYNC = const(0x80)
_FRAME = const(32)
_PHASE = const(0)  # 0: wait for a sync byte, 1: the shift comes next, 2: samples
_SHIFT = const(1)
_LEFT = const(2)  # samples left in the frame
_SKIPPED = const(3)  # bytes skipped while out of step
_POLL = const(3)  # the stream ioctl for poll
_RD = const(1)  # select.POLLIN
_READY = const(256)  # bytes waiting before an asyncio reader wakes: a DMA buffer's worth


@micropython.viper
def _widen(src: ptr8, n: int, out: ptr32, at: int, st: ptr32) -> int:
    # n line bytes -> 32-bit words at out[at:]; returns the number of words (at most n)
    phase = st[_PHASE]
    shift = st[_SHIFT]
    left = st[_LEFT]
    skipped = 0
    j = at
    for i in range(n):
        b = src[i]
        if b == _SYNC:
            phase = 1  # a frame cut short ends here
        elif phase == 2:
            out[j] = ((b ^ 0x80) - 0x80) << shift
            j += 1
            left -= 1
            if left == 0:
                phase = 0
        elif phase == 1 and b <= 24:
            shift = b
            left = _FRAME
            phase = 2
        else:
            phase = 0
            skipped += 1
    st[_PHASE] = phase
    st[_SHIFT] = shift
    st[_LEFT] = left
    st[_SKIPPED] += skipped
    return j - at


class I2S(io.IOBase):
    # ESP32 machine.I2S, receive side: a MEMS microphone's 32-bit mono words from the host. As on
    # an ESP32, readinto blocks until the buffer is full, unless asyncio polls the object: then it
    # returns what has arrived. The DMA buffer (ibuf) is the UART's ring, outside the heap as
    # ESP-IDF's DMA buffers are.
    RX = 0
    TX = 1
    MONO = 0
    STEREO = 1

    def __init__(self, id, sck=None, ws=None, sd=None, mck=None, mode=RX, bits=32,
                 format=MONO, rate=16000, ibuf=20000):
        if mode != I2S.RX or bits != 32 or format != I2S.MONO:
            raise ValueError("emulated I2S: a 32-bit mono microphone (RX) only")
        self.rate = rate
        self._u = umachine.UART(1, timeout=0)
        self._chunk = bytearray(128)
        self._st = array("i", (0, 0, 0, 0))
        self._async = False

    def readinto(self, buf):
        cap = len(buf) >> 2
        n = 0
        u = self._u
        while n < cap:
            k = u.any()
            if k == 0:
                if self._async:
                    break
                time.sleep_ms(1)
                continue
            if k > cap - n:  # each byte gives a word at most
                k = cap - n
            if k > 128:
                k = 128
            n += _widen(self._chunk, u.readinto(self._chunk, k), buf, n, self._st)
        return n * 4

    def ioctl(self, req, arg):
        if req == _POLL:
            self._async = True
            return arg & _RD if self._u.any() >= _READY else 0
        return 0

    def deinit(self):
        pass

    def skipped(self):
        """Line bytes dropped while out of step with the frames (the emulator's own count)."""
        return self._st[_SKIPPED]


class WDT:
    # The counter raises an interrupt (NMI here, which halts the board) when it first runs out
    # and resets the board when it runs out again: two halves make the timeout.
    def __init__(self, id=0, timeout=5000):
        mem32 = umachine.mem32
        mem32[_WDOG + _WDOG_LOCK] = _UNLOCK
        mem32[_WDOG + _WDOG_LOAD] = timeout * 12500  # half the timeout in 25 MHz cycles
        mem32[_WDOG + _WDOG_CONTROL] = 3  # count with interrupt, then reset
        mem32[_WDOG + _WDOG_LOCK] = 0

    def feed(self):
        mem32 = umachine.mem32
        mem32[_WDOG + _WDOG_LOCK] = _UNLOCK
        mem32[_WDOG + _WDOG_INTCLR] = 1  # reloads the counter
        mem32[_WDOG + _WDOG_LOCK] = 0


class RTC:
    # The AN385 has no battery-backed RTC: the emulator's clock (time.py beside this file, when
    # the host put it on the board) keeps the setting across a reset, in the board's flash.
    # As the ESP32 port's RTC: the 8th field is microseconds.
    def datetime(self, dt=None):
        if dt is None:
            ns = time.time_ns()
            t = time.gmtime(ns // 1000000000)
            return (t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], ns // 1000 % 1000000)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        if hasattr(time, "_adjust"):
            time._adjust(secs * 1000 + dt[7] // 1000 - time.time_ns() // 1000000)


def reset():
    umachine.mem32[_AIRCR] = _SYSRESETREQ
    while True:
        pass


def unique_id():
    return b"\x02qemu0"  # the AN385 has no unique id register: a fixed, locally administered one
