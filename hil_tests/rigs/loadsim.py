"""A protocol-level load simulator: N nodes in one asyncio process, each on its own TCP link to a
real gateway (`sensorcity gateway run`, a subprocess), speaking link protocol v1 with the
gateway's own codec (design: "load tests with hundreds of nodes may drive the gateway with a
protocol-level simulator"). Each node closes a noise interval every `interval` seconds, keeps it
until acked and resends the oldest unacked frame as the firmware does (2 s, doubling to 30 s).
A persistent-session MQTT 5 subscriber (QoS 1) takes every batch off the broker; the report says
what was sent, acked, received, lost and duplicated, the latency from a frame's interval close
to its arrival at the subscriber, and the gateway's peak RSS.

    python -m rigs.loadsim run --nodes 200 --seconds 600 --broker mqtt://127.0.0.1:1883
    python -m rigs.loadsim spool --rows 1000000 --dir /tmp/spool-1m
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import cbor2

from sensorcity.gateway import config as gwconfig
from sensorcity.protocol import frames, senml
from sensorcity.gateway.registry import NodeEntry, Registry
from sensorcity.tools.sim.broker import free_port
from sensorcity.tools.sim.emulate import stop_process

NOISE = ("LAeq", "LAFmax", "LAFmin", "LA10", "LA50", "LA90")
ACK_TIMEOUT, MAX_BACKOFF = 2.0, 30.0


def base_name(node_id: str) -> str:
    return f"urn:dev:org:32473-sensorcity-{node_id}:"


def noise_pack(node_id: str, t: int, rng: random.Random) -> list:
    """What firmware/senml.pack makes of a noise interval (RFC 8428 CBOR labels)."""
    out = []
    for q in NOISE:
        rec = {0: q, 1: "dB", 2: round(rng.uniform(35, 90), 2)}
        if not out:
            rec.update({-2: base_name(node_id), -3: t})
        out.append(rec)
    return out


class SimNode:
    """One node: a store of unacked frames (its flash ring), a sender, a reader."""

    def __init__(self, node_id: str, key: bytes, port: int, stats: "Stats", seed: int):
        self.id, self.key, self.port, self.stats = node_id, key, port, stats
        self.rng = random.Random(seed)
        self.store: collections.deque = collections.deque()  # (seq, t, wire)
        self.seq = 0
        self.acked_seq = -1
        self.acked = asyncio.Event()
        self.wake = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def emit(self, t: int) -> None:
        seq = self._next_seq()
        self.store.append((seq, t, frames.encode(self.key, frames.DATA, self.id, seq,
                                                 noise_pack(self.id, t, self.rng))))
        self.stats.emitted[(self.id, t)] = time.time()
        self.wake.set()

    def control(self, kind: int, body) -> None:
        if self.writer is not None:
            self.writer.write(frames.encode(self.key, kind, self.id, self._next_seq(), body))

    async def link(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(1)
                continue
            self.stats.connects += 1
            self.control(frames.HELLO, {"fw": "loadsim", "boot": 1, "kind": "noise",
                                        "bn": base_name(self.id), "interval": 1})
            self.wake.set()
            deframer = frames.Deframer()
            try:
                while data := await reader.read(4096):
                    for cobs in deframer.feed(data):
                        self.on_frame(cobs)
            except OSError:
                pass
            self.writer.close()
            self.writer = None
            self.acked.set()
            await asyncio.sleep(1)

    def on_frame(self, cobs: bytes) -> None:
        try:
            f = frames.decode(cobs, lambda n: self.key if n == self.id else None)
        except frames.FrameError:
            self.stats.node_rejects += 1
            return
        if f.kind == frames.ACK:
            self.acked_seq = f.body
            self.acked.set()
        elif f.kind in (frames.TIME, frames.CMD):
            self.control(frames.ACK, f.seq)

    async def sender(self) -> None:
        backoff = ACK_TIMEOUT
        while True:
            if not self.store or self.writer is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            seq, t, wire = self.store[0]
            self.acked.clear()
            self.writer.write(wire)
            try:
                await asyncio.wait_for(self.acked.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            if self.acked_seq != seq:
                self.stats.resends += 1
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = ACK_TIMEOUT
            self.store.popleft()
            self.stats.acked.add((self.id, t))


@dataclass
class Stats:
    emitted: dict = None       # (node, t) -> when the interval closed
    acked: set = None
    arrived: dict = None       # (node, t) -> first arrival at the subscriber
    records: collections.Counter = None  # (name, t) -> times received
    values: dict = None  # (name, t) -> the values received for it
    resends: int = 0
    connects: int = 0
    node_rejects: int = 0
    rss_max_kb: int = 0

    def __post_init__(self):
        self.emitted, self.acked, self.arrived, self.values = {}, set(), {}, {}
        self.records = collections.Counter()


class Subscriber:
    """MQTT 5, persistent session (clean_start False, session expiry), QoS 1, in paho's thread."""

    def __init__(self, port: int, topic: str, stats: Stats, client_id: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        self.stats = stats
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1),
                                                         self.subscribed.set())
        self.client.on_message = self.on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()

    def on_message(self, client, userdata, msg) -> None:
        now = time.time()
        with self.lock:
            for r in senml.resolve(cbor2.loads(msg.payload)):
                base, _, q = r.n.rpartition(":")
                node = base.rsplit("sensorcity-", 1)[-1]
                self.stats.records[(r.n, r.t)] += 1
                self.stats.values.setdefault((r.n, r.t), set()).add(r.v)
                self.stats.arrived.setdefault((node, int(r.t)), now)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def provision_nodes(n: int, registry: Path, prefix: str = "sim") -> dict[str, bytes]:
    keys = {f"{prefix}-{i:03d}": secrets.token_bytes(32) for i in range(n)}
    for nid, key in keys.items():
        Registry.add(registry, NodeEntry(nid, key, base_name(nid), "noise"))
    return keys


