# The node's energy pipeline (sensors.energy) on a P1 line fed from a file, under the unix port:
# `energy_driver.py FILE CONFIG-JSON CHUNK SIZES-JSON` prints one JSON line per emitted interval,
# [t, records]. The node and its UART are stand-ins with the interfaces the pipeline uses; the
# driver moves the clock to interval k, waits until the pipeline has closed interval k - 1, and
# then sends the k-th piece of the file (SIZES) down the line, so interval k holds it.
import asyncio
import io
import json
import sys

import sensors

_POLL_RD = 0x0001
_STREAM_POLL = 3


class Line(io.IOBase):
    """The meter's UART: the file's bytes, CHUNK at a time, pollable as machine.UART is."""

    def __init__(self, data, chunk):
        self.data = data
        self.pos = 0
        self.end = 0  # bytes sent so far
        self.chunk = chunk

    def ioctl(self, req, arg):
        if req == _STREAM_POLL:
            return arg & _POLL_RD if self.pos < self.end else 0
        return 0

    def readinto(self, buf):
        n = min(len(buf), self.chunk, self.end - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


class Hw:
    def __init__(self, line):
        self.line = line

    def p1_uart(self, dsmr_version=5):
        return self.line


class Node:
    def __init__(self, cfg, line):
        self.cfg = cfg
        self.hw = Hw(line)
        self.progress = 0
        self.now = 0  # the interval in progress, moved by the driver
        self.closed = 0
        self.walkers = []  # the tasks' Intervals, as node.Node keeps them

    def interval_start(self):
        return self.now

    def next_interval(self, s):
        return s + 1

    def ahead_end(self, s):
        return None  # no clock of the driver's ran ahead (node.Node, "Clock")

    def epoch_s(self, s):
        return s

    def leapt(self, s):
        return False

    def emit(self, t, records):
        self.closed += 1
        # values as text: a count as it is, a cbor.Decimal as "m e"
        print(json.dumps([t, [(n, u, "%d %d" % (v.m, v.e) if hasattr(v, "m") else str(v))
                              for n, u, v in records]]))


async def main(path, cfg, chunk, sizes):
    with open(path, "rb") as f:
        line = Line(f.read(), chunk)
    node = Node(cfg, line)
    task = asyncio.create_task(sensors.pipeline("energy", cfg)(node))
    await asyncio.sleep_ms(0)  # the pipeline opens interval 0
    for k, size in enumerate(sizes + [0]):
        node.now = k
        while node.closed < k:  # interval k - 1 closed
            if task.done():
                raise SystemExit("the energy pipeline ended")  # not a 300 s wait for nothing
            await asyncio.sleep_ms(20)
        line.end += size
    node.now = len(sizes) + 1
    while node.closed <= len(sizes):
        if task.done():
            raise SystemExit("the energy pipeline ended")
        await asyncio.sleep_ms(20)
    task.cancel()


asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])))
