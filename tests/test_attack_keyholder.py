"""A key holder (a stolen board: its key is in its flash) against the real Gateway, through its
verify -> spool -> ack path with the protocol-level codec. docs/protocol.md, threat model: what it
does "hurts this node only"; it cannot "stop the gateway or its commits for other nodes"."""

import asyncio

import pytest

from sensorcity.gateway.config import Config
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.registry import NodeEntry, Registry
from sensorcity.gateway.service import Gateway
from sensorcity.protocol import frames
from inprocess import run

pytestmark = pytest.mark.adversarial
KEYS = {"thief": b"\x01" * 32, "honest": b"\x02" * 32}


def base(node: str) -> str:
    return f"urn:dev:ops:{node}:"


@pytest.fixture
def gw(tmp_path):
    reg = tmp_path / "nodes.json"
    for node, key in KEYS.items():
        Registry.add(reg, NodeEntry(node, key, base(node), "energy"))
    return Gateway(Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool_max_mb=4,
                          spool=str(tmp_path / "s"), nodes=str(reg), metrics=""))



def data(node: str, seq: int, t: int, n: int = 1) -> bytes:
    pack = [{-2: base(node), -3: t, 0: f"q{i:02d}", 1: "W", 2: seq * 1000 + i} for i in range(n)]
    return frames.encode(KEYS[node], frames.DATA, node, seq, pack)[:-1]


def test_a_key_holders_future_dated_frames_do_not_evict_other_nodes_data(gw):
    """The broker is away, the spool fills. An honest node's 100 readings are spooled; a key
    holder then sends frames dated in 2106 (bt near 2^32, inside the bounds). The budget drops
    the oldest interval times first, across all nodes: the honest node's real data goes, the key
    holder's future-dated frames stay."""
    link = Link("test", lambda b: None)

    async def scenario():
        for seq in range(1, 101):
            await gw.handle(link, data("honest", seq, 1795000000 + 60 * seq))
        await asyncio.wait_for(gw.commit.queue.join(), 10)
        seq = 0
        while gw.spool.stats().dropped_frames == 0 and seq < 20000:
            seq += 1
            await gw.handle(link, data("thief", seq, 2**32 - 100000 + seq, n=20))
            if seq % 200 == 0:
                await asyncio.wait_for(gw.commit.queue.join(), 30)
        await asyncio.wait_for(gw.commit.queue.join(), 30)
        assert gw.spool.stats().dropped_frames > 0, "the budget was never reached"
    run(gw, scenario)
    kept = {node for _, node, *_ in gw.spool.oldest(100000)}
    honest = [r for r in gw.spool.oldest(100000) if r[1] == "honest"]
    assert len(honest) == 100, f"the honest node lost {100 - len(honest)} of its 100 frames " \
        f"to a key holder's future-dated ones (kept: {kept})"


@pytest.mark.parametrize("epoch", [2**30, 2**64, -1])
def test_a_hello_epoch_outside_link_cddl_is_schema(gw, epoch):
    """link.cddl: `? "epoch": epoch`, epoch = uint .le 1073741823; docs/protocol.md: "the gateway
    checks each bound in its verify step ... a frame outside them is rejected as `schema`".
    hello_error does not look at the epoch: the hello is accepted, answered with a SEQ frame for
    that epoch (outside the CDDL in turn) and the node's epoch state replaced."""
    hello = {"fw": "t", "boot": 1, "kind": "energy", "bn": base("thief"), "interval": 60,
             "epoch": epoch}
    wire = frames.encode(KEYS["thief"], frames.HELLO, "thief", 1, hello)[:-1]

    async def scenario():
        assert await gw.handle(Link("test", lambda b: None), wire) is False
        assert gw.verifier.stats.rejected["schema"] == 1
    run(gw, scenario)
