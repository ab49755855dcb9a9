import pytest

from mprun import *  # noqa: F401,F403 (tests import these helpers from conftest)
from mprun import run_micropython
from tiers import (check_fixture_tiers, pytest_runtest_makereport, pytest_runtest_setup,  # noqa: F401
                   schedule)


@pytest.fixture
def micropython():
    return run_micropython


def pytest_collection_modifyitems(config, items):
    check_fixture_tiers(items, __file__)
    schedule(items)
