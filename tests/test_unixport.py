"""Every tests/mp/test_*.py runs under the MicroPython unix port with firmware/ on its path.

Each script asserts on its own and prints a last line `N passed, 0 failed`.
"""
import pytest

from conftest import MP_TESTS, run_micropython

SCRIPTS = sorted(p for p in MP_TESTS.glob("test_*.py"))


@pytest.mark.unixport
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_micropython_script(script):
    proc = run_micropython(script, heap="512K")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.endswith("0 failed"), proc.stdout
