"""A re-flashed node under its old id (issue 11), driven against the real Gateway with the
protocol-level codec: its new epoch's hello is answered with a sequence floor above every number
the gateway knows for that id, frames numbered above it are stored, and nothing a captured old
frame or hello can do lowers what the gateway accepts (docs/protocol.md, "Re-flashed nodes")."""

import asyncio

import pytest

from sensorcity.gateway.config import Config
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.service import Gateway
from sensorcity.protocol import frames
from sensorcity.tools.bench.provision import provision
from inprocess import run

pytestmark = pytest.mark.adversarial


class Node:
    """One incarnation of node n1 as the wire sees it; what the gateway sends back, decoded."""

    def __init__(self, gw: Gateway, key: bytes, base: str, epoch: int | None):
        self.gw, self.key, self.base, self.epoch = gw, key, base, epoch
        self.down: list[frames.Frame] = []
        self.link = Link("test", lambda b: self.down.append(
            frames.decode(b[:-1], lambda n: self.key)))
        self.wire: list[bytes] = []  # every frame sent, for replays

    async def send(self, kind: int, seq: int, body) -> bool | None:
        wire = frames.encode(self.key, kind, "n1", seq, body)
        self.wire.append(wire)
        return await self.replay(wire)

    async def replay(self, wire: bytes) -> bool | None:
        return await self.gw.handle(self.link, wire[:-1])

    async def hello(self, seq: int):
        body = {"fw": "t", "boot": 1, "kind": "energy", "bn": self.base, "interval": 60}
        if self.epoch is not None:
            body["epoch"] = self.epoch
        ok = await self.send(frames.HELLO, seq, body)
        await downlink_sent(self.gw)
        return ok

    async def data(self, seq: int):
        return await self.send(frames.DATA, seq, [{-2: self.base, -3: 1795000000 + 60 * seq,
                                                   0: "x", 1: "count", 2: seq}])

    async def history(self, last: int) -> None:
        """A hello, then data frames 1..last, all committed."""
        assert await self.hello(0)
        for s in range(1, last + 1):
            await self.data(s)
        await settle(self.gw)

    def floors(self) -> list[dict]:
        return [f.body for f in self.down if f.kind == frames.SEQ]

    def acked(self) -> set[int]:
        return {f.body for f in self.down if f.kind == frames.ACK}


async def downlink_sent(gw: Gateway) -> None:
    """Numbered frames wait for their reservation in the spool (gateway/downlink.py): until the
    reservation writer is done, the SEQ and TIME frames of a hello may not have left."""
    while gw.downlink.writer is not None and not gw.downlink.writer.done():
        await asyncio.wait_for(asyncio.shield(gw.downlink.writer), 10)


async def settle(gw: Gateway) -> None:
    await asyncio.wait_for(gw.commit.queue.join(), 10)


@pytest.fixture
def gw(tmp_path):
    reg = tmp_path / "nodes.json"
    cfg = provision("n1", "energy", reg, tmp_path / "n1.json")
    g = Gateway(Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"],
                       spool=str(tmp_path / "s"), nodes=str(reg), metrics=""))
    g.test_key, g.test_base = bytes.fromhex(cfg["key"]), cfg["base_name"]
    return g



def test_a_new_epoch_gets_a_floor_above_the_old_numbers_and_loses_nothing(gw):
    old = Node(gw, gw.test_key, gw.test_base, epoch=11)
    new = Node(gw, gw.test_key, gw.test_base, epoch=22)

    async def scenario():
        await old.history(59)
        await old.send(frames.ACK, 60, 5)  # the old incarnation's last control frame
        assert gw.commit.stats.stored == 59
        # re-flashed: its numbers start at 0 again. Before the fix this hello was `replayed`
        # and no floor came, so every frame it sent was acked as a duplicate and thrown away
        assert await new.hello(0)
        assert new.floors() == [{"epoch": 22, "floor": 61}]
        kinds = [f.kind for f in new.down]
        assert kinds.index(frames.SEQ) < kinds.index(frames.TIME)  # floor first, then time
        assert await new.hello(1)  # its floor was lost on the line: asked again, answered again
        assert new.floors()[-1] == {"epoch": 22, "floor": 61}
        for s in range(61, 91):
            await new.data(s)
        await settle(gw)
        assert gw.commit.stats.stored == 59 + 30 and gw.commit.stats.duplicates == 0
        assert new.acked() >= set(range(61, 91))
        assert gw.verifier.stats.rejected["replayed"] == 0 and gw.commit.stats.stale == 0
    run(gw, scenario)


