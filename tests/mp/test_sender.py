# The node's sender under the unix port: up to a window of frames in flight, acks in any order,
# the store released in order, and on a timeout the oldest unacked alone until it is acked. A fake clock
# (ticks) decides timeouts; the gateway's acks are made with the link codec.
import asyncio
import os
import time

import link
import renumber
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


def _boot(ticks, fresh=False):
    if fresh:
        d = "/tmp/sc_sender_%d" % time.ticks_us()
        os.mkdir(d)
        os.chdir(d)
    return node.Node({"node_id": "n1", "key": KEY, "sensor": "energy",
                      "base_name": "urn:dev:ow:n1:", "interval": 60}, Board(), ticks)


def _node(floored=True):
    ticks = Ticks()
    n = _boot(ticks, fresh=True)
    if floored:
        _floor(n, 0)  # a fresh flash: a new epoch, and the gateway's floor for it
    wire = []
    n.write = lambda b: wire.append(link.frame_seq(bytes(b)))
    return n, ticks, wire


_gw = [0]


def _floor(n, floor, epoch=None):
    _gw[0] += 1
    body = {"epoch": n.epoch if epoch is None else epoch, "floor": floor}
    n.on_frame(link.encode_frame(n.key, link.SEQ, "n1", _gw[0], body)[:-1])


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
        await _until(lambda: len(wire) >= 4)
        await asyncio.sleep_ms(20)
        assert wire == seqs + [seqs[0]], wire  # the oldest alone, a probe
        assert n.resends == 1 and n.store.depth == 3
        ticks.ms += node.ACK_TIMEOUT_MS  # the timeout has doubled: nothing yet
        n.wake.set()
        await asyncio.sleep_ms(20)
        assert len(wire) == 4
        ticks.ms += node.ACK_TIMEOUT_MS
        n.wake.set()
        await _until(lambda: len(wire) >= 5)
        await asyncio.sleep_ms(20)
        assert wire[4:] == [seqs[0]] and n.resends == 2, wire
        _ack(n, seqs[0])  # it gets through: it and the acked one released, the window open
        await _until(lambda: len(wire) >= 6)
        assert wire[5:] == [seqs[2]] and n.store.depth == 1 and n.resends == 3, wire
        _ack(n, seqs[2])
        await _until(lambda: n.store.depth == 0)
        assert n.store.depth == 0 and n.sent == 3
        more = _emit(n, 1)  # a release resets the timeout; a new frame goes at once
        await _until(lambda: wire[-1] == more[0])
        assert n.resends == 3
    asyncio.run(_run(scenario)(n))


def test_a_dead_link_gets_one_frame_per_timeout_and_the_backlog_in_order_after():
    # the cable out: at each timeout only the oldest goes, so the cable plugged back in while
    # frames are on the wire cuts at most that one, and never leaves later frames stored before it
    n, ticks, wire = _node()
    seqs = _emit(n, 12)

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        assert wire == seqs[:8]
        wait = node.ACK_TIMEOUT_MS
        for i in range(5):
            ticks.ms += wait
            n.wake.set()
            await _until(lambda: len(wire) >= 9 + i)
            await asyncio.sleep_ms(20)
            assert wire[8:] == [seqs[0]] * (i + 1), wire[8:]
            wait = min(wait * 2, node.MAX_BACKOFF_MS)
        _ack(n, seqs[0])  # the cable is back: the backlog goes on oldest first, a window at once
        await _until(lambda: len(wire) >= 21)
        await asyncio.sleep_ms(20)
        assert wire[13:] == seqs[1:9], wire[13:]
        assert n.resends == 5 + 7 and n.store.depth == 11
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


def _bodies(n):
    """(seq, body) of every frame in the store, oldest first, as the gateway would read them."""
    out = []
    seg, off = n.store.tail_seg, n.store.tail_off
    while True:
        f = n.store.peek_after(seg, off)
        if f is None:
            return out
        seg, off = n.store.at_seg, n.store.at_off
        _, _, seq, body = link.parse_frame(link.split_frame(link.cobs_decode(bytes(f)[:-1])),
                                           lambda _: n.key)
        assert seq == n.store.seq
        out.append((seq, body))


