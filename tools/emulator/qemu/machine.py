# `machine` for the firmware's hw.py on the QEMU board (mps2-an385), copied to the board's /lib:
# a file named like an extensible built-in module comes first, and `umachine` is the port's own.
# The ESP32 API the node uses, over what this board has: the P1 port (the ESP32's UART 2) is
# UART 1 here, on the host's second pty; WDT is the board's CMSDK watchdog and reset() a
# Cortex-M system reset, both of which QEMU carries out by restarting the board in place (the
# flash, a host file behind the PSRAM, keeps its contents). No I2S or Pin interrupts: noise and
# traffic nodes run on the unix-port emulator.
import time

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
    def datetime(self, dt=None):
        if dt is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        if hasattr(time, "_adjust"):
            time._adjust(secs - time.time())


def reset():
    umachine.mem32[_AIRCR] = _SYSRESETREQ
    while True:
        pass


def unique_id():
    return b"\x02qemu0"  # the AN385 has no unique id register: a fixed, locally administered one
