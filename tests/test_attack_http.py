"""Attacks on the gateway's HTTP listener (the page, /metrics, /healthz), black-box on a real
`sensorcity gateway run`: whoever reaches the listener must not take descriptors the data path
needs (docs/gateway.md, "TCP links": 96 kept for the spool, serial, HTTP clients, MQTT)."""

import json
import re
import resource
import socket
import subprocess
import time

import pytest

from rigs.gateway import Gateway, wait_until
from sensorcity.protocol import frames

pytestmark = pytest.mark.adversarial
NO_BROKER = ["mqtt://127.0.0.1:9"]


def test_slowloris_on_the_http_listener_does_not_starve_the_node_links(tmp_path):
    """Connections to the HTTP listener, each with half a request line and never the rest
    (slowloris), as many as it takes: the listener has no bound and no header timeout, so they
    take every descriptor the gateway kept, and a node connecting over TCP is never accepted:
    its frame is not acked."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))
    gw = Gateway(tmp_path, NO_BROKER, preexec_fn=low_limit)
    held = []
    try:
        for _ in range(400):  # until the listener's backlog is full too
            try:
                s = socket.create_connection(("127.0.0.1", gw.http), timeout=2)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
                held.append(s)
            except OSError:
                break
        node = gw.node()
        node.send(1)
        wait_until(lambda: 1 in node.acked, 15, "the node's ack while HTTP clients hang")
        node.close()
    finally:
        for s in held:
            s.close()
        gw.stop()


def test_malformed_http_requests_do_not_write_tracebacks_to_the_log(tmp_path):
    """Anyone reaching the listener sends requests aiohttp's parser refuses (a header over 8 KiB,
    Content-Length with Transfer-Encoding, too many headers): each is answered 400, and each
    writes an ERROR with a full traceback to the gateway's log (the journal, on an SD card): a
    log storm at the client's will, where the TCP link counts and logs once a minute."""
    gw = Gateway(tmp_path, NO_BROKER)
    bad = [b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10000 + b"\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
           b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(200)) + b"\r\n"]
    try:
        for i in range(60):
            with socket.create_connection(("127.0.0.1", gw.http), timeout=5) as s:
                s.sendall(bad[i % 3])
                assert s.recv(64).startswith(b"HTTP/1.0 400")
        status, _ = gw.get("/healthz")
        assert status == 200
        log = gw.output()
        assert "Traceback" not in log and len(log) < 20_000, f"{len(log)} bytes: {log[-800:]}"
    finally:
        gw.stop()


def raw_get(port: int, path: str, headers: bytes = b"Host: 127.0.0.1\r\n") -> tuple[int, bytes]:
    """One request as the bytes given (no client library to tidy its headers), and the status
    and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (path.encode(), headers))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"text/event-stream" in data and b"\ndata: " in data and data.endswith(b"\n"):
                break   # an event stream's first snapshot is enough
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_dns_rebinding_cannot_read_the_loopback_listener(tmp_path):
    """A browser on the gateway's machine (the Pi's desktop, a laptop with an ssh tunnel) visits
    a site whose name then resolves to 127.0.0.1 (DNS rebinding). Its script's requests reach the
    loopback listener as same-origin requests for that name, so the browser lets it read the
    answers: the snapshot (node names, links, peers), the metrics, the stream. They carry that
    name in Host; the listener must answer only requests addressed to a loopback name."""
    gw = Gateway(tmp_path, NO_BROKER)
    try:
        for path in ("/", "/status.json", "/events", "/metrics", "/healthz"):
            for host in (b"evil.example:%d" % gw.http, b"evil.example", b"192.0.2.7:%d" % gw.http,
                         b"localhost.evil.example", b"127.0.0.1.evil.example:%d" % gw.http,
                         b"gw.localhost:%d" % gw.http):
                status, body = raw_get(gw.http, path, b"Host: " + host + b"\r\n")
                assert status == 421, (path, host, status, body[:200])
                assert b"gw1" not in body and b"sensorcity_gateway" not in body
            # the names a person or Prometheus on this machine uses still work
            for host in (b"127.0.0.1:%d" % gw.http, b"localhost:%d" % gw.http, b"LocalHost",
                         b"[::1]:%d" % gw.http, b"127.0.0.2"):
                assert raw_get(gw.http, path, b"Host: " + host + b"\r\n")[0] == 200, (path, host)
    finally:
        gw.stop()


def deaf_streams(port: int, n: int) -> list[socket.socket]:
    """`n` clients that ask for the event stream and never read it (a small receive window)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        socks.append(s)
    return socks


