"""The gateway's clock stepped back (a Pi has no RTC: it may start with a clock far ahead, from a
bad NTP answer or a wrong fake-hwclock, and be corrected later). docs/durability.md: the de-dup
set `seen` is bounded by its window and by its size, pruned at most once a minute. The clock
cannot be stepped on this shared machine: the spool is driven with the `now` it takes."""

import pytest

from sensorcity.gateway.spool import Spool

pytestmark = pytest.mark.adversarial
T = 1_795_000_000.0


def test_a_clock_stepped_back_does_not_stop_pruning_seen(tmp_path):
    """One commit while the clock is a year ahead sets the next prune a year ahead
    (pruned_at = now + 60); after the clock is set right, `seen` is never pruned again until
    the clock catches up, whatever its size bound: it grows with every frame, for a year."""
    spool = Spool(tmp_path / "s", seen_max=100)
    try:
        spool.store([("n1", 0, T, b"\x80", 1)], now=T + 365 * 86400)  # the clock a year ahead
        for seq in range(1, 1001):                                      # then set right
            spool.store([("n1", seq, T + seq, b"\x80", 1)], now=T + seq)
        rows = spool.db.execute("SELECT count(*) FROM seen").fetchone()[0]
    finally:
        spool.close()
    assert rows <= 2 * 100, f"seen holds {rows} rows, its bound is 100"
