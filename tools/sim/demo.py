"""`sensorcity demo`: emulated noise, energy and traffic nodes -> gateway -> MQTT broker, with a
live view of the readings arriving and a one-line summary at the end. Its first line is the URL
of the gateway's status page (on a free loopback port), live while the demo runs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiomqtt
import cbor2

from ...protocol import senml
from ...gateway.config import Config
from ...gateway.service import Gateway
from .broker import free_port, start_embedded
from .emulate import EmulatedNode
from ...kinds import NAMES as KIND_NAMES
from ..bench.provision import provision

SHOW = {"LAeq", "power_import", "energy_import_t1", "lane1/count", "lane1/speed_mean"}


async def _watch(broker_url: str, version: int, prefix: str, seen: Counter, nodes: set,
                 out, stop: asyncio.Event):
    host, port = broker_url.split("://")[1].rsplit(":", 1)
    proto = aiomqtt.ProtocolVersion.V5 if version == 5 else aiomqtt.ProtocolVersion.V311
    while not stop.is_set():
        try:
            async with aiomqtt.Client(host, int(port), protocol=proto) as client:
                await client.subscribe(f"{prefix}/+/batch", qos=1)
                async for msg in client.messages:
                    for r in senml.resolve(cbor2.loads(msg.payload)):
                        base, _, q = r.n.rpartition(":")
                        nodes.add(base)
                        seen[q] += 1
                        if q in SHOW:
                            stamp = time.strftime("%H:%M:%S", time.localtime(r.t))
                            node = base.split("sensorcity-")[-1]
                            print(f"{stamp}  {node:<16} {q:<18} {r.v:>10} {r.u or ''}", file=out,
                                  flush=True)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def run_demo(nodes: int = 3, seconds: float = 30, broker: str | None = None,
                   interval: int = 2, out=sys.stdout) -> dict:
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="sensorcity-demo-"))
    embedded = None
    version = 5
    if broker is None:
        port = free_port()
        embedded = await start_embedded(port)
        broker = f"mqtt://127.0.0.1:{port}"
        version = 4
    registry = work / "nodes.json"
    configs = []
    for i in range(nodes):
        kind = KIND_NAMES[i % len(KIND_NAMES)]
        cfg_path = work / f"node-{i + 1}.json"
        node_cfg = provision(f"demo-{kind}-{i + 1}", kind, registry, cfg_path, interval=interval)
        if kind == "traffic":
            # a street's slowest vehicle at 20 km/h closes each interval within 6 s, not 23 s
            node_cfg["min_speed"] = 20.0
            cfg_path.write_text(json.dumps(node_cfg))
        configs.append(cfg_path)
    cfg = Config(gateway_id="demo", listen=["tcp://127.0.0.1:0"], brokers=[broker],
                 mqtt_version=version, spool=str(work / "spool"), nodes=str(registry),
                 batch_age=1.0, metrics="127.0.0.1:0")  # the page on a free loopback port
    gateway = Gateway(cfg)
    seen: Counter = Counter()
    bases: set = set()
    stop = asyncio.Event()
    gw_task = asyncio.create_task(gateway.run())
    listening = asyncio.create_task(gateway.http_started.wait())
    await asyncio.wait({gw_task, listening}, return_when=asyncio.FIRST_COMPLETED)
    if gw_task.done():
        listening.cancel()
        await gw_task  # it failed to start: its error, as one line from the CLI
    page = gateway.http_started.port
    print(f"demo: the gateway's page: http://127.0.0.1:{page}/" if page else
          "demo: the gateway's page is unavailable (no HTTP listener)", file=out, flush=True)
    print(f"demo: {nodes} emulated nodes -> gateway -> {broker} "
          f"({'embedded amqtt' if embedded else 'your broker'}) for {seconds:g} s", file=out)
    watch = asyncio.create_task(_watch(broker, version, cfg.topic_prefix, seen, bases, out, stop))
    await gateway.tcp_started.wait()
    port = gateway.tcp_started.port
    emulated = []
    for i, path in enumerate(configs):
        node = EmulatedNode(path, f"tcp://127.0.0.1:{port}", interval=interval, heap="192k",
                            seed=i, log=open(path.with_suffix(".log"), "w"))
        node.start()
        emulated.append(node)
    try:
        await asyncio.sleep(seconds)
        # let the last closed intervals reach the broker
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and gateway.spool.depth():
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
    finally:
        for node in emulated:
            node.stop()
        stop.set()
        watch.cancel()
        gw_task.cancel()
        for t in (watch, gw_task):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if embedded is not None:
            await embedded.shutdown()
    rejected = sum(gateway.verdict.rejections().values())
    summary = {"nodes": len(bases), "readings": sum(seen.values()),
               "batches": gateway.uplink.stats.published_batches, "rejected": rejected,
               "duplicates": gateway.commit.stats.duplicates, "spooled": gateway.spool.depth()}
    print(f"demo: {summary['readings']} readings from {summary['nodes']} nodes in "
          f"{summary['batches']} batches reached the broker; {rejected} frames rejected, "
          f"{summary['duplicates']} duplicates, {summary['spooled']} still spooled", file=out)
    return summary
