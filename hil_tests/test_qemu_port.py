"""The QEMU tier's board: MicroPython built from Debian's source for mps2-an385 (Cortex-M3).

Proves what the node firmware relies on there: a clock that advances at real speed and wraps at
2^30 as on an ESP32, 31-bit small ints and 32-bit viper ints, select.poll and asyncio reading the
UARTs, and files copied in over the raw REPL that import and survive a soft reset.
References are independent of the board: the host's clock, Python's unbounded ints, zlib.crc32.
"""

import os
import threading
import time
import zlib

import pytest
import serial

from sensorcity.tools.sim.qemu import TICKS_PERIOD, QemuBoard

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def board():
    with QemuBoard() as b:
        yield b


def values(out):
    return [int(v) for v in out.split()]


def test_ticks_advance_at_real_speed(board):
    t0 = time.monotonic()
    ms, us = values(board.exec(
        "import time\n"
        "m = time.ticks_ms(); u = time.ticks_us()\n"
        "time.sleep_ms(400)\n"
        "print(time.ticks_diff(time.ticks_ms(), m), time.ticks_diff(time.ticks_us(), u))"))
    host = time.monotonic() - t0
    # the board's clock runs no slower than the sleep asked and no faster than the host's
    # (a busy host only wakes the board late: both bounds hold at any load)
    assert 400 <= ms <= host * 1000 + 2, (ms, host)
    assert 399_000 <= us  # ms ticks counted 400 whole ms
    assert abs(us / 1000 - ms) <= 2
    assert host >= 0.4  # the board's 400 ms took at least 400 ms of real time


def test_ticks_wrap_at_2_pow_30():
    # Boot 3 s before the wrap: ticks_ms and ticks_us both pass 2^30 (2^30 ms is 2^30 * 1000 us).
    with QemuBoard(ticks_us=TICKS_PERIOD * 1000 - 3_000_000) as b:
        out = b.exec(
            "import time\n"
            "m0 = time.ticks_ms(); u0 = time.ticks_us()\n"
            "while time.ticks_ms() >= m0:\n"
            "    time.sleep_ms(20)\n"
            "m1 = time.ticks_ms(); u1 = time.ticks_us()\n"
            "print(m0, u0, m1, u1, time.ticks_diff(m1, m0), time.ticks_diff(u1, u0),"
            " time.ticks_add(m0, 5000), time.ticks_add(u0, 5000000), time.ticks_diff(m0, m1))",
            timeout=15)
    m0, u0, m1, u1, dm, du, m_add, u_add, back = values(out)
    assert TICKS_PERIOD - 3000 <= m0 < TICKS_PERIOD and u0 < TICKS_PERIOD
    assert TICKS_PERIOD - 3_000_000 <= u0
    assert 0 <= m1 < 1000 and 0 <= u1 < 1_000_000  # wrapped to small values
    # elapsed time across the wrap, computed with unbounded ints on the host
    assert dm == m1 + TICKS_PERIOD - m0 and 0 < dm < 3000
    assert du == u1 + TICKS_PERIOD - u0 and abs(du / 1000 - dm) <= 2
    assert back == -dm
    assert m_add == (m0 + 5000) % TICKS_PERIOD and m_add < m0
    assert u_add == (u0 + 5_000_000) % TICKS_PERIOD


def test_small_ints_are_31_bit(board):
    # A small int lives in the object word; 2^30 needs a heap-allocated big int, as on an ESP32.
    out = board.exec(
        "import micropython, sys\n"
        "def grow(a):\n"
        "    micropython.heap_lock()\n"
        "    try:\n"
        "        b = a + 1\n"
        "        try:\n"
        "            a + 2\n"
        "            r = 0\n"
        "        except MemoryError:\n"
        "            r = 1\n"
        "    finally:\n"
        "        micropython.heap_unlock()\n"
        "    return b, r\n"
        "b, r = grow(int('1073741822'))\n"
        "print(b, ('small', 'big')[r], sys.maxsize)")
    b, kind, maxsize = out.split()
    assert (int(b), kind, int(maxsize)) == (2**30 - 1, "big", 2**31 - 1)


