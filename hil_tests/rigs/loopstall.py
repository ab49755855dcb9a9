"""The event loop's stalls during a hello storm while the committer is busy: an in-process
gateway whose every commit holds the spool's lock `hold` seconds (a slow SD card), a feeder node
that keeps the committer busy, and `nodes` protocol-level nodes on TCP (in a thread of their own)
that each say hello and wait for their TIME frame. A task on the gateway's loop sleeps 5 ms at a
time and records how late it wakes: a stall of the loop is a late wake.

`variant="before"` puts back the old downlink (every TIME/CMD number from a SQLite transaction
on the event loop, spool.next_downlink_seq), so the bench shows both in one run."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

from sensorcity.gateway.config import Config
from sensorcity.gateway.service import Gateway
from sensorcity.protocol import frames
from sensorcity.tools.sim.broker import free_port

from . import loadsim

TICK = 0.005


def slow_commits(spool, hold: float):
    """Every store holds the spool's lock `hold` seconds before it writes, as a slow card does;
    the returned function makes the card fast again."""
    real, slow = spool.store, [hold]

    def store(entries, now=None):
        with spool.lock:
            time.sleep(slow[0])
            return real(entries, now)
    spool.store = store
    return lambda: slow.__setitem__(0, 0.0)


def old_downlink(gw) -> None:
    """The synchronous path of before (Gateway.send until issue 13): a transaction, and its
    fsync, on the loop for every TIME/CMD number, waiting for the spool's lock."""
    def send(link, node, kind, body):
        key = gw.registry.key_for(node)
        seq = 0 if kind == frames.ACK else gw.spool.next_downlink_seq(node)
        if kind == frames.TIME:
            body = int(time.time() * 1000)
        link.send(frames.encode(key, kind, node, seq, body))
        return seq
    gw.downlink.send = send


async def lateness(out: list[float]) -> None:
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(TICK)
        out.append(max(0.0, time.perf_counter() - t0 - TICK))


async def health_reader(gw) -> None:
    """What /healthz, the watchdog and the page do on the loop, every 50 ms."""
    while True:
        gw.health()
        await asyncio.sleep(0.05)


def _nodes(port: int, keys: dict[str, bytes], feeder: str, done: threading.Event,
           times: dict[str, int], timeout: float) -> None:
    async def feed(stop: asyncio.Event):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        key, seq, rng = keys[feeder], 0, random.Random(1)
        while not stop.is_set():
            seq += 1
            w.write(frames.encode(key, frames.DATA, feeder, seq,
                                  loadsim.noise_pack(feeder, 1_700_000_000 + 60 * seq, rng)))
            await asyncio.sleep(0.05)
        w.close()

    async def node(nid: str, writers: list):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
        key = keys[nid]
        hello = {"fw": "storm", "boot": 1, "kind": "energy", "bn": f"urn:dev:ops:{nid}:",
                 "interval": 60}
        w.write(frames.encode(key, frames.HELLO, nid, 1, hello))
        deframer = frames.Deframer()
        while data := await r.read(4096):
            for cobs in deframer.feed(data):
                f = frames.decode(cobs, lambda n: key)
                if f.kind == frames.TIME:
                    times[nid] = f.seq
                    return

    async def main():
        stop = asyncio.Event()
        feeding = asyncio.create_task(feed(stop))
        await asyncio.sleep(0.3)  # the first slow commit has begun
        writers: list = []
        try:
            await asyncio.wait_for(asyncio.gather(*(node(n, writers) for n in keys
                                                    if n != feeder)), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            stop.set()
            await feeding
            for w in writers:
                w.close()
            done.set()
    asyncio.run(main())


def storm(work: Path, nodes: int = 200, hold: float = 2.0, variant: str = "after",
          timeout: float = 120.0) -> dict:
    """Run one storm; the loop's lateness samples (seconds) during it, the TIME seq each node
    got, and the spool's downlink table afterwards (read with sqlite3, apart from the gateway)."""
    import sqlite3
    work.mkdir(parents=True, exist_ok=True)
    keys = loadsim.provision_nodes(nodes + 1, work / "nodes.json", prefix="storm")
    feeder = next(iter(keys))
    port = free_port()
    cfg = Config(gateway_id="storm", listen=[f"tcp://127.0.0.1:{port}"],
                 brokers=["mqtt://127.0.0.1:9"], spool=str(work / "spool"),
                 nodes=str(work / "nodes.json"), metrics="", stall=0.01)
    samples: list[float] = []
    times: dict[str, int] = {}

    async def main():
        gw = Gateway(cfg)
        fast = slow_commits(gw.spool, hold)
        if variant == "before":
            old_downlink(gw)
        run = asyncio.create_task(gw.run())
        await gw.tcp_started.wait()
        monitor = asyncio.create_task(lateness(samples))
        reader = asyncio.create_task(health_reader(gw))
        done = threading.Event()
        th = threading.Thread(target=_nodes, args=(port, keys, feeder, done, times, timeout),
                              daemon=True)
        t0 = time.monotonic()
        th.start()
        while not done.is_set():
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - t0
        monitor.cancel()
        reader.cancel()
        fast()
        gw.stop()
        await run
        return gw, seconds

    gw, seconds = asyncio.run(main())  # returns once the worker threads are done
    from prometheus_client import generate_latest
    metrics = generate_latest(gw.metrics.registry).decode()
    gw.spool.close()
    downlink = getattr(gw, "downlink", None)
    db = sqlite3.connect(work / "spool" / "spool.sqlite3")
    reserved = dict(db.execute("SELECT node, seq FROM downlink"))
    db.close()
    return {"samples": samples, "times": times, "reserved": reserved, "seconds": seconds,
            "nodes": nodes, "hold": hold, "metrics": metrics,
            "stats": getattr(downlink, "stats", None)}


def stall_ms(samples: list[float]) -> tuple[float, float]:
    """p99 and max of the lateness, in ms."""
    return (loadsim.percentile(samples, 99) * 1000, max(samples) * 1000)
