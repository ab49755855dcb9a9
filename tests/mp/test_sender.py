# The node's sender under the unix port: up to a window of frames in flight, acks in any order,
# the store released in order, and on a timeout only the unacked frames sent again. A fake clock
# (ticks) decides timeouts; the gateway's acks are made with the link codec.
import asyncio
import os
import time

import link
import node

KEY = "00112233445566778899aabbccddeeff"


class Ticks:
    ms = 1000

    def __call__(self):
        return self.ms


class Board:
    def epoch_ms(self):
        return 1767225600000

    def set_epoch_ms(self, ms):
        pass

    def free_heap(self):
        return 1000


def _node():
    d = "/tmp/sc_sender_%d" % time.ticks_us()
    os.mkdir(d)
    os.chdir(d)
    ticks = Ticks()
    n = node.Node({"node_id": "n1", "key": KEY, "sensor": "energy",
                   "base_name": "urn:dev:ow:n1:", "interval": 60}, Board(), ticks)
    wire = []
    n.write = lambda b: wire.append(link.frame_seq(bytes(b)))
    return n, ticks, wire


def _emit(n, count):
    seqs = []
    for i in range(count):
        n.emit(1767225600 + 60 * i, [("x", "count", i)])
        seqs.append(n.seq.next - 1)
    return seqs


def _ack(n, seq):
    n.on_frame(link.encode_frame(n.key, link.ACK, "n1", 0, seq)[:-1])


async def _until(cond, ms=30000):
    """Wait for the sender's progress, not for a time: a release rewrites flash (ms each), so a
    busy host takes longer. Sleeps stay only before checks that nothing happened."""
    t0 = time.ticks_ms()
    while not cond():
        assert time.ticks_diff(time.ticks_ms(), t0) < ms, "timed out"
        await asyncio.sleep_ms(1)


def _run(scenario):
    async def main(n):
        task = asyncio.create_task(n.sender())
        await scenario(n)
        task.cancel()
    return main


def test_window_out_of_order_acks_release_in_order():
    n, ticks, wire = _node()
    seqs = _emit(n, 20)

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        assert wire == seqs[:8], wire  # a window in flight, oldest first
        for s in reversed(seqs[1:8]):  # every ack but the oldest's
            _ack(n, s)
        await asyncio.sleep_ms(20)
        assert n.store.depth == 20 and wire == seqs[:8]  # nothing released past the oldest
        _ack(n, seqs[0])
        await _until(lambda: n.store.depth == 12 and len(wire) >= 16)
        assert n.store.depth == 12 and wire == seqs[:16], (n.store.depth, wire)
        for s in seqs[8:]:
            _ack(n, s)
            await asyncio.sleep_ms(5)
        await _until(lambda: n.store.depth == 0)
        assert n.store.depth == 0 and n.sent == 20
        assert wire == seqs and n.resends == 0  # every frame went once
    asyncio.run(_run(scenario)(n))


def test_timeout_resends_only_the_unacked():
    n, ticks, wire = _node()
    seqs = _emit(n, 3)

    async def scenario(n):
        await _until(lambda: len(wire) >= 3)
        assert wire == seqs
        _ack(n, seqs[1])
        ticks.ms += node.ACK_TIMEOUT_MS
        n.wake.set()
        await _until(lambda: len(wire) >= 5)
        assert wire == seqs + [seqs[0], seqs[2]], wire
        assert n.resends == 2 and n.store.depth == 3
        ticks.ms += node.ACK_TIMEOUT_MS  # the timeout has doubled: nothing yet
        n.wake.set()
        await asyncio.sleep_ms(20)
        assert len(wire) == 5
        ticks.ms += node.ACK_TIMEOUT_MS
        n.wake.set()
        await _until(lambda: len(wire) >= 7)
        assert len(wire) == 7
        _ack(n, seqs[2])
        _ack(n, seqs[0])
        await _until(lambda: n.store.depth == 0)
        assert n.store.depth == 0 and n.sent == 3
        more = _emit(n, 1)  # a release resets the timeout; a new frame goes at once
        await _until(lambda: wire[-1] == more[0])
    asyncio.run(_run(scenario)(n))


def test_link_down_and_up_sends_from_the_oldest_unacked():
    n, ticks, wire = _node()
    seqs = _emit(n, 10)

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        _ack(n, seqs[0])
        _ack(n, seqs[1])
        await _until(lambda: n.store.depth == 8)
        write = n.write
        n.write = None  # the TCP link dropped
        n.wake.set()
        await _until(lambda: not n.flight)  # the sender saw it
        del wire[:]
        n.write = write
        n.wake.set()
        await _until(lambda: len(wire) >= 8)
        assert wire == seqs[2:10], wire
    asyncio.run(_run(scenario)(n))


import mptest  # noqa: E402

mptest.run(globals())
