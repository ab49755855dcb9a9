"""A node's clock attacked through its gateway's time frames (issue 14 item 5; the unix-port
cases are in tests/mp/test_intervals.py, this one is not fixed yet)."""
import pytest

from conftest import MP_TESTS, run_micropython

pytestmark = [pytest.mark.adversarial, pytest.mark.unixport]


@pytest.mark.xfail(strict=True, reason="a step back holds the open interval until the clock "
                   "passes it: after a step a year ahead is set right, the node emits nothing for "
                   "a year (the fix needs the walks to go back to the true time past what the "
                   "year-ahead stretch emitted; docs/node.md, Clock)")
def test_a_gateway_clock_a_year_ahead_then_set_right_leaves_the_node_measuring():
    run_micropython(MP_TESTS / "year_ahead.py", heap="512K")
