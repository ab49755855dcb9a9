"""The emulated board: the real firmware files in the MicroPython unix port, with a flash image
(littlefs), a heap limited as on an ESP32, its link on a serial device or TCP, and its sensors fed
from the host through the `machine` interface (tools/sim/board/machine.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import termios
import threading
import time
import tty
from pathlib import Path

from ... import kinds
from ...errors import FatalError
from ...paths import firmware_dir, micropython_bin
from . import signals
from .qemu import heap_bytes
from ..mpy import compile_dir

EMULATOR_DIR = Path(__file__).resolve().parent / "board"  # the board-side files
FLASH_BLOCKS = 512  # 2 MiB of littlefs, the size of an ESP32-DevKitC's filesystem partition
TRAFFIC_PINS = (32, 35)


def stop_process(proc: subprocess.Popen | None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def flash_image_for(config: Path) -> Path:
    return config.with_suffix(".flash.img")


HEAP_MIN, HEAP_MAX = 16 * 1024, 16 * 1024 * 1024  # an ESP32 has 520 KiB of RAM, 8 MiB PSRAM


def parse_heap(text: str) -> str:
    t = text.strip().lower().rstrip("b")
    if not t or not (t[:-1] if t[-1] in "km" else t).isdigit():
        raise FatalError(f"--heap {text!r}: give bytes or a size like 64k")
    if not HEAP_MIN <= heap_bytes(t) <= HEAP_MAX:  # below, MicroPython refuses; far above, it crashes
        raise FatalError(f"--heap {text!r}: give 16k..16m")
    return t


class _Feeder(threading.Thread):
    """Serves one emulated peripheral on a loopback port and streams its input in real time."""

    def __init__(self, produce, period: float):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.produce = produce
        self.period = period
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.server.settimeout(0.5)
                conn, _ = self.server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with conn:
                try:
                    pace(self.produce, self.period, conn.sendall, self.stopped.is_set)
                except OSError:
                    continue  # the board rebooted: wait for it to attach again

    def stop(self):
        self.stopped.set()
        self.server.close()


def _noise_feeder(rate: int, sens: float, seed: int, speed: float = 1) -> _Feeder:
    src = signals.StreetNoise(rate, sens, seed)
    chunk = rate // 20 * 4

    def produce(t0):
        sec = src.second()
        return [(t0 + i * 0.05, sec[i * chunk:(i + 1) * chunk]) for i in range(20)]
    return _Feeder(produce, 1.0)  # audio at its real rate: a faster clock hears less of it


def _meter_feeder(seed: int, speed: float = 1) -> _Feeder:
    meter = signals.Meter(seed)
    # a telegram each second of the board's clock, at most 50 a second on the host's
    return _Feeder(lambda t0: [(t0, meter.second())], max(1.0 / speed, 0.02))


def traffic_edges(lane: signals.Traffic, speed: float = 1):
    """The loop detectors' schedule for pace(): every 2 s of the board's clock a vehicle of `lane`
    with probability 0.6, its edges as lines "<pin> <state>\\n" at the board's pace (its times
    compressed by `speed`). Returns (produce, period). The unix-port emulator and the QEMU board
    (tools/qemu.QemuNode) both take these lines."""
    def produce(t0):
        edges = lane.vehicle(t0 + 0.1) if lane.rng.random() < 0.6 else []
        return [(t0 + (t - t0) / speed, f"{pin} {state}\n".encode()) for t, pin, state in edges]
    return produce, 2.0 / speed


def pace(produce, period: float, send, stopped) -> None:
    """Send what produce(t0) returns, [(host monotonic time, bytes)], each at its time, for t0
    every `period` seconds from now, until stopped() is true. send's OSError ends it."""
    next_t = time.monotonic()
    while not stopped():
        delay = next_t - time.monotonic()
        if delay > 0:  # produce may return nothing: t0 never runs ahead of the host's clock
            time.sleep(delay)
        for at, data in produce(next_t):
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(data)
        next_t += period


def _traffic_feeder(seed: int, spacing: float, loop_length: float, speed: float = 1) -> _Feeder:
    return _Feeder(*traffic_edges(signals.Traffic(TRAFFIC_PINS, spacing, loop_length, seed), speed))


