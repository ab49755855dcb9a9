"""`sensorcity replay`: a recording through the real firmware on the emulated board, then through
the real link codec and the gateway's verification and SenML resolution; one JSON line per record.

The input's first sample, byte or edge is t = 0 and opens the first interval; the last, partial
interval is flushed at the end.
"""

from __future__ import annotations

import binascii
import json
import os
import secrets
import subprocess
import tempfile
import threading
from pathlib import Path

from ... import kinds
from ...errors import FatalError
from ...protocol import frames, senml
from ...paths import firmware_dir, micropython_bin
from .emulate import EMULATOR_DIR, parse_heap
from ..bench import boards
from ..bench.provision import p1_key_hex
from . import wav
from ..mpy import compile_dir

NODE_ID = "replay"
BASE_NAME = "urn:dev:org:32473-sensorcity-replay:"
RATES = (16000, 32000, 48000)


def wav_to_i2s(src: Path, dst: Path) -> int:
    """A mono WAV -> little-endian 32-bit words, as an I2S microphone delivers them; its rate."""
    rate, words = wav.read(src)
    if rate not in RATES:
        raise FatalError(f"{src}: {rate} Hz; the node samples at 16, 32 or 48 kHz")
    dst.write_bytes(words.tobytes())
    return rate


def replay(kind: str, source: Path, interval: int = 60, board: str = "esp32-devkitc",
           heap: str = "64k", target: str = "unix", mic: str | None = None,
           mic_sensitivity: float | None = None, loop_length: float = 2.0,
           loop_spacing: float = 4.0, lanes: int | None = None, p1_key: str | None = None,
           p1_auth_key: str | None = None):
    """Yields resolved records as dicts (n, u, v, t); last, a dict of counters under 'counters'.
    p1_key (and p1_auth_key), hex: the P1 stream is encrypted (docs/energy.md)."""
    kinds.get(kind, "replay")
    if target not in ("unix", "qemu"):
        raise FatalError(f"--target {target}: give unix or qemu")
    if interval < 1:
        raise FatalError("--interval must be at least 1 second")
    source = Path(source)
    if not source.is_file():
        raise FatalError(f"{source}: no such file")
    spec = boards.load(board)
    opts: dict = {}
    with tempfile.TemporaryDirectory(prefix="sensorcity-replay-") as tmp:
        path = source
        if kind == "noise":
            path = Path(tmp) / "i2s.raw"
            opts["rate"] = wav_to_i2s(source, path)
            opts["mic"] = mic or spec.get("mic") or "ideal"
            sens = mic_sensitivity if mic_sensitivity is not None else spec.get(
                "mic_sensitivity_dbfs")
            if sens is None:
                raise FatalError(f"board {board} has no microphone: give --mic-sensitivity")
            opts["sensitivity"] = sens
        elif kind == "energy" and (p1_key or p1_auth_key):
            opts["p1_key"] = p1_key_hex("--p1-key", p1_key)
            if p1_auth_key:
                opts["p1_auth_key"] = p1_key_hex("--p1-auth-key", p1_auth_key)
        elif kind == "traffic":
            opts.update(loop_length=loop_length, loop_spacing=loop_spacing,
                        lanes=lanes or _lanes_in(source))
        key = secrets.token_bytes(32)
        args = (kind, path, interval, key, NODE_ID, BASE_NAME, opts, heap)
        stream, counters = _run_qemu(*args) if target == "qemu" else _run_unix(*args)
    for cobs in frames.Deframer(limit=1 << 16).feed(stream):
        frame = frames.decode(cobs, {NODE_ID: key}.get)  # the real link's checks
        for rec in senml.resolve(frame.body):
            yield rec.as_json()
    yield {"counters": counters}


