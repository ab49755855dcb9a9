"""A node's clock attacked through its gateway's time frames (issue 14 item 5; the unix-port
cases are in tests/mp/test_intervals.py)."""
import pytest

from conftest import MP_TESTS, run_micropython

pytestmark = [pytest.mark.adversarial, pytest.mark.unixport]


def test_a_gateway_clock_a_year_ahead_then_set_right_leaves_the_node_measuring():
    # once set right, the step back lands among the starts the step forward left unemitted: it
    # undoes that step, and the node goes on at the true time (docs/node.md, Clock)
    run_micropython(MP_TESTS / "year_ahead.py", heap="512K")
