"""A node on a serial line: the emulated board's console UART on one end of a pty cable, the
gateway's pyserial reader on the other, readings through to a real mosquitto."""

import subprocess
import threading
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest

from rig import SENSORCITY
from sensorcity.tools.serialmock import Faults, VirtualCable


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
def test_energy_node_over_serial(mosquitto, tmp_path, noisy):
    faults = Faults(bit_error=1e-4, seed=3) if noisy else None
    cable = VirtualCable(faults, faults)
    reg, cfg = tmp_path / "nodes.json", tmp_path / "e1.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", "e1", "--sensor", "energy",
                    "--registry", str(reg), "--out", str(cfg), "--interval", "1"], check=True,
                   capture_output=True)
    batches = []
    sub = _subscribe(mosquitto, batches)
    gw = subprocess.Popen([SENSORCITY, "gateway", "run", "--serial", cable.b, "--broker",
                           f"mqtt://127.0.0.1:{mosquitto}", "--spool", str(tmp_path / "spool"),
                           "--nodes", str(reg), "--gateway-id", "gw-serial"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    node = subprocess.Popen([SENSORCITY, "emulate", "--config", str(cfg), "--port", cable.a,
                             "--heap", "128k"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if len([r for b in batches for r in b if r.get(0) == "energy_import_t1"]) >= 5:
                break
            time.sleep(0.5)
    finally:
        node.terminate()
        gw.terminate()
        node_err = node.communicate(timeout=10)[1]
        gw_err = gw.communicate(timeout=10)[1]
        sub.loop_stop()
        cable.close()
    t1 = [r for b in batches for r in b if r.get(0) == "energy_import_t1"]
    assert len(t1) >= 5, (node_err[-2000:], gw_err[-2000:])
    names = {r.get(0) for b in batches for r in b}
    assert {"power_import", "gas_volume", "p1_crc_errors"} <= names
    if noisy:
        assert faults.counts["bit_errors"] > 0