def gateway_config(work: Path, broker_port: int, listen_port: int, gateway_id: str,
                   batch_age: float = 1.0) -> Path:
    """A TOML config for `sensorcity gateway run`; no metrics listener where the config has one,
    so parallel test gateways do not fight over its port."""
    lines = [f'gateway_id = "{gateway_id}"', f'listen = ["tcp://127.0.0.1:{listen_port}"]',
             f'brokers = ["mqtt://127.0.0.1:{broker_port}"]', f'spool = "{work / "spool"}"',
             f'nodes = "{work / "nodes.json"}"', f"batch_age = {batch_age}"]
    if "metrics" in {f.name for f in fields(gwconfig.Config)}:
        lines.append('metrics = ""')
    path = work / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_gateway(config: Path, log) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "sensorcity"
    return subprocess.Popen([str(exe), "gateway", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)


def stop_gateway(proc: subprocess.Popen) -> None:
    stop_process(proc, grace=15)  # SIGTERM drains: give it time


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(values: list[float], p: float) -> float:
    """Nearest rank (no interpolation): the value p % of the sample is at or below."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-p * len(s) // 100)) - 1))]


async def _run(nodes: int, seconds: float, broker_port: int, work: Path, interval: int,
               drain: float, gateway_id: str) -> dict:
    stats = Stats()
    keys = provision_nodes(nodes, work / "nodes.json")
    listen = free_port()
    cfg = gateway_config(work, broker_port, listen, gateway_id)
    sub = Subscriber(broker_port, f"sensorcity/v1/{gateway_id}/batch", stats, f"sub-{gateway_id}")
    if not sub.subscribed.wait(10):
        raise TimeoutError("the subscriber did not connect")
    gw = start_gateway(cfg, open(work / "gateway.log", "w"))
    try:
        await asyncio.to_thread(wait_port, listen)
        stop = asyncio.Event()
        sims = [SimNode(nid, key, listen, stats, i) for i, (nid, key) in enumerate(keys.items())]
        tasks = [asyncio.create_task(s.link(stop)) for s in sims]
        tasks += [asyncio.create_task(s.sender()) for s in sims]

        async def sample_rss():
            while True:
                stats.rss_max_kb = max(stats.rss_max_kb, rss_kb(gw.pid))
                await asyncio.sleep(0.5)
        tasks.append(asyncio.create_task(sample_rss()))
        # intervals close on the clock, every node at its boundary (as time-synced nodes do)
        t = int(time.time()) // interval * interval + interval
        end = time.time() + seconds
        while t < end:
            await asyncio.sleep(max(0.0, t + interval - time.time()))
            for s in sims:
                s.emit(t)
            t += interval
        deadline = time.time() + drain
        while time.time() < deadline and (len(stats.acked) < len(stats.emitted)
                                          or len(stats.arrived) < len(stats.emitted)):
            await asyncio.sleep(0.2)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop_gateway(gw)
        sub.stop()
    return report(stats, nodes, seconds, interval)


def report(stats: Stats, nodes: int, seconds: float, interval: int) -> dict:
    with_arrival = [stats.arrived[k] - e for k, e in stats.emitted.items() if k in stats.arrived]
    # latency from the interval's close (emit) to the first arrival of its records
    lost = [k for k in stats.acked if k not in stats.arrived]
    dups = sum(n - 1 for n in stats.records.values() if n > 1)
    return {
        "nodes": nodes, "seconds": seconds, "interval": interval,
        "frames_emitted": len(stats.emitted), "frames_acked": len(stats.acked),
        "frames_received": len(stats.arrived), "lost_acked": len(lost),
        "never_acked": len(stats.emitted) - len(stats.acked),
        "records_received": sum(stats.records.values()), "duplicate_records": dups,
        "resends": stats.resends, "connects": stats.connects, "node_rejects": stats.node_rejects,
        "latency_p50_s": round(percentile(with_arrival, 50), 3),
        "latency_p99_s": round(percentile(with_arrival, 99), 3),
        "latency_max_s": round(max(with_arrival, default=float("nan")), 3),
        "gateway_rss_max_mb": round(stats.rss_max_kb / 1024, 1),
    }


def run_load(nodes: int, seconds: float, broker_port: int, work: Path | None = None,
             interval: int = 1, drain: float = 30.0, gateway_id: str = "loadsim") -> dict:
    work = Path(work or tempfile.mkdtemp(prefix="loadsim-"))
    work.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(nodes, seconds, broker_port, work, interval, drain, gateway_id))


# --- the spool at size ---------------------------------------------------------------------
def _packs(rng: random.Random) -> dict[str, list[senml.Record]]:
    """One interval of each node kind and of the health frame every node sends, as the gateway
    stores them (resolved, re-packed): names, units and value shapes as the firmware makes."""
    bn, t = base_name("sim-000"), 1.7e9
    def recs(items):
        return [senml.Record(bn + n, u, v, t) for n, u, v in items]
    energy = [(f"energy_{d}_t{k}", "kWh", round(rng.uniform(1e3, 9e4), 3))
              for d in ("import", "export") for k in (1, 2)]
    energy += [("power_import", "W", round(rng.uniform(0, 5e3), 3)),
               ("power_export", "W", 0.0)]
    energy += [(f"voltage_l{k}", "V", round(rng.uniform(225, 235), 3)) for k in (1, 2, 3)]
    energy += [(f"current_l{k}", "A", round(rng.uniform(0, 20), 3)) for k in (1, 2, 3)]
    energy += [("gas_volume", "m3", round(rng.uniform(1e3, 9e3), 3)), ("p1_crc_errors", "count", 0)]
    traffic = []
    for lane in (1, 2):
        traffic += [(f"lane{lane}/count", "count", rng.randint(0, 40))]
        traffic += [(f"lane{lane}/count_c{c}", "count", rng.randint(0, 30)) for c in (1, 2, 3)]
        traffic += [(f"lane{lane}/speed_mean", "km/h", round(rng.uniform(20, 60), 3)),
                    (f"lane{lane}/speed_v85", "km/h", round(rng.uniform(30, 70), 3)),
                    (f"lane{lane}/occupancy", "%", round(rng.uniform(0, 30), 3))]
    return {
        "noise": recs([(q, "dB", round(rng.uniform(35, 90), 2)) for q in NOISE]),
        "energy": recs(energy), "traffic": recs(traffic),
        "health": recs([("uptime", "s", rng.randint(0, 10**7)), ("heap_free", "B", 60000),
                        ("link_resends", "count", 3), ("store_depth", "count", 0),
                        ("boot_count", "count", 12)]),
    }


def spool_bytes_per_frame(kind: str, frames_n: int = 50_000, nodes: int = 200) -> float:
    """Disk bytes per frame in a spool of one kind's frames (outbox row, its t index, its `seen`
    row), from SQLite's own page count."""
    from sensorcity.gateway.spool import Spool
    from sensorcity.gateway.verify import encode_records
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as d:
        sp = Spool(d)
        seq = 0
        base = sp.used_pages()
        for i in range(0, frames_n, nodes):
            entries = []
            for n in range(nodes):
                recs = _packs(rng)[kind]
                entries.append((f"sim-{n:03d}", seq, 1.7e9 + i, encode_records(recs), len(recs)))
                seq += 1
            sp.store(entries, now=1.7e9)
        used = (sp.used_pages() - base) * sp.page_size
        sp.close()
    return used / frames_n


