"""Attacks on the gateway's HTTP listener (the page, /metrics, /healthz), black-box on a real
`sensorcity gateway run`: whoever reaches the listener must not take descriptors the data path
needs (docs/gateway.md, "TCP links": 96 kept for the spool, serial, HTTP clients, MQTT)."""

import resource
import socket

import pytest

from rigs.gateway import Gateway, wait_until

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
