"""The technician's CLI with values out of range (house rule: a CLI error is one line a person
can act on, exit 2). `sensorcity replay energy --heap` takes any size its syntax allows."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.adversarial
SENSORCITY = Path(sys.executable).with_name("sensorcity")


@pytest.mark.parametrize("heap", ["1", "99999999999k"])
def test_replay_refuses_a_heap_no_board_has_with_a_line_naming_it(tmp_path, heap):
    """--heap 1 ends in MicroPython's "Invalid command line arguments. Use -h option for help."
    (a -h the user never gave), --heap 99999999999k in "exit code -11" (the port segfaults)."""
    p1 = tmp_path / "p1.bin"
    p1.write_bytes(b"/ISK5\\2M550T-1012\r\n\r\n!0000\r\n")
    r = subprocess.run([str(SENSORCITY), "replay", "energy", "--p1", str(p1), "--heap", heap],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--heap" in r.stderr, r.stderr.strip()
