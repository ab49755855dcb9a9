"""The Debian package of the gateway (`make deb`, packaging/deb/): it builds reproducibly, lintian
finds no error, and on this machine (root) it installs with dpkg, runs from /usr/bin against a
real mosquitto, passes `systemd-analyze verify`, upgrades keeping the spool and an operator's
configuration, and purges leaving only the system user (Debian policy keeps it)."""

import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_install_wheel import gateway_carries_a_frame

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "packaging" / "deb" / "build.sh"
FILES = ["/usr/bin/sensorcity", "/usr/lib/sensorcity/python/sensorcity/cli.py",
         "/lib/systemd/system/sensorcity-gateway.service", "/lib/udev/rules.d/99-sensorcity.rules",
         "/etc/sensorcity/gateway.toml", "/usr/share/doc/sensorcity/copyright",
         "/usr/share/man/man1/sensorcity.1.gz"]
LEFT_BY_PURGE = ["/usr/bin/sensorcity", "/usr/lib/sensorcity", "/etc/sensorcity",
                 "/var/lib/sensorcity", "/usr/share/doc/sensorcity",
                 "/lib/systemd/system/sensorcity-gateway.service",
                 "/lib/udev/rules.d/99-sensorcity.rules", "/var/lib/dpkg/info/sensorcity.list"]

pytestmark = [pytest.mark.mosquitto,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dpkg-deb"),
                                 reason="installs a package: root on Debian")]


def _run(cmd, timeout=300, check=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise AssertionError(f"{cmd}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _dpkg(*args):
    """dpkg, waiting while another engineer's apt or dpkg holds the lock."""
    deadline = time.monotonic() + 300
    while True:
        p = _run(["dpkg", *args], check=False)
        if p.returncode == 0 or "lock" not in p.stderr or time.monotonic() > deadline:
            assert p.returncode == 0, p.stderr
            return p
        time.sleep(2)


def build(out: Path) -> Path:
    return Path(_run(["sh", BUILD, sys.executable, out]).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    lock = open("/run/lock/sensorcity-deb-test.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one run of these tests per machine at a time
    if _run(["dpkg-query", "-W", "sensorcity"], check=False).returncode == 0:
        pytest.skip("a sensorcity package is installed on this machine; not touching it")
    try:
        had_user = pwd.getpwnam("sensorcity") is not None
    except KeyError:
        had_user = False
    yield build(tmp_path_factory.mktemp("deb"))
    _run(["dpkg", "-P", "sensorcity"], check=False)
    if not had_user:  # the test's own leftover, not the package's business
        _run(["deluser", "--system", "--quiet", "sensorcity"], check=False)
    lock.close()


def test_builds_reproducibly_and_lintian_finds_no_error(deb, tmp_path):
    again = build(tmp_path)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(deb.read_bytes()).digest()
    if not shutil.which("lintian"):
        pytest.fail("lintian is missing: `apt-get install lintian` (make test does)")
    p = _run(["lintian", "--fail-on", "error", deb], check=False)
    errors = [line for line in p.stdout.splitlines() if line.startswith("E:")]
    assert p.returncode == 0 and errors == [], p.stdout + p.stderr
    fields = _run(["dpkg-deb", "-f", deb, "Architecture", "Depends"]).stdout
    assert "Architecture: all" in fields, fields


def test_install_run_upgrade_purge(deb, tmp_path):
    _dpkg("-i", deb)
    for f in FILES:
        assert Path(f).exists(), f
    assert _run(["dpkg-query", "-W", "-f", "${Conffiles}", "sensorcity"]).stdout.split()[0] == \
        "/etc/sensorcity/gateway.toml"
    user = pwd.getpwnam("sensorcity")
    assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/sensorcity"
    assert "sensorcity" in _run(["id", "-nG", "sensorcity"]).stdout.split() and \
        "dialout" in _run(["id", "-nG", "sensorcity"]).stdout.split()
    spool = Path("/var/lib/sensorcity")
    assert spool.stat().st_uid == user.pw_uid and spool.stat().st_mode & 0o777 == 0o700

    p = _run(["/usr/bin/sensorcity", "--help"])
    assert "gateway" in p.stdout
    # the shipped example, once the operator has put the bench's registry in place (the package
    # ships none: a gateway without one refuses to start, docs/deployment.md)
    registry = Path("/etc/sensorcity/nodes.json")
    registry.unlink(missing_ok=True)  # a run cut short before its purge may have left one
    p = _run(["/usr/bin/sensorcity", "gateway", "check-config"], check=False)
    assert p.returncode == 2 and "/etc/sensorcity/nodes.json" in p.stderr, p.stderr
    registry.write_text('{"nodes": {"n1": {"key": "' + "11" * 32 + '", "base_name": '
                        '"urn:dev:ops:n1:", "sensor": "energy"}}}')
    registry.chmod(0o600)
    p = _run(["/usr/bin/sensorcity", "gateway", "check-config"])
    assert p.stdout.startswith("config ok:") and "1 serial patterns" in p.stdout, p.stdout
    p = _run(["systemd-analyze", "verify", "/lib/systemd/system/sensorcity-gateway.service"],
             check=False)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stderr

    # the installed command, with its vendored dependencies, carries a frame to a real broker
    gateway_carries_a_frame("/usr/bin/sensorcity", tmp_path)

    # an upgrade (the same package as a later version) keeps the spool and an edited conffile
    (spool / "spool.db").write_text("frames")
    conf = Path("/etc/sensorcity/gateway.toml")
    conf.write_text(conf.read_text() + 'gateway_id = "gw-test"\n')
    _dpkg("-i", _later_version(deb, tmp_path))
    assert _run(["dpkg-query", "-W", "-f", "${Version}", "sensorcity"]).stdout.endswith("+1")
    assert (spool / "spool.db").read_text() == "frames"
    assert 'gateway_id = "gw-test"' in conf.read_text()
    _dpkg("-i", deb)  # and back (a reinstall of the release)

    registry.unlink()  # the operator's file, not the package's
    _dpkg("-P", "sensorcity")
    left = [f for f in LEFT_BY_PURGE if os.path.lexists(f)]
    assert left == []
    assert pwd.getpwnam("sensorcity")  # policy: a system user is not removed


def _later_version(deb: Path, tmp_path: Path) -> Path:
    tree = tmp_path / "later"
    _run(["dpkg-deb", "-R", deb, tree])
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = next(line.split(": ")[1] for line in text.splitlines() if line.startswith("Version:"))
    control.write_text(text.replace(f"Version: {version}", f"Version: {version}+1"))
    out = tmp_path / f"sensorcity_{version}+1_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", tree, out])
    return out