# each kind's input on the emulated board (its name there: sensorcity/kinds.py), from the node's config
_FEEDERS = {
    "noise": lambda node, seed, speed: _noise_feeder(
        node.get("rate", 48000), node.get("mic_sensitivity", -26.0), seed, speed),
    "energy": lambda node, seed, speed: _meter_feeder(seed, speed),
    "traffic": lambda node, seed, speed: _traffic_feeder(
        seed, node.get("loop_spacing", 4.0), node.get("loop_length", 2.0), speed),
}


class EmulatedNode:
    def __init__(self, config: Path, port: str, interval: int | None = None, heap: str = "192k",
                 seed: int = 0, log=None, speed: float = 1, clock_offset: float = 0.0):
        self.config = Path(config).resolve()
        try:
            self.node = json.loads(self.config.read_text())
        except (OSError, ValueError) as exc:
            raise FatalError(f"cannot read node config {config}: {exc}") from exc
        if interval:
            self.node["interval"] = int(interval)
        self.port = port
        self.heap = parse_heap(heap)
        self.seed = seed
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.feeders: list[_Feeder] = []
        self.tty_fd: int | None = None
        self.boots = 0
        # the board's RTC: host time + clock_offset at start, running `speed` times faster
        self.speed = speed
        self._epoch0 = (time.time() + clock_offset, time.time())
        self._stop = threading.Event()

    def _link(self) -> dict:
        if self.port.startswith("tcp://"):
            return {"tcp": self.port[len("tcp://"):]}
        return {"serial": True}

    def _peripherals(self) -> dict:
        kind = kinds.get(self.node.get("sensor"), f"{self.config}: sensor")
        f = _FEEDERS[kind.name](self.node, self.seed, self.speed)
        f.start()
        self.feeders.append(f)
        return {kind.peripheral: f.port}

    def start(self):
        image = flash_image_for(self.config)
        if not image.exists():
            image.write_bytes(b"\xff" * FLASH_BLOCKS * 4096)
        node = dict(self.node, link=self._link())
        emu = {"flash": str(image), "flash_blocks": FLASH_BLOCKS,
               "emulator": str(compile_dir(EMULATOR_DIR)),
               "firmware": str(compile_dir(firmware_dir())), "node": node,
               "uid": node.get("uid", "a0b1c2d3e4f5"), "speed": self.speed,
               "rtc": str(image.with_suffix(".rtc"))}
        image.with_suffix(".rtc").unlink(missing_ok=True)  # power on: the RTC starts unset
        emu.update(self._peripherals())
        self.env = dict(os.environ, SENSORCITY_EMU=json.dumps(emu))
        if not self.port.startswith("tcp://"):
            try:
                self.tty_fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as exc:
                raise FatalError(f"cannot open {self.port}: {exc.strerror}") from exc
            tty.setraw(self.tty_fd, termios.TCSANOW)
        self._spawn()

    def _spawn(self):
        self.boots += 1
        e0, h0 = self._epoch0
        self.env["SENSORCITY_EMU"] = json.dumps(dict(json.loads(self.env["SENSORCITY_EMU"]),
                                                     epoch=e0 + (time.time() - h0) * self.speed))
        log = self.log or subprocess.DEVNULL
        serial = self.tty_fd is not None
        self.proc = subprocess.Popen(
            [micropython_bin(), "-X", f"heapsize={self.heap}", str(EMULATOR_DIR / "startup.py")],
            stdin=self.tty_fd if serial else subprocess.DEVNULL,
            stdout=self.tty_fd if serial else log, stderr=log, env=self.env,
            cwd=str(EMULATOR_DIR))

    def supervise(self):
        """Restart the board whenever it resets (watchdog, reboot command, crash), like a board."""
        while not self._stop.is_set():
            code = self.proc.wait()
            if self._stop.is_set():
                return code
            time.sleep(0.5)
            self._spawn()

    def stop(self):
        self._stop.set()
        stop_process(self.proc)
        for f in self.feeders:
            f.stop()
        if self.tty_fd is not None:
            os.close(self.tty_fd)
            self.tty_fd = None
