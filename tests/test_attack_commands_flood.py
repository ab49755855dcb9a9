"""A flood on the command topic (an operator's runaway script, or anyone the broker lets publish
there) against the gateway's Commands: docs/gateway.md, commands wait for their node's ack for up
to 24 h (TTL), at most 1000 of them (PENDING_MAX), "all nodes together"."""

import pytest

from sensorcity.gateway.commands import Commands

pytestmark = pytest.mark.adversarial


def test_a_command_flood_for_one_absent_node_does_not_lock_out_the_others():
    """1000 commands for n1, which is away (no link): they wait a day. Meanwhile the operator's
    command for n2, connected and answering, is refused ("1000 commands wait already")."""
    replies, sent = [], []

    def send(node, body):
        if node != "n2":
            return None  # n1 has no link
        sent.append(body)
        return len(sent)
    c = Commands("p/gw", send, lambda t, p: replies.append((t, p)), lambda n: n in ("n1", "n2"))
    for _ in range(1000):
        c.submit("p/gw/cmd/n1", b'{"op": "reboot"}')
    c.submit("p/gw/cmd/n2", b'{"op": "interval", "value": 30}')
    assert sent == [{"op": "interval", "value": 30}], replies[-1]
