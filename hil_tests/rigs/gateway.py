"""What the gateway operations tests share: mosquittos to start and kill (plain or TLS), a
subscriber that keeps every message with its arrival time, and a protocol-level node (the link
codec in CPython) on TCP."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from .targets import SENSORCITY, free_port
from .mosquitto import Mosquitto  # noqa: F401 (the tests take it from here)
from sensorcity.protocol import frames
from sensorcity.gateway.registry import NodeEntry, Registry


class Subscriber:
    """paho with a persistent session; messages kept as (arrival, topic, payload, properties)."""

    def __init__(self, broker: Mosquitto, topics: list[str], client_id: str = ""):
        self.messages: list = []
        self.lock = threading.Lock()
        connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        if broker.tls:
            c.tls_set(ca_certs=str(broker.tls["ca"]), certfile=str(broker.tls["client_cert"]),
                      keyfile=str(broker.tls["client_key"]))

        def on_connect(cl, u, f, rc, p):
            for t in topics:
                cl.subscribe(t, qos=1)
            connected.set()

        def on_message(cl, u, m):
            with self.lock:
                self.messages.append((time.time(), m.topic, m.payload, m.properties, m.retain))
        c.on_connect, c.on_message = on_connect, on_message
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        assert connected.wait(5), "subscriber did not connect"
        time.sleep(0.2)  # the SUBACK
        self.client = c

    def on(self, suffix: str) -> list:
        with self.lock:
            return [m for m in self.messages if m[1].endswith(suffix)]

    def publish(self, topic, payload):
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def wait_until(cond, timeout: float, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def registry(path: Path, nodes: list[str]) -> dict[str, bytes]:
    keys = {}
    for i, node in enumerate(nodes):
        key = bytes([i + 1]) * 32
        Registry.add(path, NodeEntry(node, key, f"urn:dev:ops:{node}:", "energy"))
        keys[node] = key
    return keys


def pack(node: str, t: int, value) -> list:
    return [{-2: f"urn:dev:ops:{node}:", -3: t, 0: "power_import", 1: "W", 2: value}]


class FakeNode:
    """A node speaking link protocol v1 over TCP: data frames, and the gateway's acks counted."""

    def __init__(self, port: int, node: str, key: bytes):
        self.node, self.key = node, key
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.acked: set[int] = set()
        self.downlink: list[frames.Frame] = []
        self.deframer = frames.Deframer()
        self.stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            for cobs in self.deframer.feed(data):
                f = frames.decode(cobs, lambda n: self.key)
                if f.kind == frames.ACK:
                    self.acked.add(f.body)
                else:
                    self.downlink.append(f)

    def send(self, seq: int, t: int | None = None, value=None, kind=frames.DATA, key=None):
        body = pack(self.node, int(time.time()) if t is None else t,
                    seq if value is None else value) if kind == frames.DATA else value
        self.sock.sendall(frames.encode(key or self.key, kind, self.node, seq, body))

    def close(self):
        self.stop = True
        self.sock.close()


def write_config(path: Path, **settings) -> Path:
    lines = []
    for k, v in settings.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def plain_ssl_context(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


class Gateway:
    """`sensorcity gateway run` as a process, with a TCP listener and metrics on free ports."""

    def __init__(self, tmp_path, brokers, nodes=("n1",), env=None, nodes_path=None,
                 exe=SENSORCITY, preexec_fn=None, **settings):
        self.tcp, self.http = free_port(), free_port()
        self.keys = registry(tmp_path / "nodes.json", list(nodes)) if nodes else {}
        self.spool = tmp_path / "spool"
        cfg = dict(gateway_id="gw1", listen=[f"tcp://127.0.0.1:{self.tcp}"], brokers=brokers,
                   spool=str(self.spool), nodes=nodes_path or str(tmp_path / "nodes.json"),
                   metrics=f"127.0.0.1:{self.http}", batch_age=0.2)
        cfg.update(settings)
        write_config(tmp_path / "gw.toml", **cfg)
        self.log = open(tmp_path / "gateway.log", "w+")
        self.proc = subprocess.Popen([exe, "gateway", "run", "--config",
                                      str(tmp_path / "gw.toml")], stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     preexec_fn=preexec_fn)
        wait_until(self._listening, 15, "the gateway's listener")

    def _listening(self):
        assert self.proc.poll() is None, self.output()
        try:
            socket.create_connection(("127.0.0.1", self.tcp), timeout=0.2).close()
            return True
        except OSError:
            return False

    def node(self, name="n1"):
        return FakeNode(self.tcp, name, self.keys[name])

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
