import os
import shutil
from pathlib import Path

import pytest

from mprun import *  # noqa: F401,F403 (both tiers' conftest modules offer the same helpers)
from rigs.targets import NODE_TARGETS, node_target
from rigs.mosquitto import Mosquitto
from tiers import (check_fixture_tiers, pytest_runtest_makereport, pytest_runtest_setup,  # noqa: F401
                   schedule)


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto (Debian package) on a free loopback port, with persistence: its port."""
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is not installed: run `make test` (it installs it) or "
                    "`apt-get install mosquitto`")
    broker = Mosquitto(tmp_path / "mosquitto")
    yield broker.port
    broker.stop()


# --- the rig's node targets (rig.py) ---------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--port", help="a real board's serial device: adds the `board` node target")


def pytest_generate_tests(metafunc):
    if "node" in metafunc.fixturenames:
        names = [n for n in NODE_TARGETS if n != "board" or metafunc.config.getoption("--port")]
        metafunc.parametrize("node", [pytest.param(n, id=n, marks=[getattr(pytest.mark, m)
                                                                   for m in NODE_TARGETS[n]["marks"]])
                                      for n in names], indirect=True)


def pytest_collection_modifyitems(config, items):
    check_fixture_tiers(items, __file__)
    schedule(items)
    if config.getoption("--port"):
        return
    skip = pytest.mark.skip(reason="needs a real board: give --port DEV")
    for item in items:
        if "board" in item.keywords and "node" not in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture
def node(request):
    """A node target (rig.NODE_TARGETS): start(config) -> the gateway's serial device; stop()."""
    target = node_target(request.param, port=request.config.getoption("--port"))
    yield target
    target.stop()


# the arm64 run takes minutes and Debian's mirror: its own target (`make test-pi`), not collected
# by `make test` (so not a skipped tier there)
collect_ignore = [] if os.environ.get("SENSORCITY_TEST_PI") == "1" else ["test_pi.py"]
