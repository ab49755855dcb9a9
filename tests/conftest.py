import pytest

from mprun import *  # noqa: F401,F403 (tests import these helpers from conftest)
from mprun import run_micropython


@pytest.fixture
def micropython():
    return run_micropython
