"""Gateway operations against real mosquittos: TLS with client certificates, failover to the
next broker, retained status and last will, a backlog drained oldest first while live data keeps
its latency, SIGTERM drain with systemd's notify protocol, /metrics and /healthz."""

import signal
import socket
import subprocess
import time

import cbor2
import pytest

from gateway_pki import make_pki
from rigs.gateway import Gateway, Mosquitto, Subscriber, registry, wait_until, write_config
from rigs.targets import SENSORCITY
from sensorcity.gateway.spool import Spool

pytestmark = pytest.mark.mosquitto


def values(sub):
    return [r[2] for _, _, payload, _, _ in sub.on("/batch") for r in cbor2.loads(payload)]


def test_tls_with_client_certificates(tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "broker", tls=pki)
    sub = Subscriber(broker, ["sensorcity/v1/+/batch"])
    gw = Gateway(tmp_path, [broker.url], ca=str(pki["ca"]), cert=str(pki["client_cert"]),
                 key=str(pki["client_key"]))
    node = gw.node()
    try:
        for seq in range(5):
            node.send(seq, value=100 + seq)
        wait_until(lambda: len(values(sub)) == 5, 15, "5 readings over TLS")
        assert sorted(values(sub)) == [100, 101, 102, 103, 104]
        assert "(TLS)" in gw.output()
    finally:
        node.close()
        gw.stop()
        sub.close()
    # the same broker refuses a gateway without a client certificate; nothing is lost
    gw2 = Gateway(tmp_path / "nocert", [broker.url], ca=str(pki["ca"]))
    node = gw2.node()
    try:
        node.send(1, value=7)
        wait_until(lambda: 1 in node.acked, 10, "the ack (the spool holds it)")
        time.sleep(2)
        assert gw2.get("/metrics")[1].count("sensorcity_gateway_uplink_connected 0.0") == 1
        assert Spool(gw2.spool).depth() == 1
    finally:
        node.close()
        gw2.stop()
        broker.stop()


