"""The operator's broken configs through `sensorcity gateway check-config` (the CLI, black-box):
a config the gateway cannot run as written must be refused with one line, exit 2
(docs/gateway.md, the config table), not called "config ok"."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.adversarial
SENSORCITY = Path(sys.executable).with_name("sensorcity")


def check(tmp_path, line: str) -> subprocess.CompletedProcess:
    (tmp_path / "n.json").write_text('{"nodes": {}}')
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'gateway_id = "g"\nbrokers = ["mqtt://127.0.0.1:1883"]\n'
                   f'spool = "{tmp_path / "spool"}"\nnodes = "{tmp_path / "n.json"}"\n{line}\n')
    return subprocess.run([str(SENSORCITY), "gateway", "check-config", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("line", [
    "stall = nan",        # health: `silent > nan` is never true: /healthz says ok for ever
    "cmd_resend = nan",   # `now - sent_at >= nan` is never true: no command is ever resent
    "drain = nan",        # the SIGTERM drain's deadline is nan: nothing is published on stop
    'topic_prefix = "#"',       # MQTT wildcards in a topic name: no publish can succeed
    'topic_prefix = "a/+/b"',
])
def test_check_config_refuses_a_config_the_gateway_cannot_run(tmp_path, line):
    r = check(tmp_path, line)
    assert r.returncode == 2 and "Traceback" not in r.stderr, \
        f"{line!r}: exit {r.returncode}: {(r.stdout + r.stderr).strip()}"


@pytest.mark.parametrize("node, base, sensor", [
    ("a/b", "urn:dev:ops:ab:", "energy"),  # provision refuses it; the command topic cmd/a/b
    # names node "b": the node can never get a command
    ("n1", "urn:dev ops:", "energy"),      # outside SenML's name syntax: every frame `schema`
    ("n1", "urn:dev:ops:n1:", "toaster"),  # no such sensor kind (a node says noise/energy/traffic)
])
def test_check_config_refuses_a_registry_entry_no_node_can_use(tmp_path, node, base, sensor):
    r = check(tmp_path, "")
    assert r.returncode == 0, r.stderr  # the config itself is fine
    (tmp_path / "n.json").write_text(
        f'{{"nodes": {{"{node}": {{"key": "{"00" * 32}", "base_name": "{base}", '
        f'"sensor": "{sensor}"}}}}}}')
    cfg = tmp_path / "gw.toml"
    r = subprocess.run([str(SENSORCITY), "gateway", "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, f"{node!r} {base!r} {sensor!r}: {(r.stdout + r.stderr).strip()}"
