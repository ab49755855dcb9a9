"""A node on a serial line: the node's console UART on one end of a pty cable, the gateway's
pyserial reader on the other, readings through to a real mosquitto. The node is each of the rig's
targets (hil_tests/rigs/targets.py): the unix-port emulator, the QEMU board, a real board with --port."""

import subprocess
import threading
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest

from rigs.targets import SENSORCITY
from sensorcity.protocol import senml
from rigs.serialmock import Faults


def quantity_records(batches, quantity):
    """(t, v) of one quantity's resolved SenML records in the batches _subscribe collected."""
    return sorted((r["t"], r["v"]) for b in list(batches) for r in senml.resolve(b)
                  for r in [r.as_json()] if r["n"].endswith(":" + quantity))


def _subscribe(port, batches):
    connected = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe("sensorcity/v1/+/batch", qos=1),
                                            connected.set())
    c.on_message = lambda cl, u, m: batches.append(cbor2.loads(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(5)
    return c


@pytest.mark.mosquitto
@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "bit-errors-1e-4"])
def test_energy_node_over_serial(mosquitto, tmp_path, noisy, node):
    # `node` is each of the rig's node targets (hil_tests/rigs/targets.py): unix port, QEMU, a real board
    if noisy and not node.injects_faults:
        pytest.skip("line faults need the emulated cable")
    faults = Faults(bit_error=1e-4, seed=3) if noisy else None
    reg, cfg = tmp_path / "nodes.json", tmp_path / "e1.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", "e1", "--sensor", "energy",
                    "--registry", str(reg), "--out", str(cfg), "--interval", "1"], check=True,
                   capture_output=True)
    batches = []
    sub = _subscribe(mosquitto, batches)
    line = node.start(cfg, faults)
    gw = subprocess.Popen([SENSORCITY, "gateway", "run", "--serial", line, "--broker",
                           f"mqtt://127.0.0.1:{mosquitto}", "--spool", str(tmp_path / "spool"),
                           "--nodes", str(reg), "--gateway-id", "gw-serial"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 75  # a QEMU board on a loaded 2-core machine is slow
        while time.monotonic() < deadline:
            if len([r for b in batches for r in b if r.get(0) == "energy_import_t1"]) >= 5:
                break
            time.sleep(0.5)
    finally:
        node_err = node.stop()
        gw.terminate()
        gw_err = gw.communicate(timeout=10)[1]
        sub.loop_stop()
    t1 = [r for b in batches for r in b if r.get(0) == "energy_import_t1"]
    assert len(t1) >= 5, (node_err[-2000:], gw_err[-2000:])
    names = {r.get(0) for b in batches for r in b}
    assert {"power_import", "gas_volume", "p1_crc_errors"} <= names
    if noisy:
        assert faults.counts["bit_errors"] > 0