OPEN_PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from sensorcity.gateway.spool import Spool
t1 = time.perf_counter()
sp = Spool(sys.argv[1])
depth = sp.depth()
rows = sp.oldest(200)
t2 = time.perf_counter()
print(json.dumps({"depth": depth, "open_s": round(t2 - t1, 4), "import_s": round(t1 - t0, 3),
                  "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def spool_at_size(rows: int, directory: Path) -> dict:
    """Fill a spool to `rows` frames (200 nodes, noise and health), then open it cold in a fresh
    process (after a kill: the WAL is left as it was) and measure open time and peak RSS."""
    from sensorcity.gateway.spool import Spool
    from sensorcity.gateway.verify import encode_records
    directory.mkdir(parents=True, exist_ok=True)
    sp = Spool(directory)
    have = sp.depth()
    rng = random.Random(2)
    packs = _packs(rng)
    noise, health = encode_records(packs["noise"]), encode_records(packs["health"])
    t0 = time.perf_counter()
    seq = have
    while seq < rows:
        t = 1.7e9 + seq // 400 * 60
        entries = [(f"sim-{(seq + i) // 2 % 200:03d}", seq + i, t, noise if i % 2 else health, 6)
                   for i in range(min(400, rows - seq))]
        sp.store(entries, now=1.7e9 + seq // 400 * 60)
        seq += len(entries)
    fill_s = time.perf_counter() - t0
    sp.close()
    probes = [json.loads(subprocess.run([sys.executable, "-c", OPEN_PROBE, str(directory)],
                                        capture_output=True, text=True, check=True).stdout)
              for _ in range(3)]
    size = sum(p.stat().st_size for p in directory.iterdir())
    return {"rows": probes[0]["depth"], "fill_s": round(fill_s, 1),
            "files_mb": round(size / 2**20, 1),
            "open_s": [p["open_s"] for p in probes], "rss_mb": [p["rss_mb"] for p in probes]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="loadsim", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="N simulated nodes -> a gateway subprocess -> a broker")
    r.add_argument("--nodes", type=int, default=200)
    r.add_argument("--seconds", type=float, default=60)
    r.add_argument("--interval", type=int, default=1)
    r.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://127.0.0.1:PORT")
    r.add_argument("--work", help="directory for registry, spool, logs (default: a new temp)")
    s = sub.add_parser("spool", help="bytes per frame; open time and RSS of a spool at size")
    s.add_argument("--rows", type=int, default=1_000_000)
    s.add_argument("--dir", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "run":
        port = int(a.broker.rsplit(":", 1)[1])
        out = run_load(a.nodes, a.seconds, port, Path(a.work) if a.work else None, a.interval)
    else:
        out = {"bytes_per_frame": {k: round(spool_bytes_per_frame(k), 1)
                                   for k in ("noise", "energy", "traffic", "health")}}
        d = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="spool-size-"))
        small = spool_at_size(10_000, d.with_name(d.name + "-10k"))
        big = spool_at_size(a.rows, d)
        out.update({"small": small, "big": big,
                    "this_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                         / 1024, 1)})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