def test_a_new_epoch_sends_nothing_until_its_floor_then_renumbers_what_it_stored():
    # issue 11: a re-flashed node (no `seq` file) starts at 0 under an id the gateway has seen
    # up to 5000; frames numbered below that would be acked as duplicates and thrown away
    n, ticks, wire = _node(floored=False)
    assert n.pending and 0 <= n.epoch < 1 << 30
    _emit(n, 5)
    before = [b for _, b in _bodies(n)]

    async def scenario(n):
        await asyncio.sleep_ms(20)
        assert wire == [], wire  # pending: no data frame goes out
        _floor(n, 9000, epoch=n.epoch ^ 1)  # a captured floor of another epoch
        await asyncio.sleep_ms(20)
        assert n.pending and n.rx_rejects == 1 and wire == []
        _floor(n, 5001)
        assert wire == [5001]  # the floor's ack, numbered above the floor
        await _until(lambda: len(wire) == 6)
        got = _bodies(n)
        assert [b for _, b in got] == before, "the stored readings go again, unaltered"
        assert [s for s, _ in got] == list(range(5002, 5007)), got
        assert wire == [5001] + list(range(5002, 5007)), wire
        assert _emit(n, 1) == [5007]
        await _until(lambda: wire[-1] == 5007)
        assert wire[-1] == 5007
        _floor(n, 10)  # a floor below us (a late copy): nothing moves
        await asyncio.sleep_ms(20)
        assert [s for s, _ in _bodies(n)] == list(range(5002, 5008))
    asyncio.run(_run(scenario)(n))
    again = _boot(Ticks())
    assert not again.pending and again.epoch == n.epoch and again.seq.next > 5008


def test_a_reboot_mid_renumbering_goes_on_where_it_stopped():
    n, ticks, wire = _node()
    _emit(n, 3)
    with open("seq", "w") as f:
        f.write("\xff\xff")  # the seq file unreadable (a worn flash): a new epoch
    n = _boot(ticks)
    seqs = _emit(n, 3)
    assert seqs[0] == 0 and n.pending and n.store.depth == 6
    _floor(n, 700)
    assert n.move_seg >= 0

    async def two(n):  # renumber two frames, then the power goes
        st = n.store
        for _ in range(2):
            f = st.peek()
            s = n.seq.take()
            st.append(renumber.reseq(n.key, f, s), s)
            st.pop()
    asyncio.run(two(n))
    n = _boot(ticks)
    assert not n.pending and n.move_seg >= 0
    asyncio.run(n.renumber())
    seqs = [s for s, _ in _bodies(n)]
    assert len(seqs) == 6 and all(s >= 700 for s in seqs) and seqs == sorted(seqs), seqs


def test_renumbering_a_store_at_its_bound_drops_nothing():
    # the copies go to the head while the tail drains: with the ring at its segment bound, a
    # new head segment must not push out the tail segment still being renumbered
    n, ticks, wire = _node()
    n.store.max_segments = 3
    i = 0
    while len(n.store.segs) < 3 or n.store.head_off < 12000:
        n.emit(1767225600 + 60 * i, [("x", "count", i)] * 20)
        i += 1
    with open("seq", "w") as f:
        f.write("?")  # unreadable: a new epoch over a full store
    n = _boot(ticks)
    n.store.max_segments = 3
    depth = n.store.depth
    _floor(n, 100000)
    asyncio.run(n.renumber())
    assert n.store.dropped == 0 and n.store.depth == depth, (n.store.dropped, depth)
    st = n.store
    seg, off, count = st.tail_seg, st.tail_off, 0
    while st.peek_after(seg, off) is not None:
        assert st.seq >= 100000
        seg, off, count = st.at_seg, st.at_off, count + 1
    assert count == depth


# --- attacks on the probe (after an ack timeout the oldest unacked goes alone) -------------
def _timeout(n, ticks, ms):
    ticks.ms += ms
    n.wake.set()


async def _quiet():
    await asyncio.sleep_ms(20)  # only before a check that nothing (more) happened


