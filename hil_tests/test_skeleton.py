"""The walking skeleton on real parts: emulated nodes (the real firmware in the MicroPython unix
port) -> gateway -> a real mosquitto; the batches read by an RFC 8428 resolver written here."""

import math
import subprocess
import threading

import cbor2
import paho.mqtt.client as mqtt
import pytest

from rigs.targets import SENSORCITY

# RFC 8428 section 6 labels
BN, BT, BU, BV, N, U, V, VS, VB, S, T, VD = -2, -3, -4, -5, 0, 1, 2, 3, 4, 5, 6, 8


def resolve(pack):
    """RFC 8428 section 4.6: base values carry forward; each record one value; name = bn + n."""
    out, base = [], {BN: "", BT: 0, BU: None, BV: 0}
    for rec in pack:
        for label in (BN, BT, BU, BV):
            if label in rec:
                base[label] = rec[label]
        name = base[BN] + rec.get(N, "")
        values = [k for k in (V, VS, VB, VD) if k in rec]
        assert len(values) == 1, f"{name}: {len(values)} values"
        value = rec[values[0]]
        if values[0] == V:
            assert isinstance(value, (int, float)) and math.isfinite(value)
            value = base[BV] + value
        assert name and all(c.isalnum() or c in "-:./_" for c in name), name
        assert name[0].isalnum(), name
        out.append((name, rec.get(U, base[BU]), value, base[BT] + rec.get(T, 0)))
    return out


@pytest.mark.mosquitto
@pytest.mark.unixport
def test_demo_delivers_resolvable_batches_to_mosquitto(mosquitto):
    batches = []
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe("sensorcity/v1/+/batch", qos=1),
                                                connected.set())
    client.on_message = lambda c, u, m: batches.append(m)
    client.connect("127.0.0.1", mosquitto)
    client.loop_start()
    assert connected.wait(5)
    try:
        proc = subprocess.run([SENSORCITY, "demo", "--nodes", "3", "--seconds", "30", "--broker",
                               f"mqtt://127.0.0.1:{mosquitto}"], capture_output=True, text=True,
                              timeout=120)
    finally:
        client.loop_stop()
        client.disconnect()
    assert proc.returncode == 0, proc.stderr
    assert batches, proc.stdout
    records = [r for m in batches for r in resolve(cbor2.loads(m.payload))]
    bases = {name.rsplit(":", 1)[0] for name, *_ in records}
    quantities = {name.rsplit(":", 1)[1] for name, *_ in records}
    assert len(bases) == 3, bases
    assert {"LAeq", "energy_import_t1", "lane1/count"} <= quantities, quantities
    assert all(u for _, u, _, _ in records), "every record carries a unit"
    # a batch is a SenML pack: its content type and batch id ride in MQTT 5 properties
    props = batches[0].properties
    assert props.ContentType == "application/senml+cbor"
    assert dict(props.UserProperty)["batch_id"]
    # the summary line says what arrived
    assert "reached the broker" in proc.stdout.splitlines()[-1]
