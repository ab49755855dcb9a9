"""A real mosquitto (Debian's) on a free loopback port, for tests, the bench and load runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sensorcity.tools.sim.broker import free_port


class Mosquitto:
    """A real mosquitto on a free loopback port with persistence; `tls` = a PKI dict from
    tests/gateway_pki.py, then the listener asks for a client certificate."""

    def __init__(self, workdir: Path, tls: dict | None = None, extra: tuple[str, ...] = ()):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                f"persistence_location {self.dir}/"]
        if os.geteuid() == 0:
            conf.append("user root")  # else it drops to `mosquitto`, who cannot read tmp files
        if tls:
            conf += [f"cafile {tls['ca']}", f"certfile {tls['server_cert']}",
                     f"keyfile {tls['server_key']}", "require_certificate true"]
        conf += list(extra)  # e.g. a bridge's lines
        (self.dir / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        self.tls = tls
        self.proc = None
        self.start()

    def start(self):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"mosquitto did not start: {self.proc.stderr.read().decode()}")

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    @property
    def url(self):
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"