def _probing(n, ticks, wire, seqs):
    """Window seqs[:8] out on a dead link, then the first timeout: seqs[0] alone. The next
    timeout's length."""
    async def go():
        await _until(lambda: len(wire) >= 8)
        _timeout(n, ticks, node.ACK_TIMEOUT_MS)
        await _until(lambda: len(wire) >= 9)
        await _quiet()
        assert wire == seqs[:8] + [seqs[0]], wire
    return go()


def test_late_acks_of_the_window_while_the_probe_ack_is_lost_do_not_stall():
    # the gateway took 1..7 but their acks come after the timeout; the probe's ack is lost
    # twice, and the first probe's ack turns up after the second timeout
    n, ticks, wire = _node()
    seqs = _emit(n, 12)

    async def scenario(n):
        await _probing(n, ticks, wire, seqs)
        for s in seqs[1:8]:
            _ack(n, s)  # sent, not released: they count, though the probe is out alone
        await _quiet()
        assert len(wire) == 9 and n.store.depth == 12
        _timeout(n, ticks, 2 * node.ACK_TIMEOUT_MS)
        await _until(lambda: len(wire) >= 10)
        await _quiet()
        assert wire[9:] == [seqs[0]], wire[9:]
        _ack(n, seqs[0])  # the first probe's ack, after another timeout
        await _until(lambda: len(wire) >= 14)
        await _quiet()
        assert wire[10:] == seqs[8:], wire[10:]  # 0..7 released, the window goes on
        assert n.store.depth == 4 and n.resends == 2
        _ack(n, seqs[0])  # the second probe's ack: released already, nothing moves
        await _quiet()
        assert len(wire) == 14 and n.store.depth == 4 and all(a >= seqs[8] for a in n.acks), n.acks
        for s in seqs[8:]:
            _ack(n, s)
        await _until(lambda: n.store.depth == 0)
        assert len(wire) == 14 and n.sent == 12 and n.resends == 2, wire[14:]
    asyncio.run(_run(scenario)(n))


def test_new_frames_during_probing_wait_for_the_probe():
    n, ticks, wire = _node()
    seqs = _emit(n, 9)

    async def scenario(n):
        await _probing(n, ticks, wire, seqs)
        more = _emit(n, 3)
        await _quiet()
        assert len(wire) == 9, wire[9:]  # the probe alone: new frames wait
        _ack(n, seqs[0])
        await _until(lambda: len(wire) >= 17)
        await _quiet()
        assert wire[9:] == seqs[1:9], wire[9:]
        for s in seqs[1:9]:
            _ack(n, s)
        await _until(lambda: len(wire) >= 20)
        assert wire[17:] == more, wire[17:]
    asyncio.run(_run(scenario)(n))


def test_a_probe_that_ends_its_segment():
    # the probe is the last record of the tail segment: its release removes the segment and the
    # window opens on the next one
    n, ticks, wire = _node()
    st = n.store
    seqs = []
    while len(st.segs) < 2:
        seqs += _emit(n, 1)
    last = seqs[-2]  # the last of segment one; seqs[-1] opened segment two
    first_seg = st.segs[0]
    for s in seqs[:-2]:
        _ack(n, s)  # not in flight yet: ignored; release them by hand
    while st.seq != last:
        st.peek()
        if st.seq == last:
            break
        st.pop()
    assert st.peek() is not None and st.seq == last and st.tail_seg == first_seg
    tail = _emit(n, 8)

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        _timeout(n, ticks, node.ACK_TIMEOUT_MS)
        await _until(lambda: len(wire) >= 9)
        await _quiet()
        assert wire[8] == last, wire
        _ack(n, last)
        await _until(lambda: st.tail_seg != first_seg and len(wire) >= 17)
        await _quiet()
        want = [seqs[-1]] + tail[:7]
        assert wire[9:] == want, (wire[9:], want)
        assert first_seg not in st.segs
    asyncio.run(_run(scenario)(n))


