# A gateway whose clock ran a year ahead (a bad NTP answer, a wrong fake-hwclock), then set
# right: the node steps forward a year, then back a year. Run by tests/test_attack_node_clock.py.
import node
from test_intervals import DAY0, Ticks, _energy_run, _grid, _node, step

ticks = Ticks()
n = _node("energy", ticks, DAY0)
YEAR = 365 * 86400 * 1000
_energy_run(n, ticks, 12, {3: lambda: step(n, ticks, YEAR), 6: lambda: step(n, ticks, 0)})
t0 = _grid(DAY0)
after = [t for t, r in n.emitted if t0 + 7 <= t <= t0 + 12 and r != node.LEAPT]
# the node goes on measuring under the true time once set right, not a year later
assert len(after) >= 3, [t - t0 for t, _ in n.emitted if t < t0 + 86400]
print("1 passed, 0 failed")
