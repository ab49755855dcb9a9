"""Every tests/mp/test_*.py runs under the MicroPython unix port with firmware/ on its path.

Each script asserts on its own and prints a last line `N passed, 0 failed`.
"""
import pytest

from conftest import MP_TESTS, run_micropython

# scripts holding issue 11's cases (a full flash, a re-flashed node, downlink replays, clock attacks)
ADVERSARIAL = {"test_store", "test_node", "test_sender", "test_intervals"}
SCRIPTS = [pytest.param(p, id=p.stem, marks=[pytest.mark.adversarial] * (p.stem in ADVERSARIAL))
           for p in sorted(MP_TESTS.glob("test_*.py"))]


@pytest.mark.unixport
@pytest.mark.parametrize("script", SCRIPTS)
def test_micropython_script(script):
    proc = run_micropython(script, heap="512K")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.endswith("0 failed"), proc.stdout
