import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mprun import *  # noqa: F401,F403 (both tiers' conftest modules offer the same helpers)
from rig import free_port


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto (Debian package) on a free loopback port, with persistence."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is not installed: run `make test` (it installs it) or "
                    "`apt-get install mosquitto`")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {tmp_path}/\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"mosquitto did not start: {proc.stderr.read().decode()}")
    yield port
    proc.terminate()
    proc.wait(5)