def test_a_tcp_link_that_drops_before_any_ack_is_not_fed_a_window_at_each_connection():
    # a gateway that takes the connection and drops it (at capacity, restarting) before it acks
    # anything: each new connection got the whole window, and no timeout ever came (the flight
    # is cleared at each drop), so the window went again every reconnect (1 s) for ever
    n, ticks, wire = _node()
    seqs = _emit(n, 12)
    write = n.write

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        for i in range(4):
            n.write = None  # the connection dropped
            n.wake.set()
            await _until(lambda: not n.flight)
            n.write = write  # a new one
            n.wake.set()
            await _until(lambda: len(wire) >= 9 + i)
            await _quiet()
            assert wire[8:] == [seqs[0]] * (i + 1), wire[8:]  # the oldest alone, a probe
        _ack(n, seqs[0])  # this one holds: the window opens
        await _until(lambda: len(wire) >= 20)
        await _quiet()
        assert wire[12:] == seqs[1:9], wire[12:]
    asyncio.run(_run(scenario)(n))


def test_a_probe_whose_segment_a_full_store_drops():
    # probing on a dead link while the store, at its bound, drops the probe's segment: the new
    # oldest frame is the next probe, and the dead link still gets one frame per timeout
    n, ticks, wire = _node()
    st = n.store
    st.max_segments = 2
    seqs = []
    while len(st.segs) < 2:
        seqs += _emit(n, 1)
    first = seqs[:-1]  # segment one's frames
    seg1 = st.segs[0]

    async def scenario(n):
        await _probing(n, ticks, wire, seqs)
        wait = 2 * node.ACK_TIMEOUT_MS
        while st.segs[0] == seg1:  # fill segment two: segment one goes
            seqs.extend(_emit(n, 1))
            await asyncio.sleep_ms(0)
        await _until(lambda: st.dropped > 0)
        oldest = st.peek() is not None and st.seq
        assert oldest not in first and st.dropped == len(first), (oldest, st.dropped)
        await _quiet()
        assert len(wire) == 9, wire[9:]  # nothing before the timeout
        _timeout(n, ticks, wait)
        await _until(lambda: len(wire) >= 10)
        await _quiet()
        assert wire[9:] == [oldest], wire[9:]  # the new oldest alone
        _ack(n, oldest)
        await _until(lambda: len(wire) >= 18)
        await _quiet()
        assert wire[10:] == seqs[len(first) + 1:len(first) + 9], wire[10:]
        assert n.resends == 1, n.resends  # the first probe; the new oldest had not gone
    asyncio.run(_run(scenario)(n))


def test_a_new_floor_while_probing():
    # the gateway moves the epoch's numbers on (a SEQ floor above ours) while the node probes:
    # the store is renumbered, the probe goes on under the oldest frame's new number
    n, ticks, wire = _node()
    seqs = _emit(n, 10)
    before = [b for _, b in _bodies(n)]

    async def scenario(n):
        await _probing(n, ticks, wire, seqs)
        _ack(n, seqs[3])  # kept in acks: renumbering drops it
        _floor(n, 20000)
        await _until(lambda: n.move_seg < 0 and len(wire) >= 11)
        await _quiet()
        got = _bodies(n)
        assert [b for _, b in got] == before
        new = [s for s, _ in got]
        assert new[0] > 20000 and wire[10:] == [new[0]], (wire[9:], new)
        _ack(n, seqs[0])  # an ack of an old number: nothing
        await _quiet()
        assert len(wire) == 11 and n.store.depth == 10
        _ack(n, new[0])
        await _until(lambda: len(wire) >= 19)
        await _quiet()
        assert wire[11:] == new[1:9], wire[11:]
        assert n.resends == 1, n.resends  # the new numbers went once each
    asyncio.run(_run(scenario)(n))


def test_a_reboot_mid_probe_sends_a_window_once():
    # accepted (docs/node.md, "Sending"): a new boot knows nothing of the link, so its first
    # send is a window; the timeout after it probes again
    n, ticks, wire = _node()
    seqs = _emit(n, 12)

    async def first(n):
        await _probing(n, ticks, wire, seqs)
    asyncio.run(_run(first)(n))
    n = _boot(ticks)
    del wire[:]
    n.write = lambda b: wire.append(link.frame_seq(bytes(b)))

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        await _quiet()
        assert wire == seqs[:8], wire
        _timeout(n, ticks, node.ACK_TIMEOUT_MS)
        await _until(lambda: len(wire) >= 9)
        await _quiet()
        assert wire[8:] == [seqs[0]] and n.resends == 1, (wire[8:], n.resends)
    asyncio.run(_run(scenario)(n))


