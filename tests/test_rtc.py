"""A node's clock over a reset: the hardware layer (firmware/hw.py) sets the RTC to the
millisecond, so the next boot reads the time it was set to, run on since.

The ESP32 port's machine.RTC().datetime() takes microseconds as its 8th field (tv_usec, handed to
settimeofday) and time.time_ns() reads them back (gettimeofday), both in MicroPython's
ports/esp32; the emulated board (tools/sim/board) keeps them the same way. Setting the field to 0
put the RTC up to a second behind: a boot then read the clock up to a second behind the
interval it had closed, so at 1 s intervals it could close that start again (docs/node.md,
"Clock").
"""
import json
import os
import subprocess
import time

import pytest

from mprun import FIRMWARE, MICROPYTHON, MP_TESTS, ROOT

pytestmark = pytest.mark.unixport

BOARD = ROOT / "tools" / "sim" / "board"


def boot(rtc, *args):
    """One boot of the emulated board running tests/mp/rtc_reset.py: the ms it read last, and
    the host's ms before and after it ran."""
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(BOARD), str(FIRMWARE), str(MP_TESTS), ".frozen"]),
               SENSORCITY_EMU=json.dumps({"speed": 1, "rtc": str(rtc)}))
    before = time.time() * 1000
    proc = subprocess.run([MICROPYTHON, str(MP_TESTS / "rtc_reset.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60)
    after = time.time() * 1000
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1]), before, after


@pytest.mark.parametrize("offset", [5900, 5100, -3300, 250])
def test_the_rtc_keeps_the_milliseconds_it_was_set_to_over_a_reset(tmp_path, offset):
    rtc = tmp_path / "rtc"
    set_ms, before, after = boot(rtc, "set", offset)
    assert before + offset - 5 <= set_ms <= after + offset + 5, (set_ms - before, offset)
    read_ms, before, after = boot(rtc, "read")  # the reset: a new boot, the RTC ran on
    # the emulated board's clock is the host's plus what was set: the boot reads it to the ms
    # (before: up to 1000 ms off, the sub-second part lost)
    assert before + offset - 5 <= read_ms <= after + offset + 5, \
        (read_ms - before - offset, read_ms - after - offset)
