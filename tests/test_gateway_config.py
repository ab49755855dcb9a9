"""Gateway config: TLS on by default for any broker that is not loopback, every broken config
refused with one line (exit 2 from the CLI), flags over the file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensorcity.errors import FatalError
from sensorcity.gateway import config
from sensorcity.gateway.config import Broker

SENSORCITY = str(Path(sys.executable).parent / "sensorcity")


def test_broker_tls_policy():
    assert Broker.parse("mqtt://127.0.0.1:1883").tls is False
    assert Broker.parse("mqtt://localhost").tls is False
    assert Broker.parse("mqtt://[::1]:1884").port == 1884
    b = Broker.parse("mqtts://broker.city.example")
    assert (b.tls, b.port) == (True, 8883)
    with pytest.raises(FatalError, match="tls = false"):
        Broker.parse("mqtt://broker.city.example")
    with pytest.raises(FatalError, match="not loopback"):
        Broker.parse("mqtt://10.0.0.5:1883")
    assert Broker.parse("mqtt://10.0.0.5:1883", tls=False).tls is False
    assert Broker.parse("mqtt://10.0.0.5", tls=True) == Broker("10.0.0.5", 8883, True)
    assert Broker.parse("mqtts://u:p@h:1").username == "u"


@pytest.mark.adversarial
def test_a_name_under_localhost_is_not_taken_for_loopback():
    # this machine's resolver sends *.localhost to DNS (nsswitch "files dns"), so such a name
    # can lead anywhere: plain MQTT to it, or a page without a token on it, would leave the host
    with pytest.raises(FatalError, match="not loopback"):
        Broker.parse("mqtt://broker.localhost:1883")
    assert not config.is_loopback("gw.localhost")
    assert config.is_loopback("localhost") and config.is_loopback("127.0.0.2")


def write(tmp_path, text):
    p = tmp_path / "gw.toml"
    p.write_text(text)
    return p


def test_flags_override_the_file(tmp_path):
    p = write(tmp_path, 'gateway_id = "gw7"\nbrokers = ["mqtt://127.0.0.1:1"]\n'
                        'serial = ["/dev/serial/by-id/*"]\nbatch_age = 2\n')
    cfg = config.load(p, brokers=["mqtt://127.0.0.1:2"], serial=None, listen=[])
    assert cfg.brokers == ["mqtt://127.0.0.1:2"] and cfg.serial == ["/dev/serial/by-id/*"]
    assert cfg.gateway_id == "gw7" and cfg.batch_age == 2


BROKEN = {
    'listen = ["udp://x:1"]': "listen",
    'brokers = ["mqtt://broker.example:1883"]': "tls = false",
    'brokers = ["http://x"]': "mqtt://HOST:PORT",
    'brokers = []': "no broker",
    'batch_max = 0': "batch_max",
    'batch_age = "1s"': "batch_age must be float",
    'tls = "yes"': "tls must be",
    'cert = "/nonexistent.pem"\nkey = "/nonexistent.key"': "cert /nonexistent.pem: no such file",
    'cert = "/etc/hostname"': "cert and key go together",
    'metrics = "9108"': "metrics",
    'page_token = "short"': "page_token: at least 16",
    'gateway_id = "a/b"': "gateway_id",
    'serial = "/dev/ttyUSB0"': "serial must be list",
    'serial = [1]': "list of strings",
    'mqtt_version = 6': "mqtt_version",
    'spool_max_mb = 1': "spool_max_mb 1: at least 4",
    'colour = "red"': "unknown setting 'colour'",
    'keepalive = 1': "keepalive 1: seconds, 2..65535",
    'replay_window = -1': "replay_window -1",
    'password_file = "/nonexistent/pw"': "password_file /nonexistent/pw: No such file",
    'brokers = [': "config",
}


@pytest.mark.parametrize("text", list(BROKEN), ids=list(BROKEN.values()))
def test_each_broken_config_is_one_line_and_exit_2(tmp_path, text):
    p = subprocess.run([SENSORCITY, "gateway", "check-config", "--config",
                        str(write(tmp_path, text + "\n"))],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and BROKEN[text] in lines[0], p.stderr


def test_check_config_says_what_it_holds(tmp_path):
    (tmp_path / "none.json").write_text('{"nodes": {}}')
    p = write(tmp_path, 'gateway_id = "gw1"\nbrokers = ["mqtt://10.0.0.5", "mqtts://b.example"]\n'
                        f'tls = false\nnodes = "{tmp_path}/none.json"\n'
                        'serial = ["/dev/serial/by-id/*"]\n')
    out = subprocess.run([SENSORCITY, "gateway", "check-config", "--config", str(p)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "mqtt://10.0.0.5:1883, mqtts://b.example:8883" in out.stdout
    assert "1 serial patterns" in out.stdout and "gw1" in out.stdout


def test_a_key_that_does_not_fit_the_certificate_is_refused(tmp_path):
    from gateway_pki import make_pki
    pki = make_pki(tmp_path)
    other = make_pki(tmp_path / "other")
    (tmp_path / "none.json").write_text("")
    p = write(tmp_path, f'brokers = ["mqtts://b.example"]\nca = "{pki["ca"]}"\n'
                        f'cert = "{pki["client_cert"]}"\nkey = "{other["client_key"]}"\n'
                        f'nodes = "{tmp_path}/none.json"\n')
    out = subprocess.run([SENSORCITY, "gateway", "check-config", "--config", str(p)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "TLS files" in out.stderr


SECRET = "s3cret-Pa55"


@pytest.mark.adversarial
def test_password_from_a_file_or_the_systemd_credential(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pw = tmp_path / "mqtt-password"
    pw.write_text(SECRET + "\n")
    p = write(tmp_path, f'brokers = ["mqtt://gw@127.0.0.1:1", "mqtt://127.0.0.1:2"]\n'
                        f'password_file = "{pw}"\n')
    brokers = config.load(p).broker_list()
    assert [(b.username, b.password) for b in brokers] == [("gw", SECRET), (None, SECRET)]
    assert SECRET not in repr(brokers)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    p = write(tmp_path, 'brokers = ["mqtt://gw@127.0.0.1:1"]\n')
    assert config.load(p).broker_list()[0].password == SECRET
    p = write(tmp_path, 'brokers = ["mqtt://gw@127.0.0.1:1"]\n'
                        'password_file = "$CREDENTIALS_DIRECTORY/mqtt-password"\n')
    assert config.load(p).broker_list()[0].password == SECRET


def check_config(path, **env):
    import os
    return subprocess.run([SENSORCITY, "gateway", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})


@pytest.mark.adversarial
@pytest.mark.parametrize("text", [
    f'brokers = ["mqtt://gw:{SECRET}@10.0.0.5:1883"]',            # plain to a remote host
    f'brokers = ["ftp://gw:{SECRET}@10.0.0.5"]',                  # a bad scheme
    f'brokers = "mqtt://gw:{SECRET}@127.0.0.1"',                  # not a list
    f'brokers = ["mqtt://gw:{SECRET}@127.0.0.1"]\npassword_file = "PW"',  # both
])
def test_the_password_is_never_printed_in_errors(tmp_path, text):
    (tmp_path / "pw").write_text("other\n")
    out = check_config(write(tmp_path, text.replace("PW", str(tmp_path / "pw")) + "\n"
                             + f'nodes = "{tmp_path}/none.json"\n'))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert SECRET not in out.stderr + out.stdout and "gw:" not in out.stderr


@pytest.mark.adversarial
def test_check_config_shows_brokers_without_userinfo(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(SECRET)
    for text in (f'brokers = ["mqtt://gw:{SECRET}@127.0.0.1:1883"]',
                 f'brokers = ["mqtt://gw@127.0.0.1:1883"]\npassword_file = "{pw}"'):
        (tmp_path / "empty.json").write_text("")  # a registry with no nodes yet: allowed
        out = check_config(write(tmp_path, text + f'\nnodes = "{tmp_path}/empty.json"\n'))
        assert out.returncode == 0, out.stderr
        assert "brokers mqtt://127.0.0.1:1883" in out.stdout
        assert SECRET not in out.stdout + out.stderr
    pw.write_text("")
    out = check_config(tmp_path / "gw.toml")
    assert out.returncode == 2 and "password_file" in out.stderr and "empty" in out.stderr
    pw.chmod(0)
    out = check_config(tmp_path / "gw.toml")
    if os.geteuid() != 0:  # root reads it anyway
        assert out.returncode == 2 and "Permission denied" in out.stderr


def sensorcity(*args, timeout=30):
    return subprocess.run([SENSORCITY, *args], capture_output=True, text=True, timeout=timeout)


def one_line(p, *words):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and all(w in lines[0] for w in words), lines


@pytest.fixture
def site(tmp_path):
    """A config whose registry and spool exist, to break one thing at a time."""
    from sensorcity.gateway.registry import NodeEntry, Registry
    Registry.add(tmp_path / "nodes.json", NodeEntry("n1", bytes(32), "urn:dev:ops:n1:", "noise"))
    return {"nodes": str(tmp_path / "nodes.json"), "spool": str(tmp_path / "spool"),
            "brokers": ["mqtt://127.0.0.1:9"], "metrics": ""}


def toml(tmp_path, settings, extra=""):
    import json
    return write(tmp_path, "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
                 + extra)


@pytest.mark.adversarial
@pytest.mark.parametrize("extra, words", [
    ("time_every = 0\n", ["time_every 0"]),
    ("tcp_idle = -1\n", ["tcp_idle"]),
    ('listen = ["tcp://127.0.0.1:99999"]\n', ["listen", "65535"]),
])
def test_check_config_and_run_refuse_a_broken_setting(tmp_path, site, extra, words):
    """Issue 11 item 13: each was accepted (time_every = 0) or a traceback (port 99999)."""
    cfg = toml(tmp_path, site, extra)
    one_line(sensorcity("gateway", "check-config", "--config", str(cfg)), *words)
    one_line(sensorcity("gateway", "run", "--config", str(cfg)), *words)


@pytest.mark.adversarial
@pytest.mark.parametrize("registry, words", [
    (None, ["no such file", "provision"]),
    ('{"nodes": {"n1": {"key": "", "base_name": "urn:x:", "sensor": "noise"}}}',
     ["n1", "key of 0 bytes"]),
    ('{"nodes": {"n1": {"key": "00", "base_name": "urn:x:", "sensor": "noise"}}}',
     ["key of 1 bytes"]),
    ("[1, 2]", ["unreadable"]),
])
def test_a_missing_or_broken_registry_is_one_line(tmp_path, site, registry, words):
    """Issue 11 item 13: a missing registry started a gateway that rejected every frame; an
    empty node key was accepted."""
    path = tmp_path / "reg.json"
    if registry is not None:
        path.write_text(registry)
    cfg = toml(tmp_path, {**site, "nodes": str(path)})
    one_line(sensorcity("gateway", "check-config", "--config", str(cfg)), str(path), *words)
    one_line(sensorcity("gateway", "run", "--config", str(cfg)), str(path), *words)


@pytest.mark.adversarial
def test_an_empty_registry_is_allowed_and_warned(tmp_path, site):
    (tmp_path / "empty.json").write_text("")
    p = sensorcity("gateway", "check-config", "--config",
                   str(toml(tmp_path, {**site, "nodes": str(tmp_path / "empty.json")})))
    assert p.returncode == 0 and "0 nodes" in p.stdout, p.stderr
    assert "warning" in p.stderr and "holds no nodes" in p.stderr


@pytest.mark.adversarial
@pytest.mark.parametrize("where", ["under-a-file", "/sys/sensorcity-spool"])
def test_an_unwritable_spool_is_one_line(tmp_path, site, where):
    """Issue 11 item 13: was a traceback from SQLite or mkdir (as root too: /sys refuses)."""
    if where == "under-a-file":
        (tmp_path / "file").write_text("")
        where = str(tmp_path / "file" / "spool")
    cfg = toml(tmp_path, {**site, "spool": where})
    one_line(sensorcity("gateway", "check-config", "--config", str(cfg)), "spool", where)
    one_line(sensorcity("gateway", "run", "--config", str(cfg)), "spool", where)
