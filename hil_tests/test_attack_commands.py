"""The operator's command topic, black-box: a real mosquitto, a real `sensorcity gateway run`.
docs/gateway.md: a malformed command gets a `rejected` reply on `.../cmd/<node>/ack`; house
rule: bad input is a clear error or a counted rejection, never a traceback."""

import json

import pytest

from rigs.gateway import Gateway, Mosquitto, Subscriber, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.adversarial]


def test_a_deeply_nested_command_payload_is_rejected_with_a_reply(tmp_path):
    """`[` x 100000: json.loads raises RecursionError, which commands.submit does not take for
    "not JSON": it escapes to the uplink's catch-all, which logs a traceback, and the operator
    gets no reply at all."""
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/gw1/cmd/+/ack"])
    gw = Gateway(tmp_path, [broker.url])
    try:
        wait_until(lambda: "connected" in gw.output(), 15, "the gateway's broker connection")
        sub.publish("sensorcity/v1/gw1/cmd/n1", b"[" * 100000)
        sub.publish("sensorcity/v1/gw1/cmd/n1", b'{"op": "fly"}')  # a plain bad one after it
        wait_until(lambda: any(json.loads(m[2]).get("error", "").startswith("unknown op")
                               for m in sub.on("/ack")), 15, "the second command's reply")
        replies = [json.loads(m[2]) for m in sub.on("/ack")]
        assert len(replies) == 2 and all(r["status"] == "rejected" for r in replies), replies
        assert "Traceback" not in gw.output(), gw.output()[-1500:]
    finally:
        gw.stop()
        sub.close()
        broker.stop()


def test_a_command_waiting_for_its_node_survives_a_gateway_restart(tmp_path):
    """docs/gateway.md: "A command waits 24 h for its node, then is answered `expired`". The
    node is away; the gateway restarts (an upgrade, a SIGTERM): the waiting command is in memory
    only, so it is gone without a reply, and the node, when it comes, never gets it."""
    from sensorcity.protocol import frames
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker, ["sensorcity/v1/gw1/cmd/+/ack"])
    gw = Gateway(tmp_path, [broker.url])
    try:
        wait_until(lambda: "connected" in gw.output(), 15, "the gateway's broker connection")
        sub.publish("sensorcity/v1/gw1/cmd/n1", b'{"op": "interval", "value": 30, "id": "c1"}')
        wait_until(lambda: "command for n1" in gw.output(), 15, "the command taken")
    finally:
        gw.stop()
    (tmp_path / "gateway.log").rename(tmp_path / "gateway-1.log")
    gw = Gateway(tmp_path, [broker.url])
    try:
        node = gw.node()
        node.send(1, kind=frames.HELLO, value={"fw": "t", "boot": 1, "kind": "energy",
                                               "bn": "urn:dev:ops:n1:", "interval": 60})
        wait_until(lambda: 1 in node.acked, 15, "the hello's ack")
        got = lambda: [f for f in node.downlink if f.kind == frames.CMD]  # noqa: E731
        try:
            wait_until(lambda: got() or sub.on("/ack"), 10, "the command, or a reply")
        except AssertionError:
            pass
        assert got() or sub.on("/ack"), "the waiting command vanished in the restart: " \
            "never sent to the node, never answered"
        node.close()
    finally:
        gw.stop()
        sub.close()
        broker.stop()
