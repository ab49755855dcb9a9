"""Stages that own their state (issue 13 item 1): a rejection is counted by the stage that saw
it (a run too long for a frame by ingest, a frame below its floor by commit, the rest by
verify), each in its own stats object, and metrics and the page merge them when they read;
service.py keeps no counter of its own; only the spool module runs SQL."""

import asyncio
import re
from pathlib import Path

from prometheus_client import generate_latest

from sensorcity.gateway import status
from sensorcity.gateway.config import Config
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.registry import NodeEntry, Registry
from sensorcity.gateway.service import Gateway
from sensorcity.gateway.verify import REASONS
from sensorcity.protocol import frames

KEY = bytes(range(1, 33))
GATEWAY = Path(__file__).resolve().parents[1] / "gateway"


def gateway(tmp_path) -> Gateway:
    reg = tmp_path / "nodes.json"
    Registry.add(reg, NodeEntry("n1", KEY, "urn:dev:test:n1:", "noise"))
    return Gateway(Config(gateway_id="gw", spool=str(tmp_path / "spool"), nodes=str(reg),
                          brokers=["mqtt://127.0.0.1:9"], metrics=""))


def rejected_metric(gw, reason: str) -> float:
    text = generate_latest(gw.metrics.registry).decode()
    m = re.search(rf'^sensorcity_gateway_frames_rejected_total{{reason="{reason}"}} (\S+)$',
                  text, re.M)
    return float(m.group(1))


def test_each_rejection_is_counted_by_the_stage_that_saw_it(tmp_path):
    gw = gateway(tmp_path)
    sent = []

    async def main():
        committer = asyncio.create_task(gw.commit.run())
        link = Link("tcp:127.0.0.1:1", sent.append)
        # ingest: a run longer than any frame, then a frame with a bad CRC
        await gw.ingest._pump(link, b"\x55" * (frames.MAX_FRAME * 3) + b"\x00")
        await gw.ingest._pump(link, b"\x03\x01\x02\x00")
        # commit: frame 5 stored; the spool's floor for n1 set at 7; frame 6 is then stale
        data = [{-2: "urn:dev:test:n1:", -3: 1795000000, 0: "LAeq", 1: "dB", 2: 50.5}]
        await gw.handle(link, frames.encode(KEY, frames.DATA, "n1", 5, data)[:-1])
        await asyncio.wait_for(gw.commit.queue.join(), 10)
        gw.spool.floor["n1"] = 7
        await gw.handle(link, frames.encode(KEY, frames.DATA, "n1", 6, data)[:-1])
        await asyncio.wait_for(gw.commit.queue.join(), 10)
        committer.cancel()
    asyncio.run(main())

    assert gw.ingest.stats.overflows == 1
    assert gw.commit.stats.stale == 1 and gw.commit.stats.stored == 1
    own = gw.verifier.stats.rejected
    assert "overflow" not in own and "stale" not in own and sum(own.values()) == 1
    # the readers merge them: the names, the order and the page's shape as before
    merged = gw.verdict.rejections()
    assert list(merged) == list(REASONS)
    assert merged["overflow"] == 1 and merged["stale"] == 1 and sum(merged.values()) == 3
    assert rejected_metric(gw, "overflow") == 1 and rejected_metric(gw, "stale") == 1
    snap = status.snapshot(gw, status.spool_state(gw.spool))
    assert snap["rejections"]["by_reason"] == merged and snap["rejections"]["total"] == 3
    gw.spool.close()


def test_the_service_keeps_no_counter_and_only_the_spool_runs_sql(tmp_path):
    gw = gateway(tmp_path)
    numbers = {k for k, v in vars(gw).items() if type(v) in (int, float)} - {"started"}
    assert numbers == set(), f"service.py holds counters: {numbers}"
    source = (GATEWAY / "service.py").read_text()
    assert not re.search(r"\w\.\w+(\[[^]]*\])? \+= ", source), "service.py writes a counter"
    gw.spool.close()
    sql = [f"{p.name}:{n}" for p in sorted(GATEWAY.glob("*.py"))
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"spool\.db|execute\(", line)]
    assert sql and all(s.startswith("spool.py:") for s in sql), sql
