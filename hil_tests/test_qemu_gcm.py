"""gcm.py on the QEMU board (32-bit Cortex-M3, no cryptolib: the viper AES): the unix port's test
script, McGrew-Viega vectors included, passes there too, and a 1 KiB frame's cost is measured."""

import pytest

from mprun import ROOT
from sensorcity.tools.sim.qemu import QemuBoard

pytestmark = pytest.mark.qemu


def test_gcm_script_passes_on_the_32_bit_board():
    with QemuBoard() as board:
        for name in ("firmware/gcm.py", "tests/mp/gcm_vectors.py", "tests/mp/mptest.py",
                     "tests/mp/test_gcm.py", "tests/mp/gcm_bench.py"):
            board.put_file(name.rsplit("/", 1)[1], (ROOT / name).read_bytes())
        out = board.exec("import test_gcm", timeout=120)
        assert out.strip().splitlines()[-1] == "5 passed, 0 failed", out
        assert "viper" in board.exec("import gcm_bench", timeout=120)  # figures: docs/energy.md
