"""systemd's notify protocol, written here (a datagram on $NOTIFY_SOCKET; sd_notify(3)) so the
gateway needs no binding: READY=1 once listening, WATCHDOG=1 while the pipeline progresses,
STOPPING=1 when draining."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one state line; False when not run by systemd (no socket) or it failed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_period() -> float | None:
    """Seconds between pings (half of WatchdogSec), or None when no watchdog is asked of us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
