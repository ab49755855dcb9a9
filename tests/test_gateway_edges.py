"""Issue 11 at the gateway's edges, each on a real `sensorcity gateway run` (no broker needed:
frames are acked after the spool commit): idle TCP connections beyond the file limit, a key
holder's out-of-range sequence number, a replayed frame on another connection, a peer that
never reads its acks."""

import re
import resource
import socket
import subprocess
import time

import pytest

from rigs.gateway import Gateway, wait_until
from sensorcity.protocol import frames

pytestmark = pytest.mark.adversarial
NO_BROKER = ["mqtt://127.0.0.1:9"]   # refused at once: the uplink retries, the data path runs


def metric(gw, name: str, labels: str = "") -> float:
    status, text = gw.get("/metrics")
    assert status == 200
    m = re.search(rf"^sensorcity_gateway_{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def downlink_kinds(sock: socket.socket, seconds: float, key: bytes) -> list[int]:
    """The kinds of the frames a connection receives in the next `seconds`."""
    sock.settimeout(0.2)
    deframer, kinds = frames.Deframer(), []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        if not data:
            break
        kinds += [frames.decode(c, lambda n: key).kind for c in deframer.feed(data)]
    return kinds


def test_idle_connections_beyond_the_file_limit_lock_out_no_node(tmp_path):
    """Issue 11 item 6: more idle connections than the gateway has descriptors for. The file
    limit is lowered in the gateway's process (160 descriptors: room for 64 links)."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))
    gw = Gateway(tmp_path, NO_BROKER, preexec_fn=low_limit)
    idle = []
    try:
        for _ in range(250):
            idle.append(socket.create_connection(("127.0.0.1", gw.tcp), timeout=10))
        node = gw.node()
        node.send(1)
        wait_until(lambda: 1 in node.acked, 15, "the node's ack")
        status, body = gw.get("/healthz")
        assert status == 200, body
        assert metric(gw, "tcp_links_max") == 160 - 96
        assert metric(gw, "tcp_links_open") <= 64
        assert metric(gw, "tcp_evicted_total") >= 250 - 64
        node.send(2)                 # the node keeps its place while idle ones come and go
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", gw.tcp), timeout=10))
        wait_until(lambda: 2 in node.acked, 15, "the node's second ack")
        log = gw.output()
        assert "Traceback" not in log and len(log) < 20_000, log[-3000:]
        node.close()
    finally:
        for s in idle:
            s.close()
        gw.stop()


def test_replayers_at_capacity_make_room_and_the_node_keeps_its_link(tmp_path):
    """Issue 11 item 6: connections replaying a captured frame have a valid frame, but no
    node's newest: at capacity they make room, the node's own link stays."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))
    gw = Gateway(tmp_path, NO_BROKER, preexec_fn=low_limit)
    replayers = []
    try:
        node = gw.node()
        node.send(1)
        wait_until(lambda: 1 in node.acked, 15, "the node's ack")
        captured = frames.encode(gw.keys["n1"], frames.DATA, "n1", 1,
                                 [{-2: "urn:dev:ops:n1:", -3: int(time.time()), 0: "x", 2: 1}])
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", gw.tcp), timeout=10)
            s.sendall(captured)
            replayers.append(s)
            time.sleep(0.01)
        node.send(2)
        wait_until(lambda: 2 in node.acked, 15, "the node's second ack")
        assert metric(gw, "tcp_refused_total") == 0
        assert metric(gw, "tcp_links_open") <= 64
        node.close()
    finally:
        for s in replayers:
            s.close()
        gw.stop()


def test_a_connection_that_sends_no_valid_frame_is_closed(tmp_path):
    """Issue 11 item 6: a link earns its place with a valid frame within tcp_auth_timeout, and
    has TCP keepalive on (seen in the kernel's socket table, `ss -o`)."""
    gw = Gateway(tmp_path, NO_BROKER, tcp_auth_timeout=2.0)
    try:
        node = gw.node()
        node.send(1)
        wait_until(lambda: 1 in node.acked, 10, "the node's ack")
        silent = socket.create_connection(("127.0.0.1", gw.tcp), timeout=15)
        garbage = socket.create_connection(("127.0.0.1", gw.tcp), timeout=15)
        began = time.monotonic()
        ss = subprocess.run(["ss", "-tno", "state", "established", f"( sport = :{gw.tcp} )"],
                            capture_output=True, text=True).stdout
        assert ss.count("keepalive") == 3, ss
        with pytest.raises(OSError):                 # garbage does not keep a link open
            while time.monotonic() - began < 15:
                garbage.sendall(b"\x13garbage\x00")
                time.sleep(0.05)
        assert silent.recv(10) == b""                # nor does silence
        assert metric(gw, "tcp_timeouts_total") == 2
        time.sleep(2.5)
        node.send(2)                                 # the node that earned its place stays
        wait_until(lambda: 2 in node.acked, 10, "the node's second ack")
        node.close()
    finally:
        gw.stop()


@pytest.mark.parametrize("seq", [2**32, 2**63, 2**64])
def test_a_key_holder_cannot_stop_the_gateway(tmp_path, seq):
    """Issue 11 item 7: a valid tag on a sequence number past any node's (SQLite's integers end
    at 2^63 - 1): counted as `schema`, not acked, and the gateway runs on for every node."""
    gw = Gateway(tmp_path, NO_BROKER, nodes=("n1", "n2"))
    try:
        bad, good = gw.node("n1"), gw.node("n2")
        bad.send(seq)
        good.send(1)
        wait_until(lambda: 1 in good.acked, 10, "the other node's ack")
        bad.send(5)
        wait_until(lambda: 5 in bad.acked, 10, "the key holder's next valid frame's ack")
        assert seq not in bad.acked
        assert gw.proc.poll() is None
        assert metric(gw, "frames_rejected_total", '{reason="schema"}') == 1
        bad.close()
        good.close()
    finally:
        gw.stop()


def test_a_replayed_frame_does_not_steal_the_downlink(tmp_path):
    """Issue 11 item 9: a captured data frame replayed on another connection is acked there (it
    is a duplicate) but time frames keep going to the node's own connection."""
    gw = Gateway(tmp_path, NO_BROKER, time_every=0.5)
    key = gw.keys["n1"]
    try:
        node = gw.node()
        captured = frames.encode(key, frames.DATA, "n1", 7, [{-2: "urn:dev:ops:n1:",
                                                              -3: int(time.time()), 0: "x",
                                                              2: 1}])
        node.sock.sendall(captured)
        wait_until(lambda: 7 in node.acked, 10, "the node's ack")
        attacker = socket.create_connection(("127.0.0.1", gw.tcp), timeout=10)
        attacker.sendall(captured)
        kinds = downlink_kinds(attacker, 2.5, key)
        assert frames.ACK in kinds                   # acked as a duplicate, no harm
        assert frames.TIME not in kinds, kinds       # but the node's time is not sent here
        before = len(node.downlink)
        time.sleep(1.2)
        assert len(node.downlink) > before           # it still goes to the node
        attacker.close()
        node.close()
    finally:
        gw.stop()


def test_a_peer_that_never_reads_its_acks_is_closed(tmp_path):
    """Issue 11 item 10: one valid frame replayed in a loop by a peer that reads nothing. Its
    acks would pile up in the gateway's memory; the link is closed once WRITE_MAX waits."""
    gw = Gateway(tmp_path, NO_BROKER)
    key = gw.keys["n1"]
    wire = frames.encode(key, frames.DATA, "n1", 1, [{-2: "urn:dev:ops:n1:",
                                                      -3: int(time.time()), 0: "x", 2: 1}])
    try:
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.settimeout(10)
        peer.connect(("127.0.0.1", gw.tcp))
        sent, closed = 0, False
        deadline = time.monotonic() + 60
        while not closed and time.monotonic() < deadline:
            try:
                peer.sendall(wire * 50)
                sent += 50
            except socket.timeout:                   # the gateway's backpressure: go on
                continue
            except ConnectionError:                  # reset by the gateway
                closed = True
            time.sleep(0.01)
        assert closed, f"still open after {sent} frames"
        wait_until(lambda: metric(gw, "link_write_overflows_total",
                                  '{link="tcp:127.0.0.1"}') == 1, 10, "the counter")
        node = gw.node()                             # and everyone else is served
        node.send(2)
        wait_until(lambda: 2 in node.acked, 10, "the node's ack")
        print(f"peer closed after {sent} frames")
        node.close()
    finally:
        gw.stop()


def test_the_committer_survives_an_unexpected_error(tmp_path, monkeypatch):
    """Issue 11 item 7: an exception nobody foresaw in one commit (here injected into
    Spool.store) is logged and counted; that batch is not acked, and the next one is."""
    import asyncio

    from sensorcity.gateway.config import Config
    from sensorcity.gateway.service import Gateway as Service
    from sensorcity.protocol import senml

    (tmp_path / "nodes.json").write_text("")
    gw = Service(Config(gateway_id="gw", brokers=NO_BROKER, spool=str(tmp_path / "s"),
                        nodes=str(tmp_path / "nodes.json"), metrics=""))
    real_store, calls = gw.spool.store, []

    def store(entries):
        calls.append(len(entries))
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real_store(entries)
    monkeypatch.setattr(gw.spool, "store", store)
    acked = []
    monkeypatch.setattr(gw.commit, "ack", lambda link, frame: acked.append(frame.seq))
    records = [senml.Record("urn:x:q", None, 1, 1795000000.0)]

    async def main():
        committer = asyncio.create_task(gw.commit.run())
        await gw.commit.put(None, frames.Frame(frames.DATA, "n1", 1, None), records)
        await asyncio.wait_for(gw.commit.queue.join(), 10)
        assert acked == [] and gw.commit.stats.errors == 1
        await gw.commit.put(None, frames.Frame(frames.DATA, "n1", 2, None), records)
        await asyncio.wait_for(gw.commit.queue.join(), 10)
        assert acked == [2] and not committer.done()
        committer.cancel()

    asyncio.run(main())
    gw.spool.close()
