"""MicroPython on an emulated Cortex-M3 (QEMU mps2-an385), driven over its UARTs on ptys.

    with QemuBoard() as board:
        board.put_file("greet.py", b"...")      # into the board's littlefs root, as mpremote cp
        print(board.exec("import greet"))        # raw REPL, returns stdout
        board.start("import main")               # leave the script running: board.serial is its link
        board.sensor_port                        # pty of UART1: machine.UART(1) on the board

The firmware is built by tools/sim/qemu_image/build.sh (see docs/qemu.md).
"""

import binascii
import json
import os
import re
import select
import subprocess
import tempfile
import termios
import threading
import time
import tty
from pathlib import Path

import serial

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "qemu_image" / "build.sh"
BOARD_DIR = HERE / "board" / "qemu"  # board-side helpers, flashimage.py
TICKS_PERIOD = 1 << 30  # MicroPython's ticks wrap here on 32-bit boards
PSRAM_SIZE = 16 << 20  # the AN385's PSRAM, the flash file's size; littlefs uses its first 2 MiB
FLASH_BLOCKS = 512  # of 4096 bytes, as tools/sim/qemu_image/_boot.py mounts them
ROM_OFFSET = 2 << 20  # a ROMFS here in the flash is mounted at /rom by tools/sim/qemu_image/_boot.py
ROM_SIZE = 1 << 20
EPOCH_2000 = 946684800  # the board counts time.time() from 2000, as an ESP32 does
# A noise node's microphone comes in on UART1, which carries about 10 kB/s: at 16 kHz (the rate a
# QEMU node runs at unless its config sets one), in frames of block floating point that the
# board's machine.I2S widens into the raw 32-bit words (tools/sim/board/qemu/machine.py)
MIC_RATE = 16000
MIC_FRAME = 32  # samples per frame, after a sync byte 0x80 and the frame's shift

_PTY_LINE = re.compile(rb"redirected to (/dev/pts/\d+) \(label serial(\d)\)")
_RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


class QemuError(Exception):
    """The emulated board failed: a build error, no prompt, or a Python error on the board."""

    def __init__(self, message, output=b""):
        super().__init__(message)
        self.output = output


def heap_bytes(size):
    """A heap size as `--heap` takes it (65536, "64k", "1m") -> bytes."""
    t = str(size).strip().lower().rstrip("b")
    scale = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    return int(t[:-1] if scale > 1 else t) * scale


def write_flash(image, files):
    """Put files ({board path: local Path}) into a flash image file for QemuBoard(flash=...),
    creating it if needed, and return its path; other files on it stay. Runs the host's MicroPython unix port, whose
    littlefs writes what the board's reads."""
    from ...paths import micropython_bin
    image = Path(image)
    if not image.exists() or image.stat().st_size != PSRAM_SIZE:
        with open(image, "wb") as f:
            f.truncate(PSRAM_SIZE)  # sparse: only what littlefs writes takes disk space
    args = [a for dst, src in files.items() for a in (dst, str(src))]
    proc = subprocess.run([micropython_bin(), str(BOARD_DIR / "flashimage.py"), str(image),
                           str(FLASH_BLOCKS), *args], capture_output=True, text=True)
    if proc.returncode:
        raise QemuError(f"writing the flash image {image} failed:\n{proc.stderr}")
    return image


