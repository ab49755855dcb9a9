"""The technician's bench without hardware: esptool's steps against the ESP32 ROM bootloader
emulator (PyPI esp32-mock-bootloader, on socket://), the REPL steps against the emulated board
(the unix port with its littlefs image, its console on a pty), and the whole bench flow:
provision -> flash app -> the board boots from its flash -> hello -> the gateway takes its data
to a real mosquitto; calibrate against an emulated 94 dB calibrator."""

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rigs.targets import SENSORCITY, free_port
from sensorcity.errors import FatalError
from sensorcity.tools.bench import flash, monitor, port as ports
from rigs.benchboard import BenchBoard, ToneSource
from test_serial_link import _subscribe  # the same MQTT subscriber

BIN = Path(sys.executable).parent
MIC_SENS = -26.0  # the INMP441's nominal sensitivity, as boards/esp32-devkitc.json has it


@pytest.fixture
def rom():
    """Start ROM bootloader emulators: rom(chip) -> socket:// URL."""
    procs = []

    def start(chip):
        port = free_port()
        p = subprocess.Popen([BIN / "esp32-mock-bootloader", "run", "--chip", chip, "--port",
                              str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"socket://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"esp32-mock-bootloader did not start: {p.stderr.read()}")
    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


def run(*args, timeout=120):
    return subprocess.run([SENSORCITY, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def esptool_verify(url, offset, image):
    return subprocess.run([BIN / "esptool", "--port", url, "verify-flash", hex(offset),
                           str(image)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("board, chip, offset", [("esp32-devkitc", "esp32", 0x1000),
                                                 ("esp32-s3-devkitc-1", "esp32s3", 0x0)])
def test_flash_firmware_then_esptools_own_verify(rom, tmp_path, board, chip, offset):
    url = rom(chip)
    image = tmp_path / "micropython.bin"
    image.write_bytes(os.urandom(200_000))
    p = run("flash", "firmware", "--port", url, "--board", board, "--firmware", image, "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"at {offset:#x}" in p.stdout
    v = esptool_verify(url, offset, image)
    assert v.returncode == 0 and "Verification successful" in v.stdout, v.stdout + v.stderr
    # the same check fails for other bytes, or the same bytes one sector off
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(200_000))
    assert esptool_verify(url, offset, other).returncode != 0
    assert esptool_verify(url, offset + 0x1000, image).returncode != 0


def test_bench_failures_are_one_line(rom, tmp_path):
    url = rom("esp32")
    image = tmp_path / "mp.bin"
    image.write_bytes(os.urandom(4096))
    cases = [
        (["--port", url, "--board", "esp32-s3-devkitc-1", "--firmware", image],
         "wrong chip on"),
        (["--port", f"socket://127.0.0.1:{free_port()}", "--board", "esp32-devkitc",
          "--firmware", image], "no ESP32 bootloader answers"),
        (["--port", "/dev/ttyUSB-none", "--board", "esp32-devkitc", "--firmware", image],
         "no board on /dev/ttyUSB-none"),
        (["--port", url, "--board", "esp32-wrover", "--firmware", image], "is unknown"),
    ]
    big = tmp_path / "big.bin"
    big.write_bytes(b"\xff" * (4 * 1024 * 1024 - 0x1000 + 1))
    cases.append((["--port", url, "--board", "esp32-devkitc", "--firmware", big],
                  "image too large for the flash"))
    for args, words in cases:
        p = run("flash", "firmware", "--quiet", *args)
        assert p.returncode == 2 and words in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_busy_port_and_dialout_are_named():
    import fcntl
    import pty
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    holder = os.open(path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as pyserial's exclusive open does
    try:
        with pytest.raises(FatalError, match="is busy"):
            ports.check(path)
    finally:
        for fd in (holder, slave, master):
            os.close(fd)
    # root passes any mode bits, so the permission case is checked on the errno it maps
    msg = str(ports._error("/dev/ttyUSB0", PermissionError(13, "Permission denied")))
    assert "dialout" in msg


def _provision(tmp_path, node_id, sensor="noise", interval=2, calibration=0.0):
    reg, cfg = tmp_path / "nodes.json", tmp_path / f"{node_id}.json"
    p = run("provision", "--node-id", node_id, "--sensor", sensor, "--registry", reg,
            "--out", cfg, "--interval", interval, "--location", "52.0907,5.1214",
            "--calibration", calibration)
    assert p.returncode == 0, p.stderr
    return reg, cfg


@pytest.mark.unixport
def test_flash_app_checks_each_file_and_skips_what_is_there(tmp_path):
    _, cfg = _provision(tmp_path, "b1")
    with BenchBoard(tmp_path / "flash.img") as board:
        first = flash.flash_app(board.port, cfg, flash.Progress(quiet=True), reset=False)
        assert first["platform"] == "linux" and first["arch"] == "x64"
        assert {"main.py", "boot.py", "node.mpy", "board.py", "node.json"} <= set(
            first["written"])
        again = flash.flash_app(board.port, cfg, flash.Progress(quiet=True), reset=False)
        assert again["written"] == [] and set(again["unchanged"]) == set(first["written"])
        # an older app's source module would shadow the new .mpy: it is removed
        from mpremote.transport_serial import SerialTransport
        t = SerialTransport(board.port)
        t.enter_raw_repl(soft_reset=False)
        t.fs_writefile("noise.py", b"raise ImportError('stale')\n")
        t.exit_raw_repl()
        t.close()
        third = flash.flash_app(board.port, cfg, flash.Progress(quiet=True), reset=False)
        assert third["removed"] == ["noise.py"]


@pytest.mark.unixport
@pytest.mark.mosquitto
def test_bench_flow_provision_flash_boot_hello_gateway(mosquitto, tmp_path):
    reg, cfg = _provision(tmp_path, "bench-1")
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    node = json.loads(cfg.read_text())
    assert node["location"] == {"lat": 52.0907, "lon": 5.1214}
    tone = ToneSource(MIC_SENS + 70.0 - 94.0)  # 70 dB SPL
    with BenchBoard(tmp_path / "flash.img", peripherals={"i2s": tone.port}) as board:
        p = run("flash", "app", "--port", board.port, "--config", cfg, "--quiet")
        assert p.returncode == 0, p.stderr + board.log()
        hello = flash.wait_hello(board.port, cfg, timeout=30)
        assert hello["bn"] == node["base_name"] and hello["boot"] == 1, board.log()
        batches = []
        sub = _subscribe(mosquitto, batches)
        gw = subprocess.Popen([SENSORCITY, "gateway", "run", "--serial", board.port, "--broker",
                               f"mqtt://127.0.0.1:{mosquitto}", "--spool", str(tmp_path / "sp"),
                               "--nodes", str(reg), "--gateway-id", "gw-bench"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not any(
                    r.get(0) == "LAeq" for b in batches for r in b):
                time.sleep(0.3)
        finally:
            gw.terminate()
            gw_err = gw.communicate(timeout=10)[1]
            sub.loop_stop()
            tone.close()
        laeq = [r for b in batches for r in b if r.get(0) == "LAeq"]
        assert laeq, gw_err[-2000:] + board.log()[-2000:]
        assert batches[0][0].get(-2) == node["base_name"]
        # the tone is 70 dB SPL at 1 kHz, where A-weighting is 0 dB
        assert abs(laeq[0][2] - 70.0) < 0.2, laeq


@pytest.mark.unixport
def test_plain_flash_does_both_then_waits_for_the_hello(rom, tmp_path):
    # esptool talks to the ROM emulator; the REPL and the link are the bench board's console
    url = rom("esp32")
    image = tmp_path / "micropython.bin"
    image.write_bytes(os.urandom(50_000))
    _, cfg = _provision(tmp_path, "both-1", sensor="energy")
    with BenchBoard(tmp_path / "flash.img") as board:
        p = run("flash", "--port", url, "--repl-port", board.port, "--config", cfg,
                "--firmware", image, "--quiet")
        assert p.returncode == 0, p.stderr + board.log()
    lines = p.stdout.splitlines()
    assert lines[0].startswith("flashed 50000 bytes at 0x1000 on ESP32") and "verified" in lines[0]
    assert "sha256 checked" in lines[1]
    assert lines[2].startswith("node up:") and "energy" in lines[2], lines
    assert esptool_verify(url, 0x1000, image).returncode == 0


@pytest.mark.unixport
def test_calibrate_with_a_94_db_calibrator(tmp_path):
    _, cfg = _provision(tmp_path, "cal-1", interval=30)
    hot = 2.5  # this microphone reads 2.5 dB above its datasheet sensitivity
    tone = ToneSource(MIC_SENS + hot)  # 94 dB SPL on the capsule
    try:
        with BenchBoard(tmp_path / "flash.img", peripherals={"i2s": tone.port}) as board:
            p = run("flash", "app", "--port", board.port, "--config", cfg, "--quiet")
            assert p.returncode == 0, p.stderr
            p = run("calibrate", "--port", board.port, "--config", cfg, "--reference", "94.0",
                    "--seconds", "2")
            assert p.returncode == 0, p.stderr + board.log()
            new = json.loads(cfg.read_text())["calibration_db"]
            assert abs(new - (-hot)) < 0.05, p.stdout
            assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
            # the node rebooted with the offset: it now reads the calibrator's level
            seen = []
            keys = monitor.keys_from(str(cfg))
            with monitor.Link.open(board.port, keys) as link:
                link.send("cal-1", 4, {"op": "interval", "value": 2})
                for frame in link.frames(30):
                    link.answer(frame)
                    if frame.kind == 2:
                        link.send("cal-1", 4, {"op": "interval", "value": 2})
                    if frame.kind == 0:
                        seen += [r.v for r in monitor.senml.resolve(frame.body)
                                 if r.n.endswith("LAeq")]
                    if len(seen) >= 2:
                        break
            assert seen and abs(seen[-1] - 94.0) < 0.1, (seen, board.log()[-2000:])
    finally:
        tone.close()


@pytest.mark.unixport
def test_monitor_shows_decoded_frames_and_a_sparkline(tmp_path):
    _, cfg = _provision(tmp_path, "mon-1", interval=1)
    tone = ToneSource(MIC_SENS - 30.0)  # 64 dB SPL
    lines = []
    try:
        with BenchBoard(tmp_path / "flash.img", peripherals={"i2s": tone.port}) as board:
            assert run("flash", "app", "--port", board.port, "--config", cfg,
                       "--quiet").returncode == 0
            counts = monitor.monitor(board.port, monitor.keys_from(str(cfg)), ack=True,
                                     seconds=6, out=lines.append)
    finally:
        tone.close()
    assert counts["hello"] >= 1 and counts["data"] >= 2 and counts["rejected"] == 0, lines
    noise = [ln for ln in lines if "LAeq=" in ln]
    assert noise and "LAeq=64.0dB" in noise[-1] and "LAeq ▁" in noise[-1], lines
    assert any("heap_free=" in ln for ln in lines)


def test_sparkline_spans_the_levels():
    assert monitor.sparkline([50.0, 60.0, 70.0]) == "▁▅█"
    assert monitor.sparkline([55.0, 55.0]) == "▁▁"
    assert monitor.sparkline([]) == ""
