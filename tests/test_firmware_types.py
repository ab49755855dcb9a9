"""The firmware type-checks against MicroPython's ESP32 stubs (micropython-esp32-stubs, installed
by `make install` into build/typings): hw.py's use of machine.I2S, UART, Pin, WDT and RTC is checked
against the documented ESP32 API, not against the emulated board."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPINGS = ROOT / "build" / "typings"


def test_firmware_type_checks_against_esp32_stubs():
    assert (TYPINGS / "machine.pyi").exists(), "run `make install`: it installs the stubs"
    modules = sorted(p.name for p in (ROOT / "firmware").glob("*.py") if p.name != "__init__.py")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--custom-typeshed-dir", str(TYPINGS),
         "--python-version", "3.11", "--no-site-packages", "--check-untyped-defs",
         "--explicit-package-bases", "--no-incremental", "--cache-dir", "/dev/null",
         *modules],
        cwd=ROOT / "firmware", env={"MYPYPATH": str(TYPINGS), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=600)
    # the stubs themselves carry a few errors of their own; only the firmware's count
    ours = [line for line in proc.stdout.splitlines()
            if line.split(":", 1)[0] in modules and ": error:" in line]
    assert not ours, "\n".join(ours)
    assert "checked" in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