def write_rom(image, files):
    """Put a ROMFS image holding files ({rom path: local Path}) into the flash image's ROM
    partition, where the board mounts it at /rom: .mpy files there run in place, their bytecode
    stays in flash instead of the heap, as with frozen modules. Built with mpremote's ROMFS writer,
    the one `mpremote romfs deploy` uses. Returns the ROMFS's size in bytes."""
    from mpremote.romfs import VfsRomWriter
    rom = VfsRomWriter()
    tree: dict = {}
    for dst, src in files.items():
        *dirs, name = dst.strip("/").split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = Path(src).read_bytes()

    def add(node):
        for name in sorted(node):
            if isinstance(node[name], dict):
                rom.opendir(name)
                add(node[name])
                rom.closedir()
            else:
                rom.mkfile(name, node[name])
    add(tree)
    data = rom.finalise()
    if len(data) > ROM_SIZE:
        raise QemuError(f"the ROMFS ({len(data)} bytes) is larger than its {ROM_SIZE}-byte partition")
    with open(image, "r+b") as f:
        f.seek(ROM_OFFSET)
        f.write(data + b"\xff" * (ROM_SIZE - len(data)))  # the rest erased, as flash is
    return len(data)


def mic_frames(raw):
    """The microphone's raw words (little-endian int32, as I2S delivers them) as the QEMU board's
    microphone line carries them: per MIC_FRAME samples 0x80, a shift s (0..24) and each word
    >> s rounded to a signed byte (-127..127): 8 bits of mantissa under the frame's peak, 34
    bytes for 32 samples."""
    import numpy as np
    w = np.frombuffer(raw, "<i4").astype(np.int64).reshape(-1, MIC_FRAME)
    peak = np.abs(w).max(axis=1)
    shift = np.full(len(w), 24, np.int64)
    for s in range(24, -1, -1):
        shift[((peak + ((1 << s) >> 1)) >> s) <= 127] = s
    m = np.clip((w + ((1 << shift) >> 1)[:, None]) >> shift[:, None], -127, 127)
    out = np.empty((len(w), MIC_FRAME + 2), np.uint8)
    out[:, 0] = 0x80
    out[:, 1] = shift
    out[:, 2:] = m.astype(np.int8).view(np.uint8)
    return out.tobytes()


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
    flash: an image file (write_flash) that backs the board's PSRAM, where its filesystem lives;
    without one the filesystem is empty at each start. repl=False leaves the board running
    boot.py and main.py, as on power-up, instead of interrupting it into the raw REPL.
    qemu_args: QEMU options in place of `-monitor null`, e.g. a monitor socket to inspect a hang.
    """

    def __init__(self, elf=None, heap=None, ticks_us=None, boot_timeout=20, qemu_args=(),
                 flash=None, repl=True):
        self.elf = Path(elf) if elf else ensure_built()
        self.boot_args = ["firmware"]
        if heap is not None:
            self.boot_args.append(f"heap={int(heap)}")
        if ticks_us is not None:
            self.boot_args.append(f"ticks_us={int(ticks_us)}")
        self.boot_timeout = boot_timeout
        self.qemu_args = list(qemu_args) or ["-monitor", "null"]
        self.flash = flash
        self.repl = repl
        self.proc = None
        self.serial = None
        self.port = self.sensor_port = None
        self._pending = bytearray()

    def __enter__(self):
        self._log = tempfile.TemporaryFile()
        semihosting = "enable=on,target=native," + ",".join(f"arg={a}" for a in self.boot_args)
        machine = ["-machine", "mps2-an385"]
        if self.flash:
            machine = ["-object", f"memory-backend-file,id=flash,size={PSRAM_SIZE},"
                       f"mem-path={self.flash},share=on",
                       "-machine", "mps2-an385,memory-backend=flash"]
        self.proc = subprocess.Popen(
            ["qemu-system-arm", *machine, "-nographic",
             "-semihosting-config", semihosting, "-serial", "pty", "-serial", "pty",
             "-kernel", str(self.elf), *self.qemu_args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            ptys = self._wait_ptys()
            self.port, self.sensor_port = ptys["0"], ptys["1"]
            self.serial = serial.Serial(self.port, timeout=0.1)
            if self.repl:
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
        return self.result(timeout)

    def result(self, timeout=30):
        """The stdout of the code start() left running, once it ends; its error raises QemuError."""
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

    def put_dir(self, local, remote="", suffixes=(".mpy", ".py")):
        """Copy the files of a local folder (not its subfolders) into a folder on the board."""
        for f in sorted(Path(local).iterdir()):
            if f.is_file() and f.suffix in suffixes:
                self.put_file(f"{remote}/{f.name}" if remote else f.name, f)

    def soft_reset(self):
        """Ctrl-D from the friendly REPL: the board reboots, keeps its files, runs main.py."""
        self.serial.write(b"\x02")  # leave the raw REPL
        self.read_until(b">>> ", timeout=5)
        self.discard_input()
        self.serial.write(b"\x04")
        return self.read_until(b"MPY: soft reboot\r\n", timeout=5)


class QemuNode:
    """`sensorcity emulate --target qemu`: a node's firmware, unmodified, on the QEMU board.

    Its flash is an image file beside the config (NODE.qemu-flash.img), its link UART0 joined to
    the serial device `port`, its P1 meter (tools/signals.Meter) on UART1. machine.reset() and
    the watchdog end QEMU; supervise() starts it again on the same flash, as a board reboots.
    A noise node has no P1 port: UART1 is its microphone's I2S line instead (mic_frames), fed at
    the real sample rate whatever the speed (each accelerated interval hears 1/speed of its audio)
    from `mic`, an object whose second() returns a second of raw words (default
    tools/signals.StreetNoise, as the unix-port emulator's). The node runs at its config's `rate`,
    else MIC_RATE; what the line cannot carry in time is dropped, as an I2S DMA overrun drops it.
    A traffic node has neither: UART1 carries its loop detectors' edges, a line "<pin> <state>\n"
    each, which the board's Pin.irq hands to the pin's handler. They come from `traffic`, a
    tools/signals.Traffic (default: the unix-port emulator's, from the config's loop geometry),
    on the emulator's schedule at the board's pace (tools/emulate.traffic_edges).
    The board's clock starts `wrap_in` seconds before ticks_ms and ticks_us wrap at 2^30, so each
    run crosses the wrap early (Linux starts its jiffies shortly before their wrap for the same
    reason); None starts it at 0.

    The firmware's modules are in the flash's ROMFS (write_rom), as a production board has them
    frozen or in its romfs partition: their bytecode is not on the heap. boot.py, main.py and
    node.json are files on its littlefs. The emulator's clock (tools/sim/board/time.py, select.py)
    goes with them: `speed` runs the board's clock that many times faster than the host's (an
    integer), and its RTC is set at each boot to the host's clock (+ clock_offset), scaled alike.
    """

    def __init__(self, config, port, interval=None, heap="128k", seed=0, log=None, wrap_in=20.0,
                 speed=1, clock_offset=0.0, mic=None, traffic=None):
        from ...errors import FatalError
        if port.startswith("tcp://"):
            raise FatalError("--target qemu has no network: give a serial device for --port")
        self.config = Path(config).resolve()
        try:
            self.node = json.loads(self.config.read_text())
        except (OSError, ValueError) as exc:
            raise FatalError(f"cannot read node config {config}: {exc}") from exc
        from ... import kinds
        self.kind = kinds.get(self.node.get("sensor"), f"{config}: sensor").name
        if self.kind == "noise":
            self.node["rate"] = self.rate = int(self.node.get("rate", MIC_RATE))
        self.mic = mic
        self.traffic = traffic
        self._edges = None  # (produce, period) of the loop detectors' edges, across reboots
        self.mic_dropped = 0  # bytes of the microphone line the board did not take in time
        self._mic_cache = {}
        if interval:
            self.node["interval"] = int(interval)
        self.port = port
        self.heap = heap_bytes(heap)
        self.ticks_us = None if wrap_in is None else TICKS_PERIOD * 1000 - int(wrap_in * 1e6)
        self.meter = None
        self.seed = seed
        self.log = log
        self.image = self.config.with_suffix(".qemu-flash.img")
        if int(speed) != speed or speed < 1:
            raise FatalError(f"--speed {speed}: the QEMU board's clock runs a whole number of "
                             "times faster than the host's")
        self.speed = int(speed)
        self._epoch0 = (time.time() + clock_offset, time.time())
        self.rom_bytes = 0
        self.board = None
        self.boots = 0
        self.tty_fd = None
        self._stop = threading.Event()

    def start(self):
        from ...errors import FatalError
        from ...paths import firmware_dir
        from ..mpy import compile_dir
        from . import signals
        from .emulate import EMULATOR_DIR
        fw = compile_dir(firmware_dir(), march="armv7m")
        emu = compile_dir(EMULATOR_DIR, march="armv7m")
        rom = {f.name: f for f in fw.iterdir() if f.suffix == ".mpy"}
        rom["lib/machine.mpy"] = compile_dir(BOARD_DIR, march="armv7m") / "machine.mpy"
        rom["lib/time.mpy"] = emu / "time.mpy"
        rom["lib/select.mpy"] = emu / "select.mpy"
        # littlefs comes first on sys.path: no module of an older image may shadow the ROMFS
        files = {name: "-" for name in rom}
        files.update({f.name: f for f in fw.iterdir() if f.suffix == ".py"})
        files["rtc"] = "-"  # power on: the RTC starts unset
        # the board's console is its link: no trace lines on it
        node = dict(self.node, link={"serial": True}, trace=False)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "node.json"
            cfg.write_text(json.dumps(node))
            write_flash(self.image, dict(files, **{"node.json": cfg}))
        self.rom_bytes = write_rom(self.image, rom)
        try:
            self.tty_fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise FatalError(f"cannot open {self.port}: {exc.strerror}") from exc
        tty.setraw(self.tty_fd, termios.TCSANOW)
        self.meter = signals.Meter(self.seed)
        if self.kind == "noise" and self.mic is None:
            self.mic = signals.StreetNoise(self.rate, self.node.get("mic_sensitivity", -26.0),
                                           self.seed)
        if self.kind == "traffic":
            from .emulate import TRAFFIC_PINS, traffic_edges
            if self.traffic is None:
                self.traffic = signals.Traffic(TRAFFIC_PINS, self.node.get("loop_spacing", 4.0),
                                               self.node.get("loop_length", 2.0), self.seed)
            self._edges = traffic_edges(self.traffic, self.speed)
        self._spawn()

    def board_time(self):
        """The board's clock now, as the host keeps it: seconds since 1970."""
        e0, h0 = self._epoch0
        return e0 + (time.time() - h0) * self.speed

    def _spawn(self):
        self.boots += 1
        with tempfile.TemporaryDirectory() as tmp:
            emu = Path(tmp) / "emu.json"
            emu.write_text(json.dumps({"speed": self.speed, "rtc": "/rtc",
                                       "epoch": 0,
                                       "epoch_ms": int((self.board_time() - EPOCH_2000) * 1000)}))
            write_flash(self.image, {"emu.json": emu})
        self.board = QemuBoard(heap=self.heap, ticks_us=self.ticks_us, flash=self.image,
                               repl=False).__enter__()
        if self.log:
            from ...kinds import KINDS
            sensor = KINDS[self.kind].sensor
            print(f"qemu node: boot {self.boots}, link {self.board.port} <-> {self.port}, "
                  f"{sensor} on {self.board.sensor_port}", file=self.log, flush=True)
        board = self.board
        threading.Thread(target=self._pump, args=(board,), daemon=True).start()
        feed = {"noise": self._feed_mic, "traffic": self._feed_edges}.get(self.kind,
                                                                           self._feed_meter)
        threading.Thread(target=feed, args=(board,), daemon=True).start()

    def _pump(self, board):
        # UART0 <-> the link's serial device, for as long as this board runs
        ours, theirs = board.serial.fileno(), self.tty_fd
        while not self._stop.is_set() and board.proc is not None:
            try:
                r, _, _ = select.select([ours, theirs], [], [], 0.2)
                for src, dst in ((ours, theirs), (theirs, ours)):
                    if src in r:
                        data = os.read(src, 4096)
                        while data:
                            try:
                                data = data[os.write(dst, data):]
                            except BlockingIOError:
                                select.select([], [dst], [], 0.2)
            except OSError:
                return  # QEMU ended: the board is off

    def _feed_meter(self, board):
        # a DSMR 5 telegram each second on the P1 line; the line stays open (QEMU stops
        # reading a pty nobody holds)
        try:
            with serial.Serial(board.sensor_port) as line:
                while not self._stop.is_set() and board.proc is not None:
                    line.write(self.meter.second())
                    # at most 5 a second of the host's: parsing telegrams is most of what the
                    # emulated CPU does, and an accelerated board has little of it to spare
                    self._stop.wait(max(1.0 / self.speed, 0.2))
        except (OSError, serial.SerialException):
            return

    def _feed_edges(self, board):
        # the vehicles' edge lines, each at its time (tools/emulate.pace); a board that resets
        # takes the schedule up where the last one left it
        from .emulate import pace
        try:
            with serial.Serial(board.sensor_port) as line:
                pace(*self._edges, line.write,
                     lambda: self._stop.is_set() or board.proc is None)
        except (OSError, serial.SerialException):
            return

    def _mic_second(self):
        raw = self.mic.second()
        if raw not in self._mic_cache:  # StreetNoise repeats its seconds: encode each once
            if len(self._mic_cache) > 64:
                self._mic_cache.clear()
            self._mic_cache[raw] = mic_frames(raw)
        return self._mic_cache[raw]

    def _feed_mic(self, board):
        # Frames at the real sample rate by the host's clock. What the line has no room for is
        # dropped in whole frames, as an I2S DMA overrun drops buffers: a frame the pty took in
        # part is finished first, so that the board hears whole frames only (a 1 kHz tone stays
        # in phase across a drop). The pty holds about 24 kB: the board hears the host's audio
        # up to ~3 s late, more if the board stops reading.
        try:
            fd = os.open(board.sensor_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return
        size = MIC_FRAME + 2
        per_s = self.rate // MIC_FRAME
        sec, pos, due_sent, t0 = b"", per_s, 0, time.monotonic()
        pending = b""  # the rest of a frame the pty took in part
        try:
            tty.setraw(fd, termios.TCSANOW)
            while not self._stop.is_set() and board.proc is not None:
                due = int((time.monotonic() - t0) * per_s)
                new = bytearray()
                while due_sent < due:
                    if pos == per_s:
                        sec, pos = self._mic_second(), 0
                    take = min(per_s - pos, due - due_sent)
                    new += sec[pos * size:(pos + take) * size]
                    pos += take
                    due_sent += take
                if new or pending:
                    try:
                        w = os.write(fd, pending + new)
                    except BlockingIOError:
                        w = 0
                    if w < len(pending):
                        pending = pending[w:]
                        self.mic_dropped += len(new)
                    else:
                        cut = w - len(pending)
                        end = min(len(new), cut + (-cut) % size)
                        pending = bytes(new[cut:end])
                        self.mic_dropped += len(new) - end
                self._stop.wait(0.02)
        except OSError:
            return  # QEMU ended
        finally:
            os.close(fd)

    def supervise(self):
        """Start the board again whenever it resets (watchdog, reboot command), like a board."""
        while not self._stop.is_set():
            code = self.board.proc.wait()
            if self._stop.is_set():
                return code
            self.board.close()
            time.sleep(0.5)
            self._spawn()

    def stop(self):
        self._stop.set()
        if self.board:
            self.board.close()
        if self.tty_fd is not None:
            os.close(self.tty_fd)
            self.tty_fd = None
