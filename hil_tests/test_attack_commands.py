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
