"""The gateway's status page in a real browser: Debian's headless Chromium (selenium and
chromedriver) on `sensorcity gateway run` with a real mosquitto and three emulated nodes (the real
firmware in the unix port: noise, energy, traffic). Every wait polls the DOM with a generous
deadline. The screenshots go to $SENSORCITY_SCREENSHOTS when set (docs/gateway-page-*.png were
made so), else to the test's tmp dir. Also: `sensorcity demo` prints the page's URL first."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rigs.gateway import Gateway, Mosquitto, wait_until
from rigs.targets import SENSORCITY
from sensorcity.protocol import frames
from sensorcity.kinds import NAMES as SENSORS
from sensorcity.tools.bench.provision import provision
from sensorcity.tools.sim.emulate import EmulatedNode

pytestmark = [pytest.mark.mosquitto, pytest.mark.unixport]
INTERVAL = 2
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromedriver are not installed: run `make test` (it installs "
                    "them) or `apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=412,900", "--hide-scrollbars"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER),
                            options=opts)


def screenshot(driver, path: Path, width: int, height: int | None = None):
    """A viewport this wide and high (the page's full height unless `height` is given)."""
    driver.set_window_size(width, height or 900)
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    if height is None:
        height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height + chrome)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))


def nodes_on(tmp_path) -> tuple[Path, dict]:
    registry = tmp_path / "nodes.json"
    configs = {}
    for kind in SENSORS:
        path = tmp_path / f"{kind}.json"
        cfg = provision(f"{kind}-1", kind, registry, path, interval=INTERVAL)
        if kind == "traffic":
            cfg["min_speed"] = 20.0  # intervals close within 6 s, as in the demo
            path.write_text(json.dumps(cfg))
        configs[kind] = path
    return registry, configs


@pytest.mark.browser
def test_page_in_chromium_follows_nodes_live(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    registry, configs = nodes_on(tmp_path)
    gw = Gateway(tmp_path, [broker.url], nodes=(), nodes_path=str(registry), gateway_id="gw-page")
    emulated = {}
    driver = None
    try:
        for i, (kind, path) in enumerate(configs.items()):
            emulated[kind] = EmulatedNode(path, f"tcp://127.0.0.1:{gw.tcp}", interval=INTERVAL,
                                          seed=i, log=open(tmp_path / f"{kind}.log", "w"))
            emulated[kind].start()
        driver = browser()
        driver.get(f"http://127.0.0.1:{gw.http}/")
        driver.execute_script("window.loadedOnce = 'yes'")  # gone if the page ever reloads
        node = 'section.node[data-node="{}-1"]'.format

        def q(css, what="innerText"):
            """What the page shows now: one query in the page (it redraws every second)."""
            return driver.execute_script(
                "return Array.from(document.querySelectorAll(arguments[0]), e => "
                "arguments[1] in e ? e[arguments[1]] : e.getAttribute(arguments[1]))",
                css, what)

        # the three registered nodes with their kinds
        wait_until(lambda: len(q("section.node")) == 3, 30, "three node rows")
        for kind in SENSORS:
            assert q(node(kind), "data-sensor") == [kind]
            assert [t.lower() for t in q(node(kind) + " .kind")] == [kind]
        # each node's readings, the quantities the city receives, with units
        first = {"noise": ("LAeq", " dB"), "energy": ("power_import", " W"),
                 "traffic": ("lane1/count", " count")}
        for kind, (name, unit) in first.items():
            css = f'{node(kind)} [data-q="{name}"]'
            wait_until(lambda: q(css), 120, f"{kind}'s {name}")
            assert q(css)[0].endswith(unit), q(css)
        # a new interval's reading arrives without a reload
        readings = f'{node("energy")} .readings'
        before = q(readings, "title")
        wait_until(lambda: q(readings, "title") != before, 60, "a newer energy interval")
        for kind in SENSORS:
            wait_until(lambda: q(f'{node(kind)} [data-f="boot_count"]'), 60, f"{kind}'s health")

        # a forged frame (the energy node's name, a wrong key) on the TCP listener
        pack = [{-2: "urn:dev:forged:", -3: int(time.time()), 0: "power_import", 1: "W", 2: 1}]
        with socket.create_connection(("127.0.0.1", gw.tcp), timeout=5) as s:
            s.sendall(frames.encode(bytes(32), frames.DATA, "energy-1", 10**6, pack))
            wait_until(lambda: any("energy-1" in t for t in q('#rejections li[data-reason="tag"]')),
                       30, "the forged frame's rejection")
        assert q('#rejections .reasons [data-reason="tag"]') == ["tag 1"]

        # a node that stops turns stale
        emulated["traffic"].stop()
        wait_until(lambda: q(node("traffic"), "data-state") == ["stale"], 60,
                   "the stopped node stale")
        assert [q(node(k), "data-state") for k in ("noise", "energy")] == [["ok"], ["ok"]]
        assert driver.execute_script("return window.loadedOnce") == "yes"

        shots = Path(os.environ.get("SENSORCITY_SCREENSHOTS") or tmp_path)
        screenshot(driver, shots / "gateway-page-phone.png", 412)
        screenshot(driver, shots / "gateway-page-desktop.png", 1280, 900)
    finally:
        if driver is not None:
            driver.quit()
        for n in emulated.values():
            n.stop()
        gw.stop()
        broker.stop()


def test_demo_prints_the_page_first(mosquitto):
    proc = subprocess.Popen([SENSORCITY, "demo", "--nodes", "3", "--seconds", "15", "--broker",
                             f"mqtt://127.0.0.1:{mosquitto}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("demo: the gateway's page: http://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[1]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read()

        def three_nodes_seen():
            with urllib.request.urlopen(url + "status.json", timeout=10) as r:
                snap = json.load(r)
            return sum(n["state"] == "ok" for n in snap["nodes"]) == 3
        wait_until(three_nodes_seen, 60, "the demo's three nodes on its page")
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "reached the broker" in out.splitlines()[-1]
