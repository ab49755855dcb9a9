"""A board on the bench, emulated: MicroPython (the unix port) with a littlefs flash image and its
USB serial console on a pty, which carries the REPL on a blank board and the node's link once the
application runs. At power-on it runs boot.py and main.py from its flash when they are there,
else it sits at the REPL (tools/sim/board/poweron.py), as a freshly flashed ESP32 does; a reset
(machine.reset(), a watchdog, a crash) powers it on again. mpremote talks to it with `resume`:
the unix port's soft reset would end the process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import tty
from pathlib import Path

from sensorcity.paths import micropython_bin
from sensorcity.tools.sim.emulate import EMULATOR_DIR, FLASH_BLOCKS, stop_process
from sensorcity.tools.mpy import compile_dir
from .serialmock import VirtualCable
from sensorcity.tools.sim.signals import tone_block

APP_EXIT = 5  # tools/sim/board/poweron.py's probe: the flash holds an application


class ToneSource:
    """A calibrator on the emulated microphone: a 1 kHz sine at `dbfs`, in real time."""

    def __init__(self, dbfs: float, rate: int = 48000):
        self.block = tone_block(rate, 1000.0, dbfs, rate // 20)  # 50 ms, whole periods
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                t = time.monotonic()
                try:
                    while not self._stop.is_set():
                        conn.sendall(self.block)
                        t += 0.05
                        time.sleep(max(0.0, t - time.monotonic()))
                except OSError:
                    continue  # the board rebooted

    def close(self):
        self._stop.set()
        self.server.close()


class BenchBoard:
    """heap: the 64-bit unix port's objects are about twice an ESP32's; 192k holds a noise node's
    peak (about 126k in its health records) with room for the REPL."""

    def __init__(self, image: Path, heap: str = "192k", peripherals: dict | None = None,
                 uid: str = "a0b1c2d3e4f5", log: Path | None = None):
        self.image = Path(image)
        self.heap = heap
        self.peripherals = peripherals or {}
        self.uid = uid
        self.log_path = Path(log) if log else self.image.with_suffix(".log")
        self.cable: VirtualCable | None = None
        self.port = ""  # the host's end: what a technician's tools open
        self.boots = 0
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()

    def start(self) -> "BenchBoard":
        if not self.image.exists():
            self.image.write_bytes(b"\xff" * FLASH_BLOCKS * 4096)  # erased SPI flash
        emu = {"flash": str(self.image), "flash_blocks": FLASH_BLOCKS, "run": False,
               "emulator": str(compile_dir(EMULATOR_DIR)), "uid": self.uid, **self.peripherals}
        self.emu = emu
        self.cable = VirtualCable()
        self.port = self.cable.b
        # two open files on the board's end: O_NONBLOCK belongs to an open file, not the device
        self.fds = {"repl": os.open(self.cable.a, os.O_RDWR | os.O_NOCTTY),
                    "app": os.open(self.cable.a, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)}
        tty.setraw(self.fds["repl"])
        self.console = ""
        self.logf = open(self.log_path, "ab")
        self._power_on()
        threading.Thread(target=self._supervise, daemon=True).start()
        return self

    def _power_on(self):
        self.boots += 1
        probe = subprocess.run([micropython_bin(), str(EMULATOR_DIR / "poweron.py")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=self.logf, env=self._env("probe"), cwd=str(EMULATOR_DIR))
        self.console = "app" if probe.returncode == APP_EXIT else "repl"
        fd = self.fds[self.console]
        self.proc = subprocess.Popen(
            [micropython_bin(), "-X", f"heapsize={self.heap}",
             *(["-i"] if self.console == "repl" else []), str(EMULATOR_DIR / "poweron.py")],
            stdin=fd, stdout=fd, stderr=self.logf, env=self._env(self.console),
            cwd=str(EMULATOR_DIR))

    def _env(self, console: str) -> dict:
        return dict(os.environ, SENSORCITY_EMU=json.dumps(dict(self.emu, console=console)))

    def _supervise(self):
        while not self._stop.is_set():
            self.proc.wait()
            if self._stop.is_set():
                return
            time.sleep(0.2)
            self._power_on()

    def log(self) -> str:
        self.logf.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self._stop.set()
        stop_process(self.proc)
        if self.cable:
            for fd in self.fds.values():
                os.close(fd)
            self.cable.close()
            self.logf.close()
            self.cable = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
