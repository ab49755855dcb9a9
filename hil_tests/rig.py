"""What the emulated-hardware tests share: the command, free ports."""

import socket
import sys
from pathlib import Path

SENSORCITY = str(Path(sys.executable).parent / "sensorcity")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