def test_plain_mqtt_to_a_remote_broker_is_refused(tmp_path):
    write_config(tmp_path / "gw.toml", brokers=["mqtt://192.0.2.1:1883"],
                 nodes=str(tmp_path / "n.json"))
    p = subprocess.run([SENSORCITY, "gateway", "run", "--config", str(tmp_path / "gw.toml")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "tls = false" in p.stderr


def test_failover_to_the_second_broker(tmp_path):
    a, b = Mosquitto(tmp_path / "a"), Mosquitto(tmp_path / "b")
    sub_a = Subscriber(a, ["sensorcity/v1/+/batch"])
    sub_b = Subscriber(b, ["sensorcity/v1/+/batch"])
    gw = Gateway(tmp_path, [a.url, b.url])
    node = gw.node()
    try:
        for seq in range(3):
            node.send(seq, value=seq)
        wait_until(lambda: len(values(sub_a)) == 3, 15, "readings on the first broker")
        a.kill()
        for seq in range(3, 8):
            node.send(seq, value=seq)
        wait_until(lambda: len(values(sub_b)) >= 5, 20, "readings on the second broker")
        got = set(values(sub_a)) | set(values(sub_b))
        assert got == set(range(8))                      # nothing lost across the failover
        assert set(values(sub_b)) >= set(range(3, 8))
    finally:
        node.close()
        gw.stop()
        sub_a.close()
        sub_b.close()
        b.stop()


def test_status_is_retained_and_the_will_says_offline(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    gw = Gateway(tmp_path, [broker.url])
    try:
        sub = Subscriber(broker, ["sensorcity/v1/gw1/status"])
        wait_until(lambda: sub.on("/status"), 10, "the status")
        _, _, payload, _, retained = sub.on("/status")[0]
        assert (payload, retained) == (b"online", True)   # retained: a late subscriber sees it
        gw.proc.kill()                                   # a crash: the broker sends the will
        gw.proc.wait(5)
        wait_until(lambda: sub.on("/status")[-1][2] == b"offline", 10, "the will")
        sub.close()
        late = Subscriber(broker, ["sensorcity/v1/gw1/status"])
        wait_until(lambda: late.on("/status"), 5, "the retained status")
        assert late.on("/status")[0][2] == b"offline" and late.on("/status")[0][4]
        late.close()
    finally:
        gw.stop()
        broker.stop()


def test_backlog_drains_oldest_first_without_starving_live_data(tmp_path):
    """A spool of 120000 frames from an outage (600 batches of 200) and a node sending a live
    frame every 0.05 s: the backlog arrives oldest first, and live frames are not starved. The
    test asserts on order, not on speed: a starving gateway publishes every live frame after
    the whole backlog, so each live frame the gateway had stored (acked) before half the backlog
    was at the broker must arrive while the backlog still drains, whatever the machine's pace."""
    broker = Mosquitto(tmp_path / "broker")
    registry(tmp_path / "nodes.json", ["n1", "old"])
    spool = Spool(tmp_path / "spool")
    backlog = 120000
    t0 = int(time.time()) - 86400
    with spool.transaction():
        for i in range(backlog):
            spool.insert("old", i, cbor2.dumps([{-2: "urn:dev:ops:old:", -3: t0 + i, 0: "x",
                                                 1: "W", 2: i}]), 1, t0 + i)
    spool.close()
    sub = Subscriber(broker, ["sensorcity/v1/+/batch"])
    gw = Gateway(tmp_path, [broker.url], nodes=("n1", "old"), batch_age=0.5, batch_max=200)
    node = gw.node()
    seen = [0, 0]  # messages read, backlog records among them

    def old_at_broker():
        with sub.lock:
            new = sub.messages[seen[0]:]
        seen[0] += len(new)
        seen[1] += sum(1 for m in new for r in cbor2.loads(m[2]) if r[2] < 1_000_000)
        return seen[1]
    sent, before, stored_at = {}, {}, {}  # live seq -> send time; backlog records at the broker
    # before its send (>0: sent after the drain began, so above the backlog's mark); by its ack
    try:
        seq = 0
        began = time.monotonic()
        while old_at_broker() < backlog:
            assert time.monotonic() - began < 600, f"the backlog did not drain: {seen[1]}"
            before[seq] = old_at_broker()
            sent[seq] = time.time()
            node.send(seq, value=1_000_000 + seq)
            wait_until(lambda: seq in node.acked, 30, f"the ack of live frame {seq}")
            stored_at[seq] = old_at_broker()
            seq += 1
            time.sleep(0.05)
        drain_s = time.monotonic() - began
        wait_until(lambda: len([v for v in values(sub) if v >= 1_000_000]) == seq, 30,
                   "every live frame")
    finally:
        node.close()
        gw.stop()
        sub.close()
        broker.stop()
    arrivals, old_before = {}, {}  # live seq -> arrival time; -> backlog records before it
    old_order = []
    for arrived, _, payload, _, _ in sub.on("/batch"):
        for r in cbor2.loads(payload):
            if r[2] >= 1_000_000:
                arrivals[r[2] - 1_000_000] = arrived
                old_before[r[2] - 1_000_000] = len(old_order)
            else:
                old_order.append(r[2])
    assert old_order == list(range(backlog))             # oldest first, each once
    # sent after the drain began (a backlog record was out), stored while half of it remained
    early = [s for s in stored_at if before[s] > 0 and stored_at[s] < backlog // 2]
    assert len(early) >= 3, ("too few live frames went in while half the backlog remained "
                             "to show starvation", stored_at)
    late = {s: old_before[s] for s in early if old_before[s] >= backlog}
    assert not late, f"live frames waited for the whole backlog (seq: backlog before it): {late}"
    latency = sorted(arrivals[s] - sent[s] for s in sent)
    print(f"\nbacklog of {backlog} frames drained in {drain_s:.1f} s "
          f"({backlog / drain_s:.0f} frames/s) while {len(early)} live frames went in before "
          f"half of it was out; live latency median {latency[len(latency) // 2]:.2f} s, "
          f"max {latency[-1]:.2f} s")


def test_sigterm_drains_in_flight_work_and_exits_within_10s(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/+/batch", "sensorcity/v1/+/status"])
    sock_path = str(tmp_path / "notify.sock")
    notes = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notes.bind(sock_path)
    notes.settimeout(0.2)
    # a long batch age: what is pending at SIGTERM must go out by the drain, not by its age
    gw = Gateway(tmp_path, [broker.url], batch_age=30.0,
                 env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
    node = gw.node()
    got = []
    try:
        for seq in range(50):
            node.send(seq, value=seq)
        wait_until(lambda: len(node.acked) == 50, 10, "acks")
        time.sleep(1.5)
        assert values(sub) == []                         # held by the batch age
        began = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(10)
        took = time.monotonic() - began
        while True:
            try:
                got.append(notes.recv(100).decode())
            except socket.timeout:
                break
    finally:
        node.close()
        gw.stop()
        notes.close()
    assert code == 0 and took < 10, (code, took, gw.output()[-2000:])
    wait_until(lambda: len(values(sub)) == 50, 5, "the drained readings")
    assert sorted(values(sub)) == list(range(50))
    assert sub.on("/status")[-1][2] == b"offline"
    assert Spool(gw.spool).depth() == 0
    assert got[0] == "READY=1" and got[-1] == "STOPPING=1", got
    assert got.count("WATCHDOG=1") >= 2, got
    print(f"\nSIGTERM to exit: {took:.2f} s with 50 frames to publish")
    sub.close()
    broker.stop()


def test_sigterm_with_the_broker_down_exits_within_10s_and_keeps_the_spool(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    gw = Gateway(tmp_path, [broker.url])
    broker.kill()
    node = gw.node()
    try:
        for seq in range(20):
            node.send(seq, value=seq)
        wait_until(lambda: len(node.acked) == 20, 10, "acks")
        began = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(10)
        took = time.monotonic() - began
    finally:
        node.close()
        gw.stop()
    assert code == 0 and took < 10, (code, took)
    assert Spool(gw.spool).depth() == 20                 # acked, so kept for the next start
    print(f"\nSIGTERM to exit with the broker down: {took:.2f} s")


def test_metrics_and_health(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    gw = Gateway(tmp_path, [broker.url], stall=2.0)
    node = gw.node()
    try:
        for seq in range(10):
            node.send(seq, value=seq)
        node.send(10, key=bytes(32))                     # a forged tag
        node.send(3, value=3)                            # a re-send: a duplicate
        wait_until(lambda: len(node.acked) == 10, 10, "acks")
        wait_until(lambda: "sensorcity_gateway_readings_published_total 10.0" in
                   gw.get("/metrics")[1], 10, "the readings published")
        status, text = gw.get("/metrics")
        assert status == 200
        for line in ('sensorcity_gateway_frames_rejected_total{reason="tag"} 1.0',
                     "sensorcity_gateway_frames_duplicate_total 1.0",
                     "sensorcity_gateway_frames_stored_total 10.0",
                     'sensorcity_gateway_link_frames_total{link="tcp:127.0.0.1"} 12.0',
                     'sensorcity_gateway_link_rejected_total{link="tcp:127.0.0.1"} 1.0',
                     "sensorcity_gateway_delivery_latency_seconds_count 10.0",
                     "sensorcity_gateway_spool_frames 0.0",
                     "sensorcity_gateway_spool_dropped_frames_total 0.0",
                     "sensorcity_gateway_uplink_connected 1.0",
                     "sensorcity_gateway_healthy 1.0"):
            assert line in text, line
        assert gw.get("/healthz") == (200, "ok\n")
        broker.kill()                                    # now a backlog that cannot go out
        for seq in range(11, 16):
            node.send(seq, value=seq)
        wait_until(lambda: gw.get("/healthz")[0] == 503, 15, "unhealthy")
        assert "uplink stalled: 5 frames spooled" in gw.get("/healthz")[1]
        broker.start()                                   # same port, same persistence
        wait_until(lambda: gw.get("/healthz")[0] == 200, 40, "healthy again")
        assert gw.get("/nothing")[0] == 404
    finally:
        node.close()
        gw.stop()
        broker.stop()


def test_time_goes_to_nodes_on_hello_and_periodically(tmp_path):
    from sensorcity.protocol import frames
    broker = Mosquitto(tmp_path / "broker")
    gw = Gateway(tmp_path, [broker.url], time_every=1.0)
    node = gw.node()
    try:
        asked = time.time()
        node.send(0, kind=frames.HELLO, value={"fw": "test", "boot": 1, "kind": "energy",
                                               "bn": "urn:dev:ops:n1:", "interval": 60})
        wait_until(lambda: node.downlink, 15, "the time after hello")
        got = time.time()
        first = node.downlink[0]
        # the gateway's clock between the hello and the answer (a busy host widens the span)
        assert first.kind == frames.TIME and asked - 0.01 <= first.body / 1000 <= got + 0.01
        wait_until(lambda: sum(f.kind == frames.TIME for f in node.downlink) >= 4, 30,
                   "three periodic times")
        times = [f for f in node.downlink if f.kind == frames.TIME]
        # periodic, not a flood: no more than one a second (time_every) since the first
        assert len(times) <= 2 + (time.time() - got) / 1.0, times
        assert [f.seq for f in times] == sorted({f.seq for f in times})  # fresh seq each time
    finally:
        node.close()
        gw.stop()
        broker.stop()