def test_a_tcp_link_down_and_up_while_probing_probes_on_the_new_connection():
    n, ticks, wire = _node()
    seqs = _emit(n, 12)
    write = n.write

    async def scenario(n):
        await _probing(n, ticks, wire, seqs)
        n.write = None
        n.wake.set()
        await _until(lambda: not n.flight)
        n.write = write
        n.wake.set()
        await _until(lambda: len(wire) >= 10)
        await _quiet()
        assert wire[9:] == [seqs[0]], wire[9:]  # the probe again, alone
        _ack(n, seqs[1])  # the old connection's late ack of a window frame still counts
        _ack(n, seqs[0])
        await _until(lambda: len(wire) >= 18)
        await _quiet()
        assert wire[10:] == seqs[2:10] and n.store.depth == 10, wire[10:]
        assert n.resends == 2 + 6, n.resends  # the probes, and 2..7 of the window again
    asyncio.run(_run(scenario)(n))


class Gateway:
    """The gateway as the node sees it: it takes frames off the wire (unless the link loses
    them), keeps the first copy of each sequence number and acks every copy it takes."""

    def __init__(self, n, wire):
        self.n = n
        self.wire = wire  # every frame written, as its seq
        self.took = []  # first copies, in the order they came
        self.acks = []  # acks on their way back
        self.lose = lambda seq: False  # the link loses this frame
        self.lose_ack = lambda seq: False

    def write(self, b):
        seq = link.frame_seq(bytes(b))
        self.wire.append(seq)
        if self.lose(seq):
            return
        if seq not in self.took:
            self.took.append(seq)
        if not self.lose_ack(seq):
            self.acks.append(seq)

    def deliver(self):
        while self.acks:
            _ack(self.n, self.acks.pop(0))


def _released(n):
    """The store's releases, in order."""
    st = n.store
    out = []
    pop = st.pop

    def counted():
        if st.peek() is not None:
            out.append(st.seq)
        pop()
    st.pop = counted
    return out


def test_a_live_link_losing_one_frame_mid_window_releases_in_order_and_delivers_each_once():
    # accepted (docs/node.md, "Sending"): the gateway takes the lost frame after the window's
    # later ones; each reading still reaches it once, and the store releases oldest first
    n, ticks, wire = _node()
    gw = Gateway(n, wire)
    n.write = gw.write
    released = _released(n)
    seqs = _emit(n, 20)
    lost = [seqs[3]]
    gw.lose = lambda s: s in lost and not lost.remove(s)  # the first copy only

    async def scenario(n):
        await _until(lambda: len(wire) >= 8)
        gw.deliver()  # 0..2 released, 8..10 go; 3 holds the store
        await _until(lambda: len(wire) >= 11)
        gw.deliver()
        await _quiet()
        assert wire == seqs[:11] and released == seqs[:3], (wire, released)
        _timeout(n, ticks, node.ACK_TIMEOUT_MS)
        await _until(lambda: len(wire) >= 12)
        await _quiet()
        assert wire[11:] == [seqs[3]], wire[11:]  # the probe
        await _drain(n, gw)
        assert released == seqs, released
        assert sorted(gw.took) == seqs and len(gw.took) == len(seqs)
        assert gw.took[:11] == seqs[:3] + seqs[4:11] + [seqs[3]], gw.took
        assert len(wire) == len(seqs) + 1 and n.resends == 1, (wire, n.resends)
    asyncio.run(_run(scenario)(n))


async def _drain(n, gw, ms=30000):
    t0 = time.ticks_ms()
    while n.store.depth:
        assert time.ticks_diff(time.ticks_ms(), t0) < ms, "timed out"
        gw.deliver()
        await asyncio.sleep_ms(2)


