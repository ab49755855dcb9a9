"""A virtual serial cable: two pty pairs joined by a proxy, so each end is a real tty device
(/dev/pts/N) that pyserial and asyncio can open by path. The proxy is where line faults go in:
bit errors, dropped bytes, garbage bursts, stalls and unplugging."""

from __future__ import annotations

import os
import pty
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field


@dataclass
class Faults:
    """Rates per byte (bit_error, drop) or per chunk (garbage); stall in seconds per chunk."""

    bit_error: float = 0.0
    drop: float = 0.0
    garbage: float = 0.0
    garbage_len: int = 32
    seed: int = 1
    counts: dict = field(default_factory=lambda: {"bit_errors": 0, "dropped": 0, "garbage": 0,
                                                  "bytes": 0})

    def apply(self, data: bytes, rng: random.Random) -> bytes:
        self.counts["bytes"] += len(data)
        if not (self.bit_error or self.drop or self.garbage):
            return data
        out = bytearray()
        for b in data:
            if self.drop and rng.random() < self.drop:
                self.counts["dropped"] += 1
                continue
            if self.bit_error and rng.random() < 8 * self.bit_error:
                b ^= 1 << rng.randrange(8)
                self.counts["bit_errors"] += 1
            out.append(b)
        if self.garbage and rng.random() < self.garbage:
            out += bytes(rng.randrange(256) for _ in range(self.garbage_len))
            self.counts["garbage"] += 1
        return bytes(out)


class VirtualCable:
    def __init__(self, faults_a_to_b: Faults | None = None, faults_b_to_a: Faults | None = None):
        self.ma, sa = pty.openpty()
        self.mb, sb = pty.openpty()
        for fd in (sa, sb, self.ma, self.mb):
            tty.setraw(fd)
        self.a = os.ttyname(sa)
        self.b = os.ttyname(sb)
        # keep our slave fds open so a master never sees EIO while an end is closed
        self._slaves = (sa, sb)
        self.faults = {self.ma: faults_a_to_b or Faults(), self.mb: faults_b_to_a or Faults()}
        self.connected = threading.Event()
        self.connected.set()
        self._stop = False
        self._held = {self.ma: bytearray(), self.mb: bytearray()}  # stalled bytes, by source
        self._stall_until = {self.ma: 0.0, self.mb: 0.0}
        self._rng = random.Random(self.faults[self.ma].seed)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        peer = {self.ma: self.mb, self.mb: self.ma}
        while not self._stop:
            r, _, _ = select.select([self.ma, self.mb], [], [], 0.1)
            for fd, held in self._held.items():
                if held and time.monotonic() >= self._stall_until[fd]:
                    try:
                        os.write(peer[fd], bytes(held))
                    except OSError:
                        pass
                    held.clear()
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if not self.connected.is_set():
                    continue  # unplugged: bytes fall on the floor
                data = self.faults[fd].apply(data, self._rng)
                if time.monotonic() < self._stall_until[fd]:
                    self._held[fd] += data  # delivered, in order, when the stall ends
                    continue
                try:
                    os.write(peer[fd], data)
                except OSError:
                    pass

    def unplug(self, seconds: float):
        self.connected.clear()
        time.sleep(seconds)
        self.connected.set()

    def stall(self, seconds: float, a_to_b: bool = True):
        """Hold one direction's bytes for `seconds` (a pause, not a loss); returns at once."""
        self._stall_until[self.ma if a_to_b else self.mb] = time.monotonic() + seconds

    def close(self):
        self._stop = True
        self._thread.join(1)
        for fd in (self.ma, self.mb, *self._slaves):
            try:
                os.close(fd)
            except OSError:
                pass
