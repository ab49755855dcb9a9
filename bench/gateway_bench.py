"""The gateway's figures for `make bench` (bench/run.py calls run()).

1. gateway_vs_mosquitto_bridge_readings_ratio: durable readings per second that reach an upstream
   mosquitto through our gateway (K protocol-level nodes on TCP links, tools/loadsim.SimNode, each
   sending its backlog oldest first, one frame in flight, as the firmware does), divided by the
   same readings through the usual alternative: each reading published by the node (paho, QoS 1)
   to a local mosquitto with persistence that bridges to the upstream one (QoS 1, persistent
   bridge session). Both in the same run, against the same upstream broker.
2. backlog_drain_readings_per_s, backlog_drain_rss_mb: a spool holding 24 h of 200 nodes (60 s
   intervals: 288,000 frames, noise and health) drained into mosquitto by `sensorcity gateway run`.
3. latency_p50_ms, latency_p99_ms, gateway_rss_mb: 200 nodes at 1 s intervals
   (tools/loadsim.run_load), from an interval's close at the node to its arrival at a subscriber.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from rigs import loadsim
from rigs.mosquitto import Mosquitto

K_NODES = 20
FRAMES_PER_NODE = 250
READINGS_PER_FRAME = len(loadsim.NOISE)
BACKLOG_FRAMES = 24 * 60 * 200
LOAD_NODES = 200
LOAD_SECONDS = 30


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


class Counter:
    """Counts messages on a topic filter at the upstream broker; notes the last arrival."""

    def __init__(self, port: int, topic: str, per_message=lambda payload: 1):
        self.n = 0
        self.last = 0.0
        self.per_message = per_message
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), ready.set())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise TimeoutError("subscriber did not connect")
        time.sleep(0.2)

    def _on_message(self, client, userdata, msg):
        n = self.per_message(msg.payload)
        with self.lock:
            self.n += n
            self.last = time.time()

    def wait(self, total: int, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.n >= total:
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def ours(work: Path, upstream: Mosquitto) -> float:
    """Readings per second through our gateway."""
    work.mkdir(parents=True)
    import cbor2
    counter = Counter(upstream.port, "sensorcity/v1/bench/batch",
                      lambda payload: len(cbor2.loads(payload)))
    keys = loadsim.provision_nodes(K_NODES, work / "nodes.json", prefix="bench")
    listen = loadsim.free_port()
    gw = loadsim.start_gateway(loadsim.gateway_config(work, upstream.port, listen, "bench",
                                                      batch_age=0.2),
                               open(work / "gateway.log", "w"))
    total = K_NODES * FRAMES_PER_NODE * READINGS_PER_FRAME
    try:
        loadsim.wait_port(listen)

        async def drive() -> float:
            stats = loadsim.Stats()
            stop = asyncio.Event()
            nodes = [loadsim.SimNode(n, k, listen, stats, i) for i, (n, k) in enumerate(keys.items())]
            for node in nodes:
                for t in range(FRAMES_PER_NODE):
                    node.emit(1_700_000_000 + 60 * t)  # a day's backlog, oldest first
            t0 = time.time()
            tasks = [asyncio.create_task(x) for n in nodes for x in (n.link(stop), n.sender())]
            ok = await asyncio.to_thread(counter.wait, total, 300)
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not ok:
                raise RuntimeError(f"gateway delivered {counter.n} of {total} readings")
            return total / (counter.last - t0)
        return asyncio.run(drive())
    finally:
        loadsim.stop_gateway(gw)
        counter.stop()


def bridge(work: Path, upstream: Mosquitto) -> float:
    """Readings per second through a local mosquitto bridged to the upstream one."""
    work.mkdir(parents=True)
    local = Mosquitto(work / "local", extra=(
        "connection upstream", f"address 127.0.0.1:{upstream.port}", "topic bench/# out 1",
        "cleansession false", f"remote_clientid bridge-{work.name}",
        "max_queued_messages 1000000"))
    counter = Counter(upstream.port, "bench/#")
    total = K_NODES * FRAMES_PER_NODE * READINGS_PER_FRAME
    time.sleep(0.5)  # the bridge connects
    clients = []
    try:
        t0 = time.time()

        def node(i: int):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"node-{i}")
            c.max_inflight_messages_set(20)
            c.max_queued_messages_set(0)
            c.connect("127.0.0.1", local.port)
            c.loop_start()
            clients.append(c)
            bn = loadsim.base_name(f"bench-{i:03d}")
            infos = []
            for t in range(FRAMES_PER_NODE):
                for q in loadsim.NOISE:
                    body = json.dumps([{"bn": bn, "bt": 1_700_000_000 + 60 * t, "n": q,
                                        "u": "dB", "v": 55.25}], separators=(",", ":"))
                    infos.append(c.publish(f"bench/{i}/{q}", body, qos=1))
            for info in infos:
                info.wait_for_publish(120)
        threads = [threading.Thread(target=node, args=(i,)) for i in range(K_NODES)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if not counter.wait(total, 300):
            raise RuntimeError(f"bridge delivered {counter.n} of {total} readings")
        return total / (counter.last - t0)
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        counter.stop()
        local.stop()


def backlog(tmp: Path, upstream: Mosquitto, runs: int) -> dict:
    """Drain a 24 h, 200-node spool (filled once, copied for each run)."""
    import cbor2
    import sqlite3
    master = tmp / "backlog-master" / "spool"
    filled = loadsim.spool_at_size(BACKLOG_FRAMES, master)
    db = sqlite3.connect(master / "spool.sqlite3")
    total = sum(len(cbor2.loads(p)) for (p,) in db.execute("SELECT pack FROM outbox"))
    db.close()
    rates, rss = [], []
    for i in range(runs):
        work = tmp / f"backlog-{i}"
        shutil.copytree(master, work / "spool")
        listen = loadsim.free_port()
        registry = work / "nodes.json"
        loadsim.provision_nodes(1, registry)
        counter = Counter(upstream.port, f"sensorcity/v1/drain{i}/batch",
                          lambda payload: len(cbor2.loads(payload)))
        t0 = time.time()
        gw = loadsim.start_gateway(loadsim.gateway_config(work, upstream.port, listen,
                                                          f"drain{i}"),
                                   open(work / "gateway.log", "w"))
        peak = 0
        try:
            deadline = time.time() + 600
            while counter.n < total and time.time() < deadline:
                peak = max(peak, loadsim.rss_kb(gw.pid))
                time.sleep(0.2)
            if counter.n < total:
                raise RuntimeError(f"drain delivered {counter.n} of {total} readings")
            rates.append(total / (counter.last - t0))
            rss.append(peak / 1024)
        finally:
            loadsim.stop_gateway(gw)
            counter.stop()
            shutil.rmtree(work, ignore_errors=True)
    return {"backlog_drain_readings_per_s": summary(rates), "backlog_drain_rss_mb": summary(rss),
            "backlog_frames": filled["rows"], "backlog_readings": total,
            "backlog_spool_mb": filled["files_mb"]}


def run(tmp: Path, runs: int) -> dict:
    upstream = Mosquitto(tmp / "upstream", extra=("max_queued_messages 1000000",))
    out: dict = {}
    try:
        ratios, rate_ours, rate_bridge = [], [], []
        for i in range(runs):
            a = ours(tmp / f"ours-{i}", upstream)
            b = bridge(tmp / f"bridge-{i}", upstream)
            rate_ours.append(a)
            rate_bridge.append(b)
            ratios.append(a / b)
        out["gateway_vs_mosquitto_bridge_readings_ratio"] = summary(ratios)
        out["gateway_readings_per_s"] = summary(rate_ours)
        out["mosquitto_bridge_readings_per_s"] = summary(rate_bridge)
        out.update(backlog(tmp, upstream, runs))
        p50, p99, rss, lost = [], [], [], []
        for i in range(runs):
            r = loadsim.run_load(LOAD_NODES, LOAD_SECONDS, upstream.port, tmp / f"load-{i}",
                                 gateway_id=f"load{i}")
            p50.append(r["latency_p50_s"] * 1000)
            p99.append(r["latency_p99_s"] * 1000)
            rss.append(r["gateway_rss_max_mb"])
            lost.append(r["lost_acked"] + r["never_acked"])
        out["latency_p50_ms"] = summary(p50)
        out["latency_p99_ms"] = summary(p99)
        out["gateway_rss_mb"] = summary(rss)
        out["latency_run_lost_frames"] = sum(lost)
    finally:
        upstream.stop()
    return out
