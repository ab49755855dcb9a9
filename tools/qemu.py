"""MicroPython on an emulated Cortex-M3 (QEMU mps2-an385), driven over its UARTs on ptys.

    with QemuBoard() as board:
        board.put_file("greet.py", b"...")      # into the board's littlefs root, as mpremote cp
        print(board.exec("import greet"))        # raw REPL, returns stdout
        board.start("import main")               # leave the script running: board.serial is its link
        board.sensor_port                        # pty of UART1: machine.UART(1) on the board

The firmware is built by hil_tests/qemu/build.sh (see docs/qemu.md).
"""

import binascii
import re
import subprocess
import tempfile
import time
from pathlib import Path

import serial

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "hil_tests" / "qemu" / "build.sh"
TICKS_PERIOD = 1 << 30  # MicroPython's ticks wrap here on 32-bit boards

_PTY_LINE = re.compile(rb"redirected to (/dev/pts/\d+) \(label serial(\d)\)")
_RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


class QemuError(Exception):
    """The emulated board failed: a build error, no prompt, or a Python error on the board."""

    def __init__(self, message, output=b""):
        super().__init__(message)
        self.output = output


def ensure_built():
    """Build the firmware unless it is cached; return the path of firmware.elf."""
    proc = subprocess.run(["sh", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise QemuError(f"QEMU firmware build failed:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


class QemuBoard:
    """qemu-system-arm running the firmware, UART0 (REPL, link) and UART1 (sensor line) on ptys.

    heap: GC heap in bytes (default 140 KiB, what an ESP32 leaves free). ticks_us: the boot value
    of the microsecond clock, to reach the 2^30 wrap of ticks_ms/ticks_us in seconds.
    qemu_args: QEMU options in place of `-monitor null`, e.g. a monitor socket to inspect a hang.
    """

    def __init__(self, elf=None, heap=None, ticks_us=None, boot_timeout=20, qemu_args=()):
        self.elf = Path(elf) if elf else ensure_built()
        self.boot_args = ["firmware"]
        if heap is not None:
            self.boot_args.append(f"heap={int(heap)}")
        if ticks_us is not None:
            self.boot_args.append(f"ticks_us={int(ticks_us)}")
        self.boot_timeout = boot_timeout
        self.qemu_args = list(qemu_args) or ["-monitor", "null"]
        self.proc = None
        self.serial = None
        self.port = self.sensor_port = None
        self._pending = bytearray()

    def __enter__(self):
        self._log = tempfile.TemporaryFile()
        semihosting = "enable=on,target=native," + ",".join(f"arg={a}" for a in self.boot_args)
        self.proc = subprocess.Popen(
            ["qemu-system-arm", "-machine", "mps2-an385", "-nographic",
             "-semihosting-config", semihosting, "-serial", "pty", "-serial", "pty",
             "-kernel", str(self.elf), *self.qemu_args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            ptys = self._wait_ptys()
            self.port, self.sensor_port = ptys["0"], ptys["1"]
            self.serial = serial.Serial(self.port, timeout=0.1)
            self.enter_raw_repl()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.serial is not None:
            self.serial.close()
            self.serial = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self._log.close()

    def _wait_ptys(self):
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            self._log.seek(0)
            found = {m[1].decode(): m[0].decode() for m in _PTY_LINE.findall(self._log.read())}
            if len(found) == 2:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self._log.seek(0)
        raise QemuError("qemu-system-arm did not open its ptys", self._log.read())

    def read_until(self, marker, timeout=10):
        """Read UART0 up to and including marker and return that; what follows stays buffered."""
        deadline = time.monotonic() + timeout
        while (end := self._pending.find(marker)) < 0:
            if time.monotonic() > deadline:
                raise QemuError(f"no {marker!r} from the board within {timeout} s",
                                bytes(self._pending))
            self._pending += self.serial.read(max(1, self.serial.in_waiting))
        end += len(marker)
        data = bytes(self._pending[:end])
        del self._pending[:end]
        return data

    def discard_input(self):
        self.serial.reset_input_buffer()
        self._pending.clear()

    def enter_raw_repl(self):
        # Interrupt whatever runs, then Ctrl-A; repeat while the board is still booting.
        deadline = time.monotonic() + self.boot_timeout
        while True:
            self.serial.write(b"\r\x03\x03\x01")
            try:
                self.read_until(_RAW_PROMPT, timeout=1)
                self.discard_input()
                return
            except QemuError:
                if time.monotonic() > deadline:
                    raise

    def start(self, code):
        """Run code in the raw REPL and return once it has started; its output is left unread."""
        self.serial.write(code.encode() if isinstance(code, str) else code)
        self.serial.write(b"\x04")
        self.read_until(b"OK", timeout=5)

    def exec(self, code, timeout=30):
        """Run code in the raw REPL and return its stdout; a Python error raises QemuError."""
        self.start(code)
        out = self.read_until(b"\x04", timeout)[:-1]
        err = self.read_until(b"\x04>", timeout)[:-2]
        if err:
            raise QemuError(f"error on the board:\n{err.decode(errors='replace')}", out + err)
        return out.decode(errors="replace")

    def put_file(self, remote, data, chunk=512):
        """Write bytes (or a local Path) to a file on the board's filesystem, as mpremote cp."""
        if isinstance(data, Path):
            data = data.read_bytes()
        parts = remote.strip("/").split("/")
        self.exec("import os\nfor d in %r:\n try: os.mkdir(d)\n except OSError: pass"
                  % ["/".join(parts[:i]) for i in range(1, len(parts))])
        self.exec(f"from binascii import a2b_base64 as _a\n_f = open({remote!r}, 'wb')")
        for i in range(0, len(data), chunk):
            b64 = binascii.b2a_base64(data[i:i + chunk], newline=False).decode()
            self.exec(f"_f.write(_a({b64!r}))")
        self.exec("_f.close()\ndel _f, _a")

    def soft_reset(self):
        """Ctrl-D from the friendly REPL: the board reboots, keeps its files, runs main.py."""
        self.serial.write(b"\x02")  # leave the raw REPL
        self.read_until(b">>> ", timeout=5)
        self.discard_input()
        self.serial.write(b"\x04")
        return self.read_until(b"MPY: soft reboot\r\n", timeout=5)
