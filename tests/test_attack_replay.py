"""A network neighbour (no key) replaying captured frames against the real Gateway, and a key
holder's hello: docs/protocol.md, threat model ("A replay never moves the node's downlink ...
remembered across restarts"), and link.cddl's seq-floor bound."""

import asyncio

import pytest

from sensorcity.gateway.config import Config
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.registry import NodeEntry, Registry
from sensorcity.gateway.service import Gateway
from sensorcity.protocol import frames
from inprocess import run

pytestmark = pytest.mark.adversarial
KEY = b"\x07" * 32
BASE = "urn:dev:ops:n1:"


@pytest.fixture
def cfg(tmp_path):
    reg = tmp_path / "nodes.json"
    Registry.add(reg, NodeEntry("n1", KEY, BASE, "energy"))
    return Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool=str(tmp_path / "s"),
                  nodes=str(reg), metrics="")



def wire(kind: int, seq: int, body) -> bytes:
    return frames.encode(KEY, kind, "n1", seq, body)[:-1]


def hello(epoch=None) -> dict:
    body = {"fw": "t", "boot": 1, "kind": "energy", "bn": BASE, "interval": 60}
    if epoch is not None:
        body["epoch"] = epoch
    return body


def test_a_replayed_control_frame_after_a_gateway_restart_does_not_take_the_downlink(cfg):
    """The node's last frame before the gateway restarts is a control frame (its ack of a
    command, seq 6, above its data 1..5). Control seqs live in memory only: after the restart
    a neighbour's replay of that ack on its own connection is accepted, and being above every
    data seq in the spool it moves the node's downlink (commands, time) to the neighbour."""
    node = Link("node", lambda b: None)
    gw = Gateway(cfg)

    async def first():
        assert await gw.handle(node, wire(frames.HELLO, 0, hello()))
        for s in range(1, 6):
            await gw.handle(node, wire(frames.DATA, s, [{-2: BASE, -3: 1795000000 + 60 * s,
                                                         0: "x", 1: "W", 2: s}]))
        await asyncio.wait_for(gw.commit.queue.join(), 10)
        assert await gw.handle(node, wire(frames.ACK, 6, 1))  # the node acks a command
    run(gw, first)
    captured = wire(frames.ACK, 6, 1)
    gw.spool.close()

    again = Gateway(cfg)
    neighbour = Link("neighbour", lambda b: None)

    async def second():
        await again.handle(neighbour, captured)
        assert again.downlink.links.get("n1") is not neighbour, \
            "a replayed ack moved the node's downlink to the neighbour's connection"
    run(again, second)


def test_the_gateway_never_sends_a_floor_outside_link_cddl(cfg):
    """link.cddl: seq-floor's floor is `uint .lt 1072693248` (2^30 - 2^20), and the node refuses
    one at or above it. A key holder's hello at seq 2^32 - 1 (inside the frame bounds) makes the
    gateway answer every later hello of that id, the real node's too, with floor 2^32: a frame
    outside the gateway's own CDDL, which leaves the re-flashed node pending for ever."""
    gw = Gateway(cfg)
    sent: list[bytes] = []
    link = Link("thief", sent.append)

    async def scenario():
        # refused (`schema`): no floor link.cddl allows goes above a hello's seq this high
        assert await gw.handle(link, wire(frames.HELLO, 2**32 - 1, hello(epoch=5))) is False
        assert await gw.handle(link, wire(frames.HELLO, 0, hello(epoch=6)))
        for _ in range(200):  # the downlink waits for its numbers' reservation (a worker thread)
            if len(floors()) == 2:
                break
            await asyncio.sleep(0.05)

    def floors():
        return [f.body["floor"] for f in (frames.decode(b[:-1], lambda n: KEY) for b in sent)
                if f.kind == frames.SEQ]
    run(gw, scenario)
    floors = floors()
    assert floors and all(0 <= f < 2**30 - 2**20 for f in floors), floors


def test_one_captured_hello_replayed_does_not_make_the_gateway_resend_commands_at_will(cfg):
    """A re-flashed node's first hello (epoch 22, seq 0, below the floor it was handed) stays
    acceptable for ever: the gateway takes it as the node "still pending". Each replay by a
    neighbour, on its own connection, makes the gateway resend every pending command to the
    real node's link under a new downlink number (and the node writes `gwseq` to flash for each
    one it takes): the command resend interval (cmd_resend, 5 s) no longer bounds them."""
    gw = Gateway(cfg)
    to_node: list[bytes] = []
    node = Link("node", to_node.append)
    neighbour = Link("neighbour", lambda b: None)
    captured = wire(frames.HELLO, 0, hello(epoch=22))

    def cmds():
        return [f for f in (frames.decode(b[:-1], lambda n: KEY) for b in to_node)
                if f.kind == frames.CMD]

    async def scenario():
        assert await gw.handle(node, captured)                       # pending: floor 0 + 1
        assert await gw.handle(node, wire(frames.HELLO, 64, hello(epoch=22)))  # took its floor
        gw.commands.submit("sensorcity/gw/cmd/n1", b'{"op": "interval", "value": 30}')
        replays = [await gw.handle(neighbour, captured) for _ in range(50)]
        for _ in range(200):  # the downlink waits for its numbers' reservation (a worker thread)
            if len(cmds()) > 2:
                break
            await asyncio.sleep(0.05)
        assert replays.count(True) == 0 and len(cmds()) <= 2, \
            f"{replays.count(True)} replays of one hello accepted, {len(cmds())} CMD frames " \
            "sent to the node for one command"
    run(gw, scenario)
