# The hardware layer: the only firmware module that imports `machine`. Written against
# MicroPython's documented ESP32 API (machine.I2S, machine.UART with invert, machine.Pin.irq,
# machine.WDT, machine.RTC); the emulated board provides the same `machine` interface.
import io
import select
import sys
import time

import machine
from micropython import const

import board

EPOCH_OFFSET = const(946684800)  # seconds from 1970 to 2000, the ESP32 port's epoch
_I2S_ID = const(0)
_P1_UART = const(2)
_STREAM_POLL = const(3)  # MicroPython's stream ioctl number for poll


def _epoch_base():
    # MicroPython on the ESP32 counts time.time() from 2000; the unix port from 1970.
    return EPOCH_OFFSET if time.gmtime(0)[0] == 2000 else 0


class Hardware:
    def __init__(self):
        self.base = _epoch_base()
        self.wdt = None
        self._offset_ms = 0

    # --- clock -----------------------------------------------------------------------------
    def epoch_ms(self):
        """Wall-clock milliseconds since 1970 (set from the gateway's time frames). Read at boot
        and after a setting: time_ns() is a big int (it allocates)."""
        return time.time_ns() // 1000000 + self.base * 1000 + self._offset_ms

    def set_epoch_ms(self, ms):
        # The ESP32 port's RTC.datetime() takes microseconds as its 8th field (settimeofday's
        # tv_usec) and time.time_ns() reads them back, over a reset too: set to the ms, a boot
        # reads the time it was set to, run on since (with 0 there it read up to 1 s behind).
        # What the RTC cannot take (a board without one) is held here.
        secs = ms // 1000 - self.base
        tm = time.gmtime(secs)
        try:
            machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5],
                                    ms % 1000 * 1000))
        except (OSError, AttributeError):
            pass
        self._offset_ms = 0
        self._offset_ms = ms - self.epoch_ms()

    # --- link ------------------------------------------------------------------------------
    def console_link(self):
        """(readable, write) on the USB serial console, the link of a node wired to its gateway.

        Ctrl-C must not interrupt the firmware: COBS frames carry any byte but 0x00."""
        import micropython
        micropython.kbd_intr(-1)
        rd = getattr(sys.stdin, "buffer", sys.stdin)
        wr = getattr(sys.stdout, "buffer", sys.stdout)
        return ConsoleIn(rd), wr.write

    def wifi_up(self, cfg):
        """Join the Wi-Fi of the node's link config (`ssid`, `psk`); True once connected. A link
        without an ssid has its network already (wired Ethernet, the emulated board's host)."""
        if not cfg.get("ssid"):
            return True
        try:
            import network
        except ImportError:
            return True
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            wlan.connect(cfg["ssid"], cfg["psk"])
        return wlan.isconnected()

    # --- sensors ---------------------------------------------------------------------------
    def microphone(self, rate, ibuf=20000):
        return machine.I2S(_I2S_ID, sck=machine.Pin(board.I2S_SCK), ws=machine.Pin(board.I2S_WS),
                           sd=machine.Pin(board.I2S_SD), mode=machine.I2S.RX, bits=32,
                           format=machine.I2S.MONO, rate=rate, ibuf=ibuf)

    def p1_uart(self, dsmr_version=5):
        # DSMR 2.2/3: 9600 7E1, DSMR 4/5: 115200 8N1; the P1 signal is inverted (open collector).
        if dsmr_version >= 4:
            baud, bits, parity = 115200, 8, None
        else:
            baud, bits, parity = 9600, 7, 0
        return machine.UART(_P1_UART, baudrate=baud, bits=bits, parity=parity, stop=1,
                            rx=board.P1_RX, tx=board.P1_TX, invert=machine.UART.INV_RX,
                            rxbuf=2048, timeout=0)

    def loop_inputs(self, lanes, ring):
        """Pin interrupts for each lane's loops A and B, pushing (lane, loop, state, t_us)."""
        pins = []
        for lane in range(lanes):
            for loop in range(2):
                pin = machine.Pin(board.LOOP_PINS[lane * 2 + loop], machine.Pin.IN)
                pin.irq(_edge_handler(ring, lane + 1, loop, pin),
                        machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
                pins.append(pin)
        return pins

    # --- health and safety -----------------------------------------------------------------
    def start_watchdog(self, timeout_ms):
        self.wdt = machine.WDT(timeout=timeout_ms)

    def feed_watchdog(self):
        if self.wdt:
            self.wdt.feed()

    def reset(self):
        machine.reset()

    def reset_cause(self):
        return machine.reset_cause()

    def free_heap(self):
        import gc
        return gc.mem_free()

    def mac(self):
        try:
            import network
            return network.WLAN(network.STA_IF).config("mac")
        except (ImportError, OSError, ValueError):
            return machine.unique_id()


class ConsoleIn(io.IOBase):
    """The console as the link reads it: what has arrived, never more. A board's
    sys.stdin.buffer.read(n) waits for all n bytes (the unix port's returns what is there), which
    stalled the node's reader and every task with it on the QEMU board."""

    def __init__(self, stream):
        self.s = stream
        self.p = select.poll()
        self.p.register(stream, select.POLLIN)

    def readinto(self, buf):
        mv = memoryview(buf)
        n = 0
        while n < len(mv) and self.p.poll(0):
            self.s.readinto(mv[n:n + 1])
            n += 1
        return n

    def read(self, n):
        buf = bytearray(n)
        return bytes(memoryview(buf)[:self.readinto(buf)])

    def ioctl(self, req, arg):
        if req == _STREAM_POLL:  # asyncio waits on this object as on the console itself
            return arg & select.POLLIN if self.p.poll(0) else 0
        return 0


def _edge_handler(ring, lane, loop, pin):
    ticks_us = time.ticks_us

    def handler(p):
        ring.push(lane, loop, p.value(), ticks_us())
    return handler


def platform():
    return sys.platform
