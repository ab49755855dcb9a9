"""The shipped systemd unit and udev rule: the unit passes `systemd-analyze verify` with no
warning and scores 2.0 or lower in `systemd-analyze security --offline=yes`; the notify protocol
is systemd's; the udev rule is well formed and gives dialout access and stable names."""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from sensorcity.gateway import notify

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "gateway" / "systemd" / "sensorcity-gateway.service"
RULES = ROOT / "gateway" / "udev" / "99-sensorcity.rules"


def analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: `apt-get install systemd` (make test does)")
    return exe


def unit_root(tmp_path):
    """A root with the unit installed, systemd's own units, and /usr/bin/sensorcity (as a
    package installs it; here a stand-in that runs the venv's command)."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "usr/bin/sensorcity"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!/bin/sh\nexec {ROOT}/.venv/bin/sensorcity \"$@\"\n")
    exe.chmod(0o755)
    return root


def test_unit_verifies_without_warnings(tmp_path):
    p = subprocess.run([analyze(), "verify", f"--root={unit_root(tmp_path)}",
                        "sensorcity-gateway.service"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), p.stderr


def test_unit_security_exposure_at_most_2(tmp_path):
    p = subprocess.run([analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout


def test_unit_is_what_the_design_asks():
    text = UNIT.read_text()
    keys = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"] and float(keys["WatchdogSec"][0]) > 0
    assert keys["User"] == ["sensorcity"] and keys["SupplementaryGroups"] == ["dialout"]
    assert keys["StateDirectory"] == ["sensorcity"] and keys["ProtectSystem"] == ["strict"]
    # the spool default of the gateway is the state directory
    from sensorcity.gateway.config import Config
    assert Config().spool == "/var/lib/" + keys["StateDirectory"][0]


def test_notify_datagrams_reach_the_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify.notify("READY=1")
        assert s.recv(100) == b"READY=1"
    abstract = f"@sensorcity-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + abstract[1:])
        s.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", abstract)
        assert notify.notify("WATCHDOG=1")
        assert s.recv(100) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify.notify("READY=1")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")           # meant for another process
    assert notify.watchdog_period() is None


UDEV_KEYS = {"SUBSYSTEM", "ENV", "ATTRS", "GOTO", "LABEL", "GROUP", "MODE", "SYMLINK",
             "KERNEL", "DRIVERS"}
UDEV_ITEM = re.compile(r'([A-Z_]+)(\{[A-Za-z_]+\})?(==|!=|\+=|=|:=)"([^"]*)"')


def test_udev_rule_is_well_formed():
    """udev's grammar (udev(7)): comma-separated KEY[{attr}]OP"value"; every GOTO has its
    LABEL; matching a known adapter sets dialout 0660 and a stable symlink."""
    labels, gotos, assigned = set(), set(), {}
    for raw in RULES.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        items = [i.strip() for i in line.split(", ")]
        for item in items:
            m = UDEV_ITEM.fullmatch(item)
            assert m, f"not udev syntax: {item!r} in {raw!r}"
            key, attr, op, value = m.groups()
            assert key in UDEV_KEYS, key
            if key == "LABEL":
                labels.add(value)
            elif key == "GOTO":
                gotos.add(value)
            elif op in ("=", "+=", ":="):
                assigned[key] = value
    assert gotos <= labels, gotos - labels
    assert assigned["GROUP"] == "dialout" and assigned["MODE"] == "0660"
    assert assigned["SYMLINK"].startswith("sensorcity/")
    assert '"10c4"' in RULES.read_text() and '"303a"' in RULES.read_text()