def test_viper_ints_wrap_at_32_bits(board):
    def wrap32(v):
        return (v + 2**31) % 2**32 - 2**31

    out = board.exec(
        "import micropython\n"
        "@micropython.viper\n"
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n"
        "@micropython.viper\n"
        "def mul(a: int, b: int) -> int:\n"
        "    return a * b\n"
        "@micropython.native\n"
        "def nsum(n):\n"
        "    s = 0\n"
        "    for i in range(n):\n"
        "        s += i\n"
        "    return s\n"
        "print(add(0x7fffffff, 1), mul(100000, 100000), mul(-46341, 46341), nsum(100000))")
    assert values(out) == [wrap32(2**31), wrap32(10**10), wrap32(-46341 * 46341), 4999950000]


def test_select_poll_on_stdin(board):
    board.start(
        "import select, sys, time\n"
        "p = select.poll()\n"
        "p.register(sys.stdin, select.POLLIN)\n"
        "t = time.ticks_ms(); idle = p.poll(300); waited = time.ticks_diff(time.ticks_ms(), t)\n"
        "print('ready', len(idle), waited >= 300)\n"
        "ev = p.poll(5000)\n"
        "print('got', ev[0][1] & select.POLLIN != 0, sys.stdin.buffer.read(3))")
    assert board.read_until(b"\r\n").endswith(b"ready 0 True\r\n")
    board.serial.write(b"abc")
    assert board.read_until(b"\r\n") == b"got True b'abc'\r\n"
    board.read_until(b"\x04\x04>")


def test_asyncio_echoes_a_line_from_the_uart(board):
    # A ticker keeps running while the reader waits: reading the UART does not block the loop.
    board.start(
        "import asyncio, sys\n"
        "ticks = 0\n"
        "async def ticker():\n"
        "    global ticks\n"
        "    while True:\n"
        "        await asyncio.sleep_ms(50)\n"
        "        ticks += 1\n"
        "async def main():\n"
        "    t = asyncio.create_task(ticker())\n"
        "    reader = asyncio.StreamReader(sys.stdin.buffer)\n"
        "    print('ready')\n"
        "    line = await reader.readline()\n"
        "    t.cancel()\n"
        "    sys.stdout.write('echo %d %s' % (ticks, line.decode()))\n"
        "asyncio.run(main())")
    board.read_until(b"ready\r\n")
    time.sleep(1.0)
    board.serial.write(b"hello node\n")
    _, ticks, text = board.read_until(b"\n", timeout=5).decode().split(" ", 2)
    assert text == "hello node\r\n"  # stdout is a text stream: \n goes out as \r\n
    # the ticker ran while the reader waited (a blocked loop counts none; a busy host wakes the
    # board's 50 ms sleeps late, so ask for far fewer than 1 s of them)
    assert int(ticks) >= 4, ticks
    board.read_until(b"\x04\x04>")


def test_sensor_uart_is_lossless_and_pollable(board):
    # More than the board's 8 KiB receive ring: the line is held back, not dropped, when it fills.
    data = os.urandom(40_000)
    board.start(
        "import asyncio, binascii, machine\n"
        "u = machine.UART(1, 115200)\n"
        "async def main():\n"
        "    r = asyncio.StreamReader(u)\n"
        "    print('ready')\n"
        "    crc = n = 0\n"
        "    while n < %d:\n"
        "        b = await r.read(1024)\n"
        "        crc = binascii.crc32(b, crc); n += len(b)\n"
        "    print(n, crc)\n"
        "asyncio.run(main())" % len(data))
    board.read_until(b"ready\r\n")
    with serial.Serial(board.sensor_port) as line:
        writer = threading.Thread(target=line.write, args=(data,))
        writer.start()
        out = board.read_until(b"\r\n", timeout=30)
        writer.join()
    assert values(out.decode()) == [len(data), zlib.crc32(data)]
    board.read_until(b"\x04\x04>")


def test_files_copied_in_import_and_survive_soft_reset(board):
    body = b"".join(b"C%d = %d\n" % (i, i * i) for i in range(400))  # ~5 KiB, several chunks
    board.put_file("sq.py", body)
    board.put_file("lib/greet.py", b"def hello(n):\n    return 'hi %d' % n\n")
    out = board.exec("import sq, greet\nprint(sq.C399, greet.hello(7), greet.__file__)")
    assert out.split() == [str(399 * 399), "hi", "7", "/lib/greet.py"]
    board.put_file("main.py", b"import sq\nprint('main ran', sq.C12)\n")
    board.soft_reset()
    assert board.read_until(b">>> ", timeout=10).startswith(b"main ran 144\r\n")
    board.enter_raw_repl()
    assert board.exec("import os\nprint(sorted(os.listdir()))").strip() == \
        "['lib', 'main.py', 'sq.py']"
