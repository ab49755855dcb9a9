# The emulated board's `select`: poll timeouts shrink by the clock's speed (see time.py here),
# so asyncio's timers run on the accelerated clock.
import sys

_path = sys.path[:]
sys.path.clear()  # import the built-in `select`, not this file
import select as _s  # noqa: E402
sys.path[:] = _path
del _path

from time import SPEED  # noqa: E402

POLLIN = _s.POLLIN
POLLOUT = _s.POLLOUT
POLLERR = _s.POLLERR
POLLHUP = _s.POLLHUP
select = getattr(_s, "select", None)


class _Poll:
    def __init__(self):
        self.p = _s.poll()
        self.register = self.p.register
        self.unregister = self.p.unregister
        self.modify = self.p.modify

    def _real(self, timeout):
        if timeout is None or timeout < 0:
            return -1
        return int(timeout / SPEED + 0.999)

    def poll(self, timeout=-1):
        return self.p.poll(self._real(timeout))

    def ipoll(self, timeout=-1, flags=0):
        return self.p.ipoll(self._real(timeout), flags)


def poll():
    return _Poll() if SPEED != 1 else _s.poll()