def test_captured_old_frames_and_hellos_lower_nothing(gw):
    old = Node(gw, gw.test_key, gw.test_base, epoch=11)
    new = Node(gw, gw.test_key, gw.test_base, epoch=22)

    async def scenario():
        await old.history(29)
        await new.hello(0)
        floor = new.floors()[0]["floor"]
        await new.send(frames.ACK, floor, 0)  # the node took its floor: its numbers are above
        for s in range(floor + 1, floor + 10):
            await new.data(s)
        await settle(gw)
        stored = gw.commit.stats.stored
        # the attacker replays the old incarnation's data and hello, and the new one's hello
        for wire in old.wire[1:]:
            await old.replay(wire)
        await settle(gw)
        assert gw.commit.stats.stored == stored and gw.commit.stats.duplicates == 29  # no old frame taken as new
        assert await old.replay(old.wire[0])  # an old epoch's hello: answered for that epoch
        assert old.floors()[-1] == {"epoch": 11, "floor": floor + 10}  # not below what it knows
        assert await new.replay(new.wire[0])  # epoch 22 again after 11: answered, floor higher
        assert new.floors()[-1]["floor"] >= floor + 10
        await new.hello(floor + 20)  # a reboot: above its floor
        assert await new.replay(new.wire[-1]) is False  # a floored epoch's hello: `replayed`
        assert gw.verifier.stats.rejected["replayed"] == 1
        for wire in old.wire[1:]:  # and the old data is still no new data
            await old.replay(wire)
        await settle(gw)
        assert gw.commit.stats.stored == stored
    run(gw, scenario)


def test_the_floor_survives_a_gateway_restart(gw):
    # the control seqs are in memory; the floor comes from the spool's seen/floor, on disk
    old = Node(gw, gw.test_key, gw.test_base, epoch=11)

    run(gw, lambda: old.history(40))
    gw.spool.close()
    again = Gateway(gw.cfg)
    new = Node(again, gw.test_key, gw.test_base, epoch=22)

    async def second():
        assert await new.hello(0)
        assert new.floors() == [{"epoch": 22, "floor": 41}]
        assert await new.hello(1)  # still pending (its floor lost): answered again
        assert len(new.floors()) == 2
    run(again, second)


def test_a_hello_without_an_epoch_keeps_the_replay_rule(gw):
    n = Node(gw, gw.test_key, gw.test_base, epoch=None)

    async def scenario():
        assert await n.hello(5)
        assert await n.replay(n.wire[0]) is False
        assert gw.verifier.stats.rejected["replayed"] == 1 and n.floors() == []
    run(gw, scenario)


def test_an_id_whose_numbers_are_spent_gets_no_floor_outside_link_cddl(gw):
    """A key holder's data frame at seq 2^32 - 1 (inside the frame bounds) spends the id: no
    floor below link.cddl's 2^30 - 2^20 is above it, so the re-flashed node's hello gets none
    (counted, logged: re-provision), never one the node must refuse."""
    thief = Node(gw, gw.test_key, gw.test_base, epoch=None)
    new = Node(gw, gw.test_key, gw.test_base, epoch=22)

    async def scenario():
        await thief.send(frames.DATA, 2**32 - 1, [{-2: gw.test_base, -3: 1795000000, 0: "x",
                                                    1: "count", 2: 1}])
        await settle(gw)
        assert gw.commit.stats.stored == 1
        assert await new.hello(0)
        assert new.floors() == [] and gw.verifier.stats.floors_refused == 1
    run(gw, scenario)
