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
    (slowloris), as many as it takes: the listener has no bound and no header timeout, so they take every descriptor
    the gateway kept, and a node connecting over TCP is never accepted: its frame not acked."""
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
