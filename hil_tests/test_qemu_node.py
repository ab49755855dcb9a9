"""An energy node, unmodified, on the QEMU board across the 2^30 wrap of ticks_ms and ticks_us:
its console UART on a VirtualCable, `sensorcity gateway run --serial` on the other end, records
through to a real mosquitto. The board's clock starts 8 s before the wrap (a board gets there
after 12.4 days of ticks_ms, 17.9 minutes of ticks_us). References: the host's clock."""

import subprocess
import sys
import threading
import time

import pytest

from rigs.targets import SENSORCITY
from sensorcity.tools.sim.qemu import QemuNode
from rigs.serialmock import VirtualCable
from test_serial_link import _subscribe, quantity_records

pytestmark = [pytest.mark.qemu, pytest.mark.mosquitto, pytest.mark.unixport]  # unixport: the
# unix port writes the board's flash image (tools/sim/qemu.write_flash)
WRAP_IN = 8.0


def test_energy_node_runs_across_the_ticks_wrap(mosquitto, tmp_path):
    reg, cfg = tmp_path / "nodes.json", tmp_path / "e1.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", "e1", "--sensor", "energy",
                    "--registry", str(reg), "--out", str(cfg), "--interval", "1"], check=True,
                   capture_output=True)
    batches = []
    sub = _subscribe(mosquitto, batches)
    cable = VirtualCable()
    node = QemuNode(cfg, cable.a, wrap_in=WRAP_IN, log=sys.stderr)
    gw = subprocess.Popen([SENSORCITY, "gateway", "run", "--serial", cable.b, "--broker",
                           f"mqtt://127.0.0.1:{mosquitto}", "--spool", str(tmp_path / "spool"),
                           "--nodes", str(reg), "--gateway-id", "gw-qemu"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    node.start()
    booted = time.time()  # QEMU has just started: the board's clock is WRAP_IN s from the wrap
    wrap = booted + WRAP_IN
    threading.Thread(target=node.supervise, daemon=True).start()

    def records(quantity):
        return quantity_records(batches, quantity)
    try:
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            if len([t for t, _ in records("power_import") if t >= wrap + 1]) >= 4:
                break
            time.sleep(0.5)
    finally:
        node.stop()
        gw.terminate()
        gw_err = gw.communicate(timeout=10)[1]
        sub.loop_stop()
        cable.close()
    power = records("power_import")
    after = [t for t, _ in power if t >= wrap + 1]
    assert len(after) >= 4, (power, wrap, gw_err[-2000:])
    # intervals closed on both sides of the wrap, one a second, none skipped across it
    starts = sorted({t for t, _ in power})
    around = [t for t in starts if wrap - 3 <= t <= wrap + 3]
    assert around == list(range(around[0], around[0] + len(around))) and len(around) >= 5, starts
    # uptime is ticks_diff(ticks_ms(), start): it follows the host's clock through the wrap
    uptime = records("uptime")
    assert [t for t, _ in uptime if t >= wrap + 1], uptime
    for t, up in uptime:
        # within seconds (a loaded host delays QEMU's boot and the record's emission), where a
        # mishandled wrap would be off by 2^30 ms, 12 days
        assert abs((t - booted) - up) <= 15, (t - booted, up)
    assert node.boots == 1  # no watchdog reset on the way
