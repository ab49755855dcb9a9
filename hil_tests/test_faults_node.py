"""The node side of the fault suite (issue 5): an energy node (the real firmware in the unix port,
1 s intervals) on a serial cable with faults, the real gateway in-process on the other end, a real
mosquitto behind it. Each line fault asserts:

- no loss: every frame the node says it produced (its `trace`) is in the gateway's spool and every
  record of it at the broker;
- no gap: the node's interval starts for the data quantity run on without a hole, except where
  the fault itself explains one (a reboot's downtime, a clock stepped forward);
- bounded duplicates, counted at the gateway (resent frames) and at the broker (none);
- counters that explain every rejected frame: each frame the gateway was handed that the node did
  not write byte for byte is a counted rejection (Verifier.rejected by reason, or a deframer
  overflow), each byte-exact one an accepted frame, and nothing else is rejected.

The watchdog and the crash loop run on the same rig with configs that stall or break the
pipeline."""

import json
import time

import pytest

from rigs.node import (LINE_REASONS, Rig, Tap, corrupted_frames, frame_counts, gaps,
                      line_rejections, series, wait_until)
from sensorcity.tools.sim.emulate import EmulatedNode, _Feeder, flash_image_for

pytestmark = [pytest.mark.fault, pytest.mark.mosquitto, pytest.mark.unixport]

DATA = "p1_crc_errors"  # an energy quantity every interval carries (docs/records.md)
WINDOW = 8  # the node's frames in flight (firmware/node.py)
WARM = 4.0  # seconds of clean running before a fault


def check_counters(c: dict, events: int) -> None:
    """The gateway's verdicts against the cable's streams."""
    print("counters:", json.dumps(c))
    assert line_rejections(c) == c["corrupted_up"], frame_counts(c)
    assert c["accepted"] == c["clean_up"], frame_counts(c)
    others = {r: n for r, n in c["rejected"].items() if r not in LINE_REASONS and n}
    assert not others, others
    assert c["broker_duplicates"] == 0
    # a frame goes again only when the oldest in flight timed out: at most a window per event
    assert c["duplicate_frames"] <= WINDOW * (events + c["corrupted_up"] + c["corrupted_down"]), \
        frame_counts(c)


def deliver(rig: Rig, after: float = 4.0):
    """Run on `after` seconds, then wait until all the node produced by then has arrived."""
    time.sleep(after)
    produced = rig.produced()
    rig.wait_delivered(produced)
    return produced


@pytest.fixture
def make_rig(mosquitto, tmp_path):
    rigs = []

    def make(**kw):
        rig = Rig(tmp_path, mosquitto, **kw)
        rigs.append(rig)
        return rig
    yield make
    for rig in rigs:
        rig.close()


LINE = {
    "bit-errors-1e-4": dict(bit_error=1e-4),
    "dropped-bytes": dict(drop=2e-4),
    "garbage-bursts": dict(garbage=0.15, garbage_len=24),
}


def clean_line(rig: Rig) -> None:
    """The faults stop. While a line stays noisy, every frame (a health record, the last of a
    backlog) crosses it behind resends whose timeout doubles (2 s up to 30 s): nothing is bound
    to arrive in any given time."""
    for tap in (rig.up, rig.down):
        tap.bit_error = tap.drop = tap.garbage = 0.0


def node_rejects_explained(rig: Rig) -> tuple[int, int]:
    """The node's own count of rejected downlink frames (rx_rejects in its health) against the
    corrupted frames the cable handed it, once the line is clean (clean_line): the cable's count
    is final then, and the node's latest health record must come to equal it."""
    counted = []

    def settled():
        _, corrupted = corrupted_frames(rig.down)
        counts = [h["rx_rejects"] for h in rig.health() if "rx_rejects" in h]
        assert all(n <= corrupted for n in counts), (counts, corrupted)  # never more than got
        counted[:] = [counts[-1] if counts else None, corrupted]
        return counts and counts[-1] == corrupted
    try:
        wait_until(settled, 120, "the node's rx_rejects to reach the cable's corrupted frames")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: (node's latest, cable's) = {counted}") from None
    return counted[0], counted[1]


@pytest.mark.parametrize("fault", list(LINE))
def test_line_noise(make_rig, fault):
    rig = make_rig(up=Tap(seed=11, **LINE[fault]), down=Tap(seed=12, **LINE[fault]))
    # the line runs noisy for 10 s, and on until it has spoilt two of the node's frames (an
    # event: a busy host only sends them later)
    time.sleep(10.0)
    wait_until(lambda: corrupted_frames(rig.up)[1] >= 2, 120, "two frames spoilt on the line")
    clean_line(rig)
    produced = deliver(rig, 2.0)
    print("node rx_rejects:", node_rejects_explained(rig))
    c = rig.finish()
    assert c["corrupted_up"] > 0 and c["corrupted_down"] + c["corrupted_up"] > 1
    check_counters(c, events=0)
    assert not gaps(series(produced, DATA), 1)
    assert "watchdog reset" not in rig.board.log()


