"""`sensorcity replay`: a recording through the real firmware on the emulated board, then through
the real link codec and the gateway's verification and SenML resolution; one JSON line per record.

The input's first sample, byte or edge is t = 0 and opens the first interval; the last, partial
interval is flushed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import wave
from pathlib import Path

from ..errors import FatalError
from ..gateway import frames, senml
from ..paths import boards_dir, firmware_dir, micropython_bin
from .emulate import EMULATOR_DIR, parse_heap
from .mpy import compile_dir

NODE_ID = "replay"
BASE_NAME = "urn:dev:org:32473-sensorcity-replay:"
RATES = (16000, 32000, 48000)


def load_board(board: str) -> dict:
    path = boards_dir() / f"{board}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in boards_dir().glob("*.json")))
        raise FatalError(f"board {board!r} is unknown; boards: {known}")
    return json.loads(path.read_text())


def wav_to_i2s(src: Path, dst: Path) -> int:
    """A PCM WAV (8/16/24/32-bit, mono) -> little-endian 32-bit words, the sample left-justified as
    an I2S microphone delivers it. Returns the sample rate."""
    try:
        with wave.open(str(src), "rb") as w:
            if w.getnchannels() != 1:
                raise FatalError(f"{src}: {w.getnchannels()} channels; give a mono WAV")
            width, rate, n = w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise FatalError(f"{src}: not a PCM WAV file ({exc})") from exc
    except OSError as exc:
        raise FatalError(f"{src}: {exc.strerror or exc}") from exc
    if rate not in RATES:
        raise FatalError(f"{src}: {rate} Hz; the node samples at 16, 32 or 48 kHz")
    count = len(data) // width
    out = bytearray(4 * count)
    if width == 1:  # unsigned 8-bit: flip the sign bit
        out[3::4] = data.translate(bytes((b ^ 0x80) for b in range(256)))
    else:
        for k in range(width):
            out[4 - width + k::4] = data[k::width]
    dst.write_bytes(out)
    return rate


def replay(kind: str, source: Path, interval: int = 60, board: str = "esp32-devkitc",
           heap: str = "64k", target: str = "unix", mic: str | None = None,
           mic_sensitivity: float | None = None, loop_length: float = 2.0,
           loop_spacing: float = 4.0, lanes: int | None = None):
    """Yields resolved records as dicts (n, u, v, t); last, a dict of counters under 'counters'."""
    if target != "unix":
        raise FatalError("--target qemu is not available yet: use --target unix")
    if interval < 1:
        raise FatalError("--interval must be at least 1 second")
    source = Path(source)
    if not source.is_file():
        raise FatalError(f"{source}: no such file")
    spec = load_board(board)
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
        elif kind == "traffic":
            opts.update(loop_length=loop_length, loop_spacing=loop_spacing,
                        lanes=lanes or _lanes_in(source))
        key = secrets.token_bytes(32)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(
            [str(compile_dir(firmware_dir())), str(EMULATOR_DIR), ".frozen"]))
        proc = subprocess.run(
            [micropython_bin(), "-X", f"heapsize={parse_heap(heap)}", str(EMULATOR_DIR / "replay.py"),
             kind, str(path), str(interval), key.hex(), NODE_ID, BASE_NAME, json.dumps(opts)],
            capture_output=True, env=env)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
        raise FatalError(f"replay failed on the emulated board: {last}")
    for cobs in frames.Deframer(limit=1 << 16).feed(proc.stdout):
        frame = frames.decode(cobs, {NODE_ID: key}.get)  # the real link's checks
        for rec in senml.resolve(frame.body):
            yield rec.as_json()
    yield {"counters": json.loads(err.splitlines()[-1])}


def _lanes_in(path: Path) -> int:
    """The highest lane number in an edge CSV (every interval carries every lane)."""
    top = 1
    with open(path) as f:
        for line in f:
            parts = line.split(",")
            if len(parts) == 4 and parts[1].strip().isdigit():
                top = max(top, int(parts[1]))
    return top
