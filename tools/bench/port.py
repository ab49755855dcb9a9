"""The bench's serial port: one line a technician can act on for each way opening it fails."""

from __future__ import annotations

import errno
import fcntl
import os

from ...errors import FatalError

URL_SCHEMES = ("socket://", "rfc2217://", "loop://")


def check(port: str) -> None:
    """FatalError unless `port` can be opened for exclusive use now (URLs are left to pyserial)."""
    if port.startswith(URL_SCHEMES):
        return
    if not os.path.exists(port):
        raise FatalError(f"no board on {port}: nothing is plugged in there "
                         f"(look for /dev/ttyUSB* or /dev/ttyACM*; try another cable)")
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise _error(port, exc) from exc
    try:
        # pyserial, esptool and mpremote lock the port the same way (flock, exclusive)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        raise _error(port, exc) from exc
    finally:
        os.close(fd)


def _error(port: str, exc: OSError) -> FatalError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FatalError(f"no permission on {port}: add yourself to the dialout group "
                          f"(sudo usermod -aG dialout $USER, then log out and in)")
    if exc.errno in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return FatalError(f"{port} is busy: another program holds it (a monitor, the gateway, "
                          f"screen or minicom); close it and try again")
    if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return FatalError(f"no board on {port}: it went away (loose cable?)")
    return FatalError(f"cannot open {port}: {exc.strerror}")


def translate(port: str, exc: BaseException) -> FatalError:
    """A pyserial/esptool/mpremote error while talking to the port, as one line."""
    text = str(exc)
    if "exclusively lock" in text or "Resource temporarily unavailable" in text or \
            "Device or resource busy" in text:
        return FatalError(f"{port} is busy: another program holds it; close it and try again")
    if "Permission denied" in text:
        return _error(port, PermissionError(errno.EACCES, text))
    if "No such file" in text or "could not open port" in text:
        return FatalError(f"no board on {port}: nothing answers there")
    if "Connection refused" in text:
        return FatalError(f"no board on {port}: nothing listens there")
    return FatalError(f"{port}: {text.strip().splitlines()[-1] if text.strip() else exc!r}")
