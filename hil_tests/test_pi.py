"""Proof on a Pi's architecture (`make test-pi`; its own target, docs/deployment.md): the Debian
package, installed with dpkg in an arm64 Debian bookworm root (mmdebstrap, run through
qemu-user), runs the gateway there as its system user. An emulated node on the host (the real
firmware on the MicroPython unix port) and the protocol codec send it frames over TCP; it
publishes them to a mosquitto on the host; `check-config` passes; SIGTERM drains what is spooled
and ends it with exit 0."""

import json
import os
import platform
import socket
import subprocess
import time
import urllib.request

import cbor2
import pytest

from rigs.gateway import FakeNode, Mosquitto, Subscriber, registry, wait_until, write_config
from rigs.pi import PiRoot, ensure_binfmt, rootfs_tarball
from rigs.targets import SENSORCITY, free_port
from sensorcity.gateway.spool import Spool
from sensorcity.protocol import senml
from sensorcity.tools.sim.emulate import stop_process
from test_deb import build

pytestmark = [
    pytest.mark.mosquitto, pytest.mark.unixport,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and dpkg: root"),
]


def _log(msg):
    print(f"test-pi: {msg}", flush=True)


@pytest.fixture(scope="module")
def pi(tmp_path_factory):
    t0 = time.monotonic()
    ensure_binfmt()
    tar = rootfs_tarball(log=_log)
    t1 = time.monotonic()
    root = PiRoot(tmp_path_factory.mktemp("pi") / "root", tar)
    t2 = time.monotonic()
    deb = build(tmp_path_factory.mktemp("deb"))
    t3 = time.monotonic()
    root.run("dpkg", "-i", root.put(deb, "/tmp/sensorcity.deb"))
    t4 = time.monotonic()
    _log(f"rootfs {t1 - t0:.0f} s (cached: {tar.name}), unpacked {t2 - t1:.0f} s, .deb built "
         f"{t3 - t2:.0f} s, dpkg -i in the arm64 root {t4 - t3:.0f} s")
    yield root
    root.remove()


def test_the_root_is_arm64(pi):
    assert pi.run("uname", "-m").stdout.strip() == "aarch64" != platform.machine()
    assert pi.run("dpkg", "--print-architecture").stdout.strip() == "arm64"
    assert pi.run("dpkg-query", "-W", "-f", "${Status}", "sensorcity").stdout == \
        "install ok installed"


def test_gateway_on_arm64_carries_frames_and_drains_on_sigterm(pi, tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/pi1/#"])
    reg = tmp_path / "nodes.json"
    keys = registry(reg, ["codec-1"])
    node_cfg = tmp_path / "n1.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", "pi-energy-1", "--sensor", "energy",
                    "--registry", reg, "--out", node_cfg, "--interval", "2"], check=True,
                   capture_output=True)
    base = json.loads(node_cfg.read_text())["base_name"]
    pi.put(reg, "/etc/sensorcity/nodes.json")
    pi.run("chown", "root:sensorcity", "/etc/sensorcity/nodes.json")
    pi.run("chmod", "0640", "/etc/sensorcity/nodes.json")
    tcp, http = free_port(), free_port()
    # batch_age 20 s: at SIGTERM acked frames wait in the spool, for the drain to publish
    write_config(tmp_path / "gw.toml", gateway_id="pi1", listen=[f"tcp://127.0.0.1:{tcp}"],
                 brokers=[broker.url], nodes="/etc/sensorcity/nodes.json",
                 spool="/var/lib/sensorcity", metrics=f"127.0.0.1:{http}", batch_age=20.0)
    pi.put(tmp_path / "gw.toml", "/tmp/gw.toml")

    p = pi.run("setpriv", "--reuid=sensorcity", "--regid=sensorcity", "--init-groups",
               "/usr/bin/sensorcity", "gateway", "check-config", "--config", "/tmp/gw.toml")
    assert p.stdout.startswith("config ok: gateway pi1, 1 TCP listeners") and \
        "2 nodes" in p.stdout, p.stdout

    log = open(tmp_path / "gateway.log", "w+")
    started = time.monotonic()
    gw = pi.popen("setpriv", "--reuid=sensorcity", "--regid=sensorcity", "--init-groups",
                  "/usr/bin/sensorcity", "gateway", "run", "--config", "/tmp/gw.toml",
                  stdout=log, stderr=subprocess.STDOUT)
    emulated = codec = None
    try:
        wait_until(lambda: _listening(tcp, gw, log), 120, "the arm64 gateway's listener")
        _log(f"gateway listening after {time.monotonic() - started:.1f} s under qemu-user")
        emulated = subprocess.Popen([SENSORCITY, "emulate", "--config", node_cfg, "--port",
                                     f"tcp://127.0.0.1:{tcp}", "--interval", "2"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: len(_names(sub, base)) >= 10, 120,
                   "the emulated node's records on the host's broker")
        codec = FakeNode(tcp, "codec-1", keys["codec-1"])
        for seq in range(1, 6):
            codec.send(seq, value=9000 + seq)
        wait_until(lambda: codec.acked >= {1, 2, 3, 4, 5}, 30, "the codec's five acks")
        pending = _spool_frames(http)
        stopped = time.monotonic()
        gw.terminate()
        rc = gw.wait(30)
        drain = time.monotonic() - stopped
    finally:
        stop_process(emulated)
        if codec:
            codec.close()
        stop_process(gw)
    log.seek(0)
    out = log.read()
    _log(f"SIGTERM with {pending} frames spooled to exit {drain:.2f} s; records of the "
         f"emulated node on the broker: {len(_names(sub, base))}")
    assert rc == 0, out
    assert Spool(pi.path / "var/lib/sensorcity").depth() == 0  # the drain published them all
    wait_until(lambda: {9001, 9002, 9003, 9004, 9005} <= _values(sub), 10,
               "the drained frames on the broker")
    status = sub.on("/status")
    assert status and status[-1][2] == b"offline", status
    sub.close()
    broker.stop()


def _listening(port, proc, log):
    if proc.poll() is not None:
        log.seek(0)
        raise AssertionError(f"the gateway exited: {log.read()[-3000:]}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _spool_frames(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("sensorcity_gateway_spool_frames ")))


def _records(sub):
    return [r for m in sub.on("/batch") for r in senml.resolve(cbor2.loads(m[2]))]


def _names(sub, base):
    return [r.n for r in _records(sub) if r.n.startswith(base)]


def _values(sub):
    return {r.v for r in _records(sub)}