def _run_unix(kind, path, interval, key, node_id, base_name, opts, heap):
    """The driver in the unix port: the input file in, frames on stdout, counters on stderr."""
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(
        [str(compile_dir(firmware_dir())), str(EMULATOR_DIR), ".frozen"]))
    proc = subprocess.run(
        [micropython_bin(), "-X", f"heapsize={parse_heap(heap)}", str(EMULATOR_DIR / "replay.py"),
         kind, str(path), str(interval), key.hex(), node_id, base_name, json.dumps(opts)],
        capture_output=True, env=env)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        # the unix port prints an uncaught exception on stdout, after the frames
        tail = proc.stdout[-300:].decode(errors="replace").strip()
        last = (err or tail).splitlines()[-1] if err or tail else f"exit code {proc.returncode}"
        raise FatalError(f"replay failed on the emulated board: {last}")
    return proc.stdout, json.loads(err.splitlines()[-1])


def _run_qemu(kind, path, interval, key, node_id, base_name, opts, heap):
    """The same driver on the QEMU board (32-bit Cortex-M3). The input arrives on UART1, audio
    through semihosting instead (UART1 is ten times too slow for it, docs/qemu.md); the frames
    come back on UART0 as base64 lines, since UART0 also carries the raw REPL's framing."""
    import serial

    from .qemu import BOARD_DIR, QemuBoard, QemuError, heap_bytes, write_flash, write_rom
    size = path.stat().st_size
    if kind == "noise":
        source, timeout = f"hostfile.HostFile({str(path.resolve())!r})", 60 + size / 500_000
    else:
        source, timeout = f"uartfile.UartFile(machine.UART(1), {size})", 60 + size / 5_000
    code = (
        "import binascii, json, machine, sys, replay, hostfile, uartfile\n"
        "out = sys.stdout.buffer\n"
        f"c = replay.run({kind!r}, {source}, {interval}, binascii.unhexlify({key.hex()!r}), "
        f"{node_id!r}, {base_name!r}, json.loads({json.dumps(opts)!r}), "
        "lambda f: out.write(binascii.b2a_base64(f)))\n"
        "out.write(json.dumps(c))\n")
    fw = compile_dir(firmware_dir(), march="armv7m")
    helpers = compile_dir(BOARD_DIR, march="armv7m")
    files = {f.name: f for f in fw.glob("*.mpy")}
    files.update({f"lib/{n}.mpy": helpers / f"{n}.mpy" for n in ("uartfile", "hostfile")})
    files["lib/replay.mpy"] = compile_dir(EMULATOR_DIR, march="armv7m") / "replay.mpy"
    try:
        with tempfile.TemporaryDirectory(prefix="sensorcity-qemu-") as tmp:
            # the modules in the flash's ROMFS, their bytecode off the heap, as on a production
            # board (docs/node.md, Heap)
            image = write_flash(Path(tmp) / "flash.img", {})
            write_rom(image, files)
            with QemuBoard(heap=heap_bytes(parse_heap(heap)), flash=image) as board:
                board.start(code)
                if kind == "noise":
                    out = board.result(timeout)
                else:  # the recording goes down the sensor line while the board runs
                    # the line stays open until the board is done: QEMU stops reading a closed
                    # pty
                    with serial.Serial(board.sensor_port) as line:
                        feeder = threading.Thread(target=_send, args=(path, line), daemon=True)
                        feeder.start()
                        out = board.result(timeout)
                        feeder.join(5)
    except QemuError as exc:
        last = exc.args[0].strip().splitlines()[-1]
        raise FatalError(f"replay failed on the QEMU board: {last}") from exc
    lines = out.splitlines()
    return b"".join(binascii.a2b_base64(b) for b in lines[:-1]), json.loads(lines[-1])


def _send(path: Path, line) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            line.write(chunk)


def _lanes_in(path: Path) -> int:
    """The highest lane number in an edge CSV (every interval carries every lane)."""
    top = 1
    with open(path) as f:
        for line in f:
            parts = line.split(",")
            if len(parts) == 4 and parts[1].strip().isdigit():
                top = max(top, int(parts[1]))
    return top
