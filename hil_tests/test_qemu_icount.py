"""The instruction-count harness of `make bench` (bench/icount_bench.py, issue 14 item 2) keeps
measuring what it says: on the QEMU board under -icount shift=0 its clock counts guest
instructions, checked against the ISA (a two-instruction Thumb loop costs two instructions an
iteration), work twice as long counts twice as much, and two boards started apart count the
same work alike. No speed is asserted: the counts are the same on any host."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import icount_bench  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.unixport]  # the unix port writes the flash image
TICK = 40  # instructions per count of the board's 25 MHz timer


def counts(tmp_path):
    tmp_path.mkdir()
    with icount_bench.IcountBoard(tmp_path, icount_bench.board_files(tmp_path)) as b:
        b.call("spin_asm(1000)")  # first calls fill the bytecode's lookup caches
        b.call("spin(10)")
        asm = [icount_bench.first(b.call(f"spin_asm({n})"), "asm") for n in (100000, 200000)]
        spin = [icount_bench.first(b.call(f"spin({n})"), "spin") for n in (1000, 2000, 4000)]
        p1 = b.call("p1('tel.txt', 2, 512, (1, 2))")
    return asm, spin, p1


def test_the_board_clock_counts_instructions_alike_on_two_boards(tmp_path):
    one = counts(tmp_path / "a")
    two = counts(tmp_path / "b")
    for asm, spin, p1 in (one, two):
        # the ISA's count: 100,000 more iterations of subs + bne are 200,000 more instructions
        assert abs((asm[1][0] - asm[0][0]) - 2 * 100000) <= 2 * TICK, asm
        # twice the bytecode loop, twice the count (to the clock's resolution)
        d1, d2 = spin[1][0] - spin[0][0], spin[2][0] - spin[1][0]
        # each reading is off by under a count: s2 - 3 s1 + 2 s0 by under six
        assert d1 > 100 * TICK and abs(d2 - 2 * d1) <= 6 * TICK, spin
        assert icount_bench.per_unit(p1, "feed") > 0
    # the same work on another board: the same count, to the timer's 40-instruction step (the
    # window's phase against the timer depends on when the host's REPL input arrived)
    for (a, b) in zip(one[0] + one[1], two[0] + two[1]):
        assert abs(a[0] - b[0]) <= 2 * TICK, (one, two)  # two windows, each under a count off
    feeds = [[v for k, v in run[2] if k == "feed"] for run in (one, two)]
    for a, b in zip(*feeds):
        assert a[1] == b[1] and abs(a[0] - b[0]) <= 2 * TICK, feeds
