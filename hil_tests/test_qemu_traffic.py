"""A traffic node, unmodified, on the QEMU board: its loop detectors' edges come from the host as
lines "<pin> <state>" on UART1, the board's machine.Pin.irq hands each to the pin's handler
(tools/sim/board/qemu/machine.py). Reference: the vehicles the host sent, counted per interval from
the feeder's own schedule (each vehicle belongs to the interval its front reached loop A in,
docs/traffic.md), not the firmware's output."""

import json
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest

from rigs.targets import SENSORCITY
from sensorcity.protocol import senml
from sensorcity.tools.sim import signals
from sensorcity.tools.sim.emulate import TRAFFIC_PINS
from sensorcity.tools.sim.qemu import QemuNode
from rigs.serialmock import VirtualCable
from test_serial_link import _subscribe

# alone: the host sends edges on the board's clock to within EDGE; a loaded host shifts them
pytestmark = [pytest.mark.qemu, pytest.mark.mosquitto, pytest.mark.unixport, pytest.mark.alone]
HEAP = "64k"  # an ESP32's budget
INTERVAL = 5
# The host cannot know the board's interval boundaries to the second: the node's clock starts at
# its RTC's whole second, up to 1 s behind the host's, and slews the gateway's time in at only
# 3.9 ms/s (docs/node.md, Clock), while QEMU's 1 ms SysTick loses ticks when the shared host is
# busy (vehicles kept 1.5 s clear of the boundaries were counted an interval early). So vehicles
# come in every other interval of the host's clock only (a busy one, its start an even multiple
# of INTERVAL), none within EDGE of its ends: a vehicle the late board counts in the quiet
# interval before is still told apart from its neighbours.
EDGE = 0.3
# The feeder's vehicles come 2 s apart at the closest, and a slow truck holds loop A for 2.2 s: a
# vehicle is sent only once the one before has left both loops this long since, so that the ones
# sent are distinct vehicles on the loops too
CLEAR = 0.3


def busy(start):
    return start // INTERVAL % 2 == 0


class CountedTraffic(signals.Traffic):
    """signals.Traffic on the feeder's schedule, which also notes when each vehicle's front
    reaches loop A on the host's copy of the board's clock. It sends none before `armed` (edges
    queued in the UART before the node's pipeline reads them would all arrive at one instant),
    nor in quiet intervals, nor within EDGE of a busy interval's ends, nor while the last one it
    sent is on the loops (CLEAR)."""

    def __init__(self):
        super().__init__(TRAFFIC_PINS, seed=7)
        self.node = None
        self.armed = threading.Event()
        self.onsets = []  # board time of each vehicle's A onset
        self.clear = 0.0  # host time the last vehicle sent left the loops

    def vehicle(self, t0):
        # t0: host monotonic time of the A onset, at most a tenth of a second ahead
        at = self.node.board_time() + (t0 - time.monotonic()) * self.node.speed
        if (not self.armed.is_set() or not busy(int(at) - int(at) % INTERVAL)
                or not EDGE <= at % INTERVAL <= INTERVAL - EDGE or t0 < self.clear + CLEAR):
            return []
        edges = super().vehicle(t0)  # at speed 1, in the host's seconds
        self.onsets.append(at)
        self.clear = max(t for t, _, _ in edges)
        return edges


def test_traffic_node_counts_the_vehicles_the_host_sent(mosquitto, tmp_path):
    reg, cfg = tmp_path / "nodes.json", tmp_path / "t1.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", "t1", "--sensor", "traffic",
                    "--registry", str(reg), "--out", str(cfg), "--interval", str(INTERVAL)],
                   check=True, capture_output=True)
    # the vehicles drive 30-70 km/h (signals.Traffic): a 20 km/h floor closes an interval 5.8 s
    # after its end instead of the default 5 km/h's 23 s
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), min_speed=20.0)))
    batches = []
    sub = _subscribe(mosquitto, batches)
    cable = VirtualCable()
    traffic = CountedTraffic()
    node = QemuNode(cfg, cable.a, heap=HEAP, traffic=traffic, log=sys.stderr)
    traffic.node = node
    gw = subprocess.Popen([SENSORCITY, "gateway", "run", "--serial", cable.b,
                           "--broker", f"mqtt://127.0.0.1:{mosquitto}",
                           "--spool", str(tmp_path / "spool"), "--nodes", str(reg),
                           "--gateway-id", "gw-qemu-traffic"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    node.start()
    threading.Thread(target=node.supervise, daemon=True).start()

    def records(quantity):
        """(t, v) of a quantity's records at the broker, oldest first."""
        out = []
        for batch in list(batches):
            out += [(r["t"], r["v"]) for r in map(senml.Record.as_json, senml.resolve(batch))
                    if r["n"].endswith(":" + quantity)]
        return sorted(out)
    gw_err = []

    def stop_gateway():
        gw.terminate()
        gw_err.append(gw.communicate(timeout=10)[1])
    with ExitStack() as teardown:  # last in, first out: the node first, the cable last
        for step in (cable.close, sub.loop_stop, stop_gateway, node.stop):
            teardown.callback(step)
        deadline = time.monotonic() + 70
        # the node is up once its first batch reaches the broker: its pipeline reads the line
        while time.monotonic() < deadline and not batches:
            time.sleep(0.2)
        traffic.armed.set()
        armed_at = node.board_time()
        # six whole intervals after it closed, three of them busy
        while time.monotonic() < deadline and not any(
                t >= armed_at + 6 * INTERVAL for t, _ in records("lane1/count")):
            time.sleep(0.2)
    counts = records("lane1/count")
    sent = {}
    for at in traffic.onsets:
        start = int(at) - int(at) % INTERVAL
        sent[start] = sent.get(start, 0) + 1
    reported = {t: v for t, v in counts}
    detail = (counts, sorted(sent.items()), records("boot_count"), gw_err[0][-2000:])
    print("lane1/count per interval at the broker:", counts, "sent:", sorted(sent.items()))
    assert reported and max(reported) >= armed_at + 6 * INTERVAL, detail
    # every interval up to the last the node closed, each once
    first, last = min(reported), max(reported)
    assert sorted(reported) == list(range(first, last + 1, INTERVAL)), detail
    # each busy interval: the vehicles the host sent in it, counted in it or (the board's clock
    # late) in the quiet interval before; no vehicle lost or invented, none counted twice
    pairs = [b for b in reported if busy(b)]
    for b in pairs:
        assert reported.get(b - INTERVAL, 0) + reported[b] == sent.get(b, 0), (b, detail)
    # a quiet interval holds only the busy one's late-counted vehicles (a trailing quiet interval,
    # whose busy one is not closed yet, at most those of the next)
    assert all(reported[q] <= sent.get(q + INTERVAL, 0) for q in reported if not busy(q)), detail
    assert sum(reported[b] for b in pairs) + sum(
        reported.get(b - INTERVAL, 0) for b in pairs) >= 3, detail  # enough to tell counting
    assert node.boots == 1 and len({v for _, v in records("boot_count")}) == 1
