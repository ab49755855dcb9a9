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

pytestmark = pytest.mark.adversarial
KEY = b"\x07" * 32
BASE = "urn:dev:ops:n1:"


@pytest.fixture
def cfg(tmp_path):
    reg = tmp_path / "nodes.json"
    Registry.add(reg, NodeEntry("n1", KEY, BASE, "energy"))
    return Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool=str(tmp_path / "s"),
                  nodes=str(reg), metrics="")


def run(gw, scenario):
    async def main():
        task = asyncio.create_task(gw.committer())
        try:
            await scenario()
        finally:
            task.cancel()
    asyncio.run(main())


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
        await asyncio.wait_for(gw.queue.join(), 10)
        assert await gw.handle(node, wire(frames.ACK, 6, 1))  # the node acks a command
    run(gw, first)
    captured = wire(frames.ACK, 6, 1)
    gw.spool.close()

    again = Gateway(cfg)
    neighbour = Link("neighbour", lambda b: None)

    async def second():
        await again.handle(neighbour, captured)
        assert again.links.get("n1") is not neighbour, \
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
        assert await gw.handle(link, wire(frames.HELLO, 2**32 - 1, hello(epoch=5)))
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