def test_stall_each_direction(make_rig):
    rig = make_rig()
    time.sleep(WARM)
    rig.cable.stall(4.0, a_to_b=True)  # the node's frames wait: its acks time out, it resends
    time.sleep(6.0)
    rig.cable.stall(4.0, a_to_b=False)  # the gateway's acks wait
    produced = deliver(rig, 6.0)
    c = rig.finish()
    check_counters(c, events=2)
    assert c["duplicate_frames"] > 0  # the stalled frames went twice: counted, not stored twice
    assert not gaps(series(produced, DATA), 1)


def test_usb_unplug(make_rig):
    rig = make_rig()
    wait_until(lambda: len(series(rig.produced(), DATA)) >= 2, 60, "intervals before the unplug")
    unplugged = time.time()
    rig.cable.unplug(7.0)  # both directions: bytes fall on the floor for 7 s
    replugged = time.time()
    wait_until(lambda: any(t > replugged + 1 for t in series(rig.produced(), DATA)), 60,
               "an interval after the unplug")
    produced = rig.produced()
    rig.wait_delivered(produced)
    c = rig.finish()
    check_counters(c, events=1)
    ts = series(produced, DATA)
    # the series runs across the unplug without a hole (the board's clock is the gateway's)
    assert not gaps(ts, 1) and ts[0] < unplugged and ts[-1] > replugged, (ts, unplugged, replugged)


class MidFrameKill:
    """A Tap's cut: on the next chunk of a frame, deliver its first half, SIGKILL the board (it
    dies while writing) and drop what the dead process left in the line."""

    def __init__(self, board_of):
        self.board_of = board_of
        self.armed = False
        self.kills = 0
        self.mute_until = 0.0

    def __call__(self, out: bytes) -> bytes:
        if time.monotonic() < self.mute_until:
            return b""
        if not self.armed or len(out) < 40:
            return out
        k = len(out) // 2
        while k < len(out) - 1 and out[k - 1] == 0:
            k += 1
        self.armed = False
        self.board_of().kill()
        self.kills += 1
        self.mute_until = time.monotonic() + 0.3  # the supervisor restarts it after 0.5 s
        return out[:k]

    def fire(self, timeout: float = 5.0):
        self.armed = True
        wait_until(lambda: not self.armed, timeout, "a frame to cut")


def reboot_gaps(produced, kills: int):
    ts = series(produced, DATA)
    g = gaps(ts, 1)
    # the interval in progress when the board died is measured again after the boot; intervals
    # that ended while it was down were never closed (nothing measured survives a power cut)
    assert len(g) <= kills and all(b - a <= 8 for a, b in g), g
    assert len(set(ts)) == len(ts)
    return g


def test_reboot_mid_frame(make_rig):
    up = Tap()
    rig = make_rig(up=up)
    killer = MidFrameKill(lambda: rig.board)
    up.cut = killer
    time.sleep(WARM)
    killer.fire()
    wait_until(lambda: rig.board.node.boots == 2, 10, "the supervisor's restart")
    produced = deliver(rig, 6.0)
    c = rig.finish()
    assert killer.kills == 1 and up.cut_bytes > 0
    assert c["corrupted_up"] >= 1  # the half frame, ended by the next boot's leading delimiter
    check_counters(c, events=1)
    reboot_gaps(produced, 1)
    boots = {h["boot_count"] for h in rig.health()}
    assert boots == {1, 2}, boots


def test_reboot_loop(make_rig):
    # healthy after 2 s of pipeline progress, so five quick reboots stay a reboot loop rather
    # than a crash loop (that one is test_crash_loop_falls_back_to_link_only)
    up = Tap()
    rig = make_rig(up=up, node_settings={"healthy_ms": 2000})
    killer = MidFrameKill(lambda: rig.board)
    up.cut = killer
    time.sleep(WARM)
    for n in range(2, 7):
        killer.fire()
        wait_until(lambda: rig.board.node.boots == n, 10, f"boot {n}")
        time.sleep(4.0)
    produced = deliver(rig, 3.0)
    c = rig.finish()
    assert killer.kills == 5
    check_counters(c, events=5)
    reboot_gaps(produced, 5)
    health = rig.health()
    assert {h["boot_count"] for h in health} >= {1, 6}
    assert all(h["safe_mode"] == 0 for h in health)


def test_clock_jump_from_gateway(make_rig):
    offset = [0.0]
    rig = make_rig(gateway={"time_every": 1.0}, clock=lambda: time.time() + offset[0])
    time.sleep(WARM)
    offset[0] = 30.0  # the gateway's clock leaps forward 30 s ...
    time.sleep(5.0)
    offset[0] = 24.0  # ... and is stepped back 6 s
    produced = deliver(rig, 10.0)
    c = rig.finish()
    check_counters(c, events=0)
    ts = series(produced, DATA)
    # an interval never repeats and never runs backwards; the one leap is the forward step (the
    # intervals the clock leapt over passed on no clock, so they carry no reading but the
    # clock_leapt flag, each once); the step back only lengthens one
    assert ts == sorted(set(ts)), ts
    g = gaps(ts, 1)
    assert len(g) == 1 and 25 <= g[0][1] - g[0][0] <= 35, g
    leapt = sorted(int(t) for (n, t) in rig.stats.records if n == rig.base + "clock_leapt")
    assert leapt == list(range(g[0][0] + 1, g[0][1])), (leapt, g)
    assert max(h["clock_steps"] for h in rig.health()) == 2
    at_broker = sorted(t for (n, t) in rig.stats.records if n == rig.base + DATA)
    assert at_broker[:len(ts)] == ts


