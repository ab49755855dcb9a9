"""Marks match tiers: a test that runs the MicroPython unix port is marked `unixport`, one that runs
QEMU `qemu`, one that starts a mosquitto `mosquitto` (so `-m` selects a tier and nothing in it
hides unmarked). Both conftest modules take these hooks; each checks only its own folder's tests.

- At collection: a fixture that implies a tier (`mosquitto`, `micropython`) without its mark is
  a collection error.
- While a test runs: every process it starts (subprocess.Popen, in this process: the rigs, the
  emulated nodes' threads) is named by its program; a tier's program started by a test without
  that tier's mark fails the test. `sensorcity emulate|demo|replay` stands for the unix port, or
  QEMU with `--target qemu`; their own children are not seen, so the command line is the tier.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

FIXTURE_TIERS = {"mosquitto": "mosquitto", "micropython": "unixport"}
FIRMWARE_COMMANDS = ("emulate", "demo", "replay")

_current: list | None = None  # (tier, Popen) the running test started; None between tests
_popen_init = subprocess.Popen.__init__


def tier_of(args) -> str | None:
    if isinstance(args, (str, bytes, os.PathLike)):
        argv = os.fsdecode(args).split()
    else:
        argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    if not argv:
        return None
    prog = os.path.basename(str(argv[0]))
    if prog == "micropython":
        return "unixport"
    if prog.startswith("qemu-system-"):
        return "qemu"
    if prog == "mosquitto":
        return "mosquitto"
    if prog == "sensorcity" and len(argv) > 1 and argv[1] in FIRMWARE_COMMANDS:
        return "qemu" if any(a == "qemu" and b == "--target" for b, a in zip(argv, argv[1:])) \
            else "unixport"
    return None


def _recording_init(self, args, *a, **kw):
    if _current is not None and (tier := tier_of(args)):
        _current.append((tier, self))
    _popen_init(self, args, *a, **kw)


def started(procs) -> set[str]:
    """The tiers of the processes a test started: a `sensorcity` command that exited 2 (a
    refused command line) started no firmware."""
    return {tier for tier, p in procs
            if not (p.returncode == 2 and tier_of(p.args) and "sensorcity" in str(p.args))}


subprocess.Popen.__init__ = _recording_init


def _mine(item, conftest_file: str) -> bool:
    return Path(str(item.path)).is_relative_to(Path(conftest_file).parent)


def marks(item) -> set[str]:
    return {m.name for m in item.iter_markers()}


def check_fixture_tiers(items, conftest_file: str) -> None:
    """Collection: fixtures that imply a tier need its mark."""
    wrong = [f"{item.nodeid}: fixture `{f}` needs @pytest.mark.{tier}"
             for item in items if _mine(item, conftest_file)
             for f, tier in FIXTURE_TIERS.items()
             if f in getattr(item, "fixturenames", ()) and tier not in marks(item)]
    if wrong:
        raise pytest.UsageError("tests without their tier's mark:\n  " + "\n  ".join(wrong))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    global _current
    _current = []  # before any fixture of the test (a module's fixture too) starts


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    global _current
    outcome = yield
    if call.when != "teardown" or _current is None:
        return
    missing = sorted(started(_current) - marks(item))
    _current = None
    report = outcome.get_result()
    if missing and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} started the {', '.join(missing)} tier without its "
                           f"mark: add @pytest.mark.{' and @pytest.mark.'.join(missing)} "
                           "(tests/tiers.py)")


# --- running tiers side by side (`make test`: pytest-xdist, --dist loadgroup) -----------------
def schedule(items) -> None:
    """A test file is one unit of work (its module fixtures are built once) unless its tests
    name an xdist_group; the emulated-hardware files, the longer units, go first."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(str(item.path)))
    items.sort(key=lambda item: "hil_tests" not in Path(str(item.path)).parts)