class Lcg:
    def __init__(self, seed):
        self.x = seed

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 8) % n


def test_a_lossy_flapping_link_never_stalls_floods_or_loses_a_frame():
    # frames and acks lost at random, acks late and out of order, the link dropped and back,
    # dead stretches, new frames all along; then a good link: everything drains
    for seed in (1, 2, 3, 4, 5, 6):
        r = Lcg(seed)
        n, ticks, wire = _node()
        gw = Gateway(n, wire)
        write = n.write = gw.write
        released = _released(n)
        seqs = []
        dead = [False]
        gw.lose = lambda s: dead[0] or r.below(4) == 0
        gw.lose_ack = lambda s: dead[0] or r.below(4) == 0
        wait = [node.ACK_TIMEOUT_MS]

        async def scenario(n):
            windows = 0  # reconnects of a dead stretch that wrote more than one frame
            for step in range(120):
                if dead[0]:
                    await _quiet()  # what the last step set going is written before this one
                was = len(wire)
                k = r.below(8)
                if k == 0:
                    seqs.extend(_emit(n, 1 + r.below(3)))
                elif k == 1 and gw.acks:
                    i = r.below(len(gw.acks))
                    _ack(n, gw.acks.pop(i))  # one ack, out of order
                elif k == 2:
                    gw.deliver()
                elif k == 3:
                    if n.write is None:
                        n.write = write
                    else:
                        n.write = None
                        del gw.acks[:]  # the connection's acks die with it
                    n.wake.set()
                elif k == 4:
                    dead[0] = not dead[0]
                    windows = 0
                else:
                    ticks.ms += node.MAX_BACKOFF_MS  # past any timeout
                    n.wake.set()
                await asyncio.sleep_ms(1)
                if dead[0]:  # nothing released: one frame per timeout, and after the
                    await _quiet()  # first connection's window, one per connection
                    burst = len(wire) - was
                    if k == 3 and burst > 1:
                        windows += 1
                    assert k < 3 or k == 4 or (k == 3 and windows <= 1) or burst <= 1, \
                        (seed, step, k, wire[was:])
            dead[0] = False
            gw.lose = gw.lose_ack = lambda s: False
            n.write = write
            n.wake.set()
            t0 = time.ticks_ms()
            while n.store.depth:
                assert time.ticks_diff(time.ticks_ms(), t0) < 30000, (seed, "stalled", n.flight)
                gw.deliver()
                await asyncio.sleep_ms(2)
                if not gw.acks:
                    ticks.ms += node.MAX_BACKOFF_MS
                    n.wake.set()
                    await asyncio.sleep_ms(2)
        asyncio.run(_run(scenario)(n))
        assert released == seqs, (seed, released, seqs)
        assert sorted(gw.took) == seqs, (seed, gw.took)
        assert n.resends == len(wire) - len(set(wire)), (seed, n.resends, wire)


def test_a_gateway_slower_than_the_ack_timeout_drains_without_resending_each_window():
    # every ack comes 1.5 timeouts after its frame (a loaded gateway, a slow link): the acks of
    # the window's later frames come while the probe is out, and must count
    n, ticks, wire = _node()
    late = node.ACK_TIMEOUT_MS * 3 // 2
    due = []  # (tick, seq) of acks on their way
    n.write = lambda b: (wire.append(link.frame_seq(bytes(b))),
                         due.append((ticks.ms + late, wire[-1])))
    seqs = _emit(n, 40)

    async def scenario(n):
        t0 = time.ticks_ms()
        while n.store.depth:
            assert time.ticks_diff(time.ticks_ms(), t0) < 30000, ("stalled", n.store.depth)
            ticks.ms += 100
            while due and due[0][0] <= ticks.ms:
                _ack(n, due.pop(0)[1])
            n.wake.set()
            await asyncio.sleep_ms(2)
        print("slow gateway: %d writes for %d frames" % (len(wire), len(seqs)))
        assert len(wire) <= len(seqs) * 3 // 2, (len(wire), n.resends)
    asyncio.run(_run(scenario)(n))


import mptest  # noqa: E402

mptest.run(globals())