# --- watchdog and crash loop ----------------------------------------------------------------
class SilentMeter(EmulatedNode):
    """A P1 port that never sends: the energy pipeline never progresses."""

    def _peripherals(self):
        f = _Feeder(lambda t0: time.sleep(0.5) or [], 1.0)
        f.start()
        self.feeders.append(f)
        return {"uart2": f.port}


def test_watchdog_resets_a_stalled_pipeline(make_rig):
    rig = make_rig(emulated=SilentMeter,
                   node_settings={"watchdog_ms": 3000, "stall_ms": 2000})
    wait_until(lambda: rig.board.node.boots >= 3, 40, "two watchdog resets")
    wait_until(lambda: {1, 2} <= {h["boot_count"] for h in rig.health()}, 10,
               "health from the first two boots")
    log = rig.board.log()
    c = rig.finish()
    assert log.count("watchdog reset") >= 2
    assert "emitted" in log and all(h["safe_mode"] == 0 for h in rig.health()
                                    if h["boot_count"] <= 3)
    check_counters(c, events=0)


@pytest.mark.adversarial
@pytest.mark.parametrize("unplugged", [False, True], ids=["gateway-there", "gateway-away"])
def test_a_reflashed_board_loses_nothing(make_rig, unplugged):
    # issue 11: `sensorcity flash` erases the whole flash, so the node's sequence starts at 0
    # again under the same id. Before the fix the gateway acked every frame of the new run and
    # threw it away (`duplicate`), and rejected its hellos (`replayed`): 0 readings arrived.
    # gateway-away: the board measures for a while before it reaches the gateway, so what it
    # stored under its pending epoch goes again under numbers above the floor
    rig = make_rig()
    first = deliver(rig, 4.0)
    assert first
    rig.board.stop()
    flash_image_for(rig.config).unlink()  # the technician re-flashes the board
    mark = len(rig.produced())
    if unplugged:
        rig.cable.connected.clear()
    rig.start_board()
    wait_until(lambda: len(rig.produced()) >= mark + 8, 40, "the re-flashed board's intervals")
    if unplugged:
        rig.cable.connected.set()
        wait_until(lambda: "renumbered" in rig.board.log(), 40, "the floor, and renumbering")
        time.sleep(2.0)
    again = rig.produced()[mark:]
    rig.wait_delivered(again)  # every frame of the new run in the spool, its records at the broker
    c = rig.finish()
    print("re-flash:", len(first), "frames before,", len(again), "after:", frame_counts(c))
    assert min(e.seq for e in again) > max(e.seq for e in first)  # above the old numbers
    assert c["rejected"]["replayed"] == 0 and c["rejected"]["stale"] == 0
    assert c["duplicate_frames"] <= WINDOW, frame_counts(c)  # the old run's unacked at power-off
    assert not gaps(series(again, DATA), 1)


def test_crash_loop_falls_back_to_link_only(make_rig, tmp_path):
    # a healthy noise node builds a backlog behind an unplugged cable; then its config names a
    # microphone the firmware does not know, so the pipeline raises at every start
    rig = make_rig(kind="noise", node_settings={"healthy_ms": 3000})
    wait_until(lambda: rig.produced(), 20, "the first interval")
    rig.cable.connected.clear()
    time.sleep(5.0)
    backlog = rig.produced()
    rig.board.stop()
    cfg = json.loads(rig.config.read_text())
    rig.config.write_text(json.dumps(dict(cfg, mic="no-such-mic")))
    rig.cable.connected.set()
    rig.start_board()  # power on, same flash
    wait_until(lambda: rig.board.node.boots >= 4, 30, "three crashed boots")
    wait_until(lambda: any(h["safe_mode"] == 1 for h in rig.health()), 20,
               "health from link-only mode")
    rig.wait_delivered(backlog)
    time.sleep(3.0)
    log = rig.board.log()
    c = rig.finish()
    assert log.count("unknown microphone model") == 3
    safe = [h for h in rig.health() if h["safe_mode"] == 1]
    assert len(safe) >= 2 and all(h["store_dropped"] == 0 for h in safe)
    assert max(h["boot_count"] for h in safe) == 5  # boot 1 was healthy, 2-4 crashed
    check_counters(c, events=5)  # the unplug, the power-off, three crashes: each may cost a
    # window of frames the gateway stored but whose acks the board did not live to see
    assert not gaps(series(backlog, "LAeq"), 1)
