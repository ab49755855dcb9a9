"""The uplink at its edges, against a real mosquitto (issue 11): a broker that refuses a batch in
its PUBACK (an ACL), a connection that goes silent without closing (a black-holing proxy), a
command left retained on the broker, and a password that must never be printed."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import cbor2
import pytest

from rigs.gateway import Gateway, Mosquitto, Subscriber, wait_until
from rigs.targets import SENSORCITY
from sensorcity.gateway.spool import Spool
from sensorcity.protocol import frames

pytestmark = [pytest.mark.mosquitto, pytest.mark.adversarial]
CMD = "sensorcity/v1/gw1/cmd/n1"


def values(sub):
    return [r[2] for _, _, payload, _, _ in sub.on("/batch") for r in cbor2.loads(payload)]


def metric(gw, line: str) -> float:
    """The value of one sample of /metrics, `name{labels}` as Prometheus prints it; 0 if absent."""
    for text in gw.get("/metrics")[1].splitlines():
        if text.rpartition(" ")[0] == line:
            return float(text.rpartition(" ")[2])
    return 0.0


def commands(node):
    return [f.body for f in node.downlink if f.kind == frames.CMD]


def test_a_refused_puback_keeps_the_rows_until_the_broker_accepts(tmp_path):
    """mosquitto's ACL denies the batch topic: it answers each batch with PUBACK 0x87. The rows
    stay spooled and the refusals are counted; once the ACL allows it (SIGHUP reloads it) every
    reading arrives, none lost."""
    acl = tmp_path / "acl"
    acl.write_text("topic read #\ntopic write sensorcity/v1/gw1/status\n"
                   "topic write sensorcity/v1/gw1/cmd/#\n")
    broker = Mosquitto(tmp_path / "broker", extra=(f"acl_file {acl}",))
    sub = Subscriber(broker, ["sensorcity/v1/+/batch"])
    gw = Gateway(tmp_path, [broker.url])
    node = gw.node()
    refused = 'sensorcity_gateway_batches_refused_total{code="0x87",reason="Not authorized"}'
    try:
        for seq in range(20):
            node.send(seq, value=1000 + seq)
        wait_until(lambda: len(node.acked) == 20, 15, "20 acks to the node")
        wait_until(lambda: metric(gw, refused) >= 2, 20, "two refusals counted")
        assert values(sub) == [] and Spool(gw.spool).depth() == 20
        assert "Not authorized" in gw.output() and "kept in the spool" in gw.output()
        # the operator's page says why
        assert "Not authorized" in json.loads(gw.get("/status.json")[1])["uplink"]["last_error"]
        acl.write_text(acl.read_text() + "topic write sensorcity/v1/gw1/batch\n")
        broker.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(values(sub)) >= 20, 60, "the 20 readings after the ACL is fixed")
        assert sorted(values(sub)) == list(range(1000, 1020))
        wait_until(lambda: Spool(gw.spool).depth() == 0, 10, "the spool released")
        assert metric(gw, "sensorcity_gateway_readings_published_total") == 20
    finally:
        node.close()
        gw.stop()
        sub.close()
        broker.stop()


class SilentProxy:
    """A loopback TCP proxy that can go silent: `blackhole()` stops every byte both ways on the
    connections it has and on new ones, closing nothing (a NAT that forgot the flow, a dead
    uplink); `restore()` forwards new connections again."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silent = False
        self.conns: list[dict] = []       # kept so nothing is closed by the collector
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            conn = {"alive": not self.silent, "socks": [down]}
            self.conns.append(conn)
            if conn["alive"]:
                up = socket.create_connection(("127.0.0.1", self.target))
                conn["socks"].append(up)
                for a, b in ((down, up), (up, down)):
                    threading.Thread(target=self._pump, args=(conn, a, b), daemon=True).start()

    def _pump(self, conn, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not conn["alive"]:
                if data:
                    continue    # swallowed
                return          # an end is not passed on either
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(data)

    def blackhole(self):
        self.silent = True
        for conn in self.conns:
            conn["alive"] = False

    def restore(self):
        self.silent = False

    def close(self):
        self.listener.close()
        for conn in self.conns:
            for s in conn["socks"]:
                s.close()


def test_a_silent_connection_is_found_by_keepalive_and_the_uplink_reconnects(tmp_path):
    """With nothing to publish, the gateway must still notice that its broker stopped answering
    (keepalive 2 s: PINGREQ unanswered), say not connected, reconnect through the restored
    path and take commands again."""
    broker = Mosquitto(tmp_path / "broker")
    proxy = SilentProxy(broker.port)
    sub = Subscriber(broker, ["sensorcity/v1/gw1/cmd/+/ack"])
    gw = Gateway(tmp_path, [f"mqtt://127.0.0.1:{proxy.port}"], keepalive=2, cmd_resend=1.0)
    node = gw.node()
    connected = "sensorcity_gateway_uplink_connected"
    try:
        node.send(0, value=1)                     # the gateway learns the node's link
        wait_until(lambda: metric(gw, "sensorcity_gateway_readings_published_total") == 1, 15,
                   "the first reading published")
        sub.publish(CMD, json.dumps({"op": "interval", "value": 7}))
        wait_until(lambda: commands(node), 10, "a command before the silence")
        proxy.blackhole()
        began = time.monotonic()
        wait_until(lambda: metric(gw, connected) == 0, 30, "uplink_connected 0")
        print(f"silence noticed after {time.monotonic() - began:.1f} s (keepalive 2 s)")
        assert "connection lost" in gw.output()
        proxy.restore()
        wait_until(lambda: metric(gw, connected) == 1 and
                   metric(gw, "sensorcity_gateway_uplink_connects_total") >= 2, 60,
                   "a new connection through the restored path")
        print(f"reconnected {time.monotonic() - began:.1f} s after the silence began")
        sub.publish(CMD, json.dumps({"op": "interval", "value": 9}))
        wait_until(lambda: {"op": "interval", "value": 9} in commands(node), 15,
                   "the command published after the reconnect")
        node.send(1, value=2)
        wait_until(lambda: metric(gw, "sensorcity_gateway_readings_published_total") == 2, 15,
                   "a reading published after the reconnect")
    finally:
        node.close()
        gw.stop()
        sub.close()
        proxy.close()
        broker.stop()


def test_a_retained_command_is_refused_on_every_subscribe(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/gw1/cmd/+/ack"])
    sub.client.publish(CMD, json.dumps({"op": "reboot", "id": "oops"}), qos=1,
                       retain=True).wait_for_publish(5)   # the mistake, before the gateway starts
    gw = Gateway(tmp_path, [broker.url])
    node = gw.node()

    def acks():
        return [json.loads(m[2]) for m in sub.on("/ack")]
    try:
        node.send(0, value=1)
        wait_until(lambda: acks(), 15, "the refusal on the ack topic")
        assert acks()[0]["status"] == "rejected" and acks()[0]["id"] == "oops"
        assert "retained" in acks()[0]["error"]
        # retained while the gateway listens (MQTT 5 retain-as-published): refused too
        sub.client.publish(CMD, json.dumps({"op": "reboot", "id": "live"}), qos=1,
                           retain=True).wait_for_publish(5)
        wait_until(lambda: len(acks()) >= 2, 10, "the second refusal")
        assert acks()[1]["id"] == "live" and acks()[1]["status"] == "rejected"
        sub.publish(CMD, json.dumps({"op": "interval", "value": 5, "id": "ok"}))
        wait_until(lambda: commands(node), 10, "the command that is not retained")
        assert commands(node) == [{"op": "interval", "value": 5}]   # never a reboot
        assert metric(gw, "sensorcity_gateway_commands_retained_total") == 2
    finally:
        node.close()
        gw.stop()
    # a restart subscribes again: the broker hands the retained one out again; still refused
    gw = Gateway(tmp_path, [broker.url])
    node = gw.node()
    try:
        node.send(1, value=1)
        wait_until(lambda: metric(gw, "sensorcity_gateway_commands_retained_total") == 1, 15,
                   "the retained command refused after a restart")
        time.sleep(1)
        # the interval command, never acked by this node, still waits (kept across the restart)
        assert {"op": "reboot"} not in commands(node), commands(node)
    finally:
        node.close()
        gw.stop()
        sub.close()
        broker.stop()


def test_the_password_comes_from_a_file_or_a_credential_and_is_never_printed(tmp_path):
    secret = "Zq7-very-secret"
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw", secret], check=True,
                   capture_output=True)
    broker = Mosquitto(tmp_path / "broker", extra=("allow_anonymous false",
                                                   f"password_file {passwd}"))
    url = f"mqtt://gw@127.0.0.1:{broker.port}"
    (tmp_path / "pw").write_text(secret + "\n")
    os.chmod(tmp_path / "pw", 0o600)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(secret)
    published = "sensorcity_gateway_readings_published_total"
    runs = [("file", {"password_file": str(tmp_path / "pw")}, None),
            ("credential", {}, {"CREDENTIALS_DIRECTORY": str(creds)})]
    for name, settings, env in runs:
        (tmp_path / name).mkdir()
        gw = Gateway(tmp_path / name, [url], env=env, **settings)
        node = gw.node()
        try:
            node.send(0, value=1)
            wait_until(lambda: metric(gw, published) == 1, 15, f"a reading, password by {name}")
        finally:
            node.close()
            gw.stop()
        assert secret not in gw.output()
    # a wrong password: refused by the broker, said in the log, the password not in it
    (tmp_path / "bad").write_text("wrong-" + secret)
    (tmp_path / "bad-run").mkdir()
    gw = Gateway(tmp_path / "bad-run", [url], password_file=str(tmp_path / "bad"))
    try:
        wait_until(lambda: "broker 127.0.0.1" in gw.output(), 15, "the refusal logged")
        assert metric(gw, "sensorcity_gateway_uplink_connected") == 0
        page = gw.get("/status.json")[1]
        assert f"127.0.0.1:{broker.port}: " in json.loads(page)["uplink"]["last_error"], page
        assert secret not in page
    finally:
        gw.stop()
    assert secret not in gw.output()
    check = subprocess.run([SENSORCITY, "gateway", "check-config", "--config",
                            str(tmp_path / "file" / "gw.toml")], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0 and secret not in check.stdout + check.stderr, check.stderr
    assert f"mqtt://127.0.0.1:{broker.port}" in check.stdout
    broker.stop()