def test_viewers_that_stop_reading_do_not_keep_the_page_from_others(tmp_path):
    """The event streams' cap (16) taken by clients that send a request and then never read (a
    phone gone out of reach, a hostile user on the machine): once the socket buffers are full a
    stream's writes wait for ever (a peer that does not read keeps its TCP connection alive), so
    the slots stay taken and every other viewer gets 503 for good. A stream whose viewer takes
    nothing for a while must be hung up. A site of 200 nodes: the snapshots are large."""
    gw = Gateway(tmp_path, NO_BROKER, nodes=[f"n{i}" for i in range(200)])
    held = []
    try:
        held += deaf_streams(gw.http, 16)
        wait_until(lambda: raw_get(gw.http, "/events")[0] == 503, 15, "the streams' cap taken")
        wait_until(lambda: raw_get(gw.http, "/events")[0] == 200, 90,
                   "a stream for a viewer that reads, beside 16 that do not")
        assert gw.get("/healthz")[0] == 200
        assert "Traceback" not in gw.output(), gw.output()[-2000:]
    finally:
        for s in held:
            s.close()
        gw.stop()


def unsent(port: int) -> list[int]:
    """Bytes queued and not yet acked on each established socket of the listener on `port`
    (`ss -m`: skmem w, the kernel's write queue)."""
    out = subprocess.run(["ss", "-tnmH", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return [int(m) for m in re.findall(r"skmem:\([^)]*\bw(\d+)", out)]


def test_viewers_that_stop_reading_hold_little_kernel_memory(tmp_path):
    """Streams whose clients never read fill the kernel's send buffer before they are hung up;
    Linux grows a socket's buffer up to tcp_wmem's maximum (4 MiB here) for a peer that does not
    read: 16 such streams, 64 MiB of the gateway's memory (the unit's MemoryMax counts socket
    buffers). The node links' sockets keep 32 KiB; the listener's must be bounded too."""
    gw = Gateway(tmp_path, NO_BROKER, nodes=[f"n{i}" for i in range(200)])
    held, most = [], 0
    try:
        held += deaf_streams(gw.http, 4)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:   # until the gateway hangs them up
            queued = unsent(gw.http)
            if not queued:
                break
            most = max(most, *queued)
            time.sleep(0.5)
        assert not unsent(gw.http), "the streams were not hung up"
        assert most <= 512 * 1024, f"{most} bytes unsent on one stream's socket"
    finally:
        for s in held:
            s.close()
        gw.stop()


def test_head_requests_for_the_stream_take_no_slot(tmp_path):
    """HEAD /events answered as a stream: its writes go nowhere, so nothing ever waits on the
    client, and 16 connections that sent it and stay open hold every stream slot for as long as
    they like, at no cost to whoever holds them: 503 for every viewer. A HEAD gets the headers,
    and is done."""
    gw = Gateway(tmp_path, NO_BROKER)
    held = []
    try:
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", gw.http), timeout=10)
            s.sendall(b"HEAD /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            held.append(s)
        assert raw_get(gw.http, "/events")[0] == 200
    finally:
        for s in held:
            s.close()
        gw.stop()


def test_forged_node_names_do_not_grow_the_page_or_the_metrics(tmp_path):
    """Thousands of forged frames, each claiming another node name (64 characters, the longest
    the page keeps, and longer): the snapshot keeps one row per registered node and the last 10
    rejections, the metrics count by reason and link, so neither grows with the names."""
    gw = Gateway(tmp_path, NO_BROKER)
    try:
        sizes = []
        for round_ in range(2):
            with socket.create_connection(("127.0.0.1", gw.tcp), timeout=10) as s:
                for i in range(1500):
                    name = f"forged-{round_}-{i:05d}-" + "x" * 100
                    s.sendall(frames.encode(bytes(32), frames.DATA, name[:32 + i % 80], 1, []))
                wait_until(lambda: json.loads(gw.get("/status.json")[1])["rejections"]["total"]
                           >= 1500 * (round_ + 1), 30, "the forged frames counted")
            sizes.append((len(gw.get("/status.json")[1]), len(gw.get("/metrics")[1])))
        snap = json.loads(gw.get("/status.json")[1])
        assert [n["node"] for n in snap["nodes"]] == ["n1"]
        assert len(snap["rejections"]["recent"]) == 10
        assert all(len(r["node"]) <= 64 for r in snap["rejections"]["recent"])
        assert all(abs(b - a) < 200 for a, b in zip(*sizes)), sizes  # counts change, not rows
        assert "forged-" not in gw.get("/metrics")[1]
    finally:
        gw.stop()
