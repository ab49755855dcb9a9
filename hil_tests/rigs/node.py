"""What the node-side fault tests share: an emulated board (the real firmware in the unix port,
restarted by its supervisor as a board resets) on a VirtualCable whose two directions are tapped
before and after their faults, the real gateway in-process on the cable's other end (so its
Verifier counters are read directly), a real mosquitto and a persistent-session subscriber.

What a test compares:
- the node's own record of what it produced: `trace` in node.json makes Node.emit write
  "emitted <seq> <t> <names>" to stderr after the frame is in flash;
- what reached the gateway's spool (`seen`: node, seq) and the broker ((name, t) per record);
- the cable's streams: every frame the gateway was handed that is not byte for byte one the node
  wrote is corrupted and must be a counted rejection (Verifier.rejected, or a deframer overflow),
  and every byte-exact one an accepted frame."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from .gateway import wait_until  # noqa: F401 (the tests use it from here too)
from sensorcity.protocol import frames, senml
from sensorcity.gateway.config import Config
from sensorcity.gateway.service import Gateway
from sensorcity.tools.sim.emulate import EmulatedNode
from .loadsim import Stats, Subscriber
from sensorcity.tools.bench.provision import provision
from .serialmock import Faults, VirtualCable

HEALTH = ("uptime", "heap_free", "heap_peak", "link_resends", "rx_rejects", "store_depth",
          "store_dropped", "boot_count", "clock_steps", "safe_mode")
# rejections a line fault can cause; the others must stay at zero on one honest node's link
LINE_REASONS = ("cobs", "short", "too-long", "crc", "schema", "tag")


@dataclass
class Tap(Faults):
    """Faults that also keep one direction's bytes as the sender wrote them (before) and as the
    receiver got them (after). `cut` (optional) may shorten a chunk after the faults."""

    before: bytearray = field(default_factory=bytearray)
    after: bytearray = field(default_factory=bytearray)
    cut: object = None
    cut_bytes: int = 0

    def apply(self, data, rng):
        self.before += data
        out = super().apply(data, rng)
        if self.cut is not None:
            kept = self.cut(out)
            self.cut_bytes += len(out) - len(kept)
            out = kept
        self.after += out
        return out


def split_frames(stream: bytes) -> list[bytes]:
    """The delimited frames of a stream, as any deframer sees them (empty runs are no frame; a
    last run without its delimiter is not a frame yet)."""
    return [f for f in bytes(stream).split(b"\x00")[:-1] if f]


def corrupted_frames(tap: Tap) -> tuple[int, int]:
    """(frames delivered byte-exact, frames delivered that the sender never wrote)."""
    sent = set(split_frames(tap.before))
    got = split_frames(tap.after)
    clean = sum(1 for f in got if f in sent)
    return clean, len(got) - clean


class ValueSubscriber(Subscriber):
    """loadsim's persistent-session subscriber, keeping each record's value too."""

    def __init__(self, *a, **kw):
        self.values: dict = {}
        super().__init__(*a, **kw)

    def on_message(self, client, userdata, msg) -> None:
        super().on_message(client, userdata, msg)
        with self.lock:
            for r in senml.resolve(cbor2.loads(msg.payload)):
                self.values[(r.n, int(r.t))] = r.v


class GatewayThread:
    """gateway.service.Gateway on its own event loop in a thread."""

    def __init__(self, work: Path, registry: Path, broker_port: int, serial: list[str],
                 gateway_id: str = "faults", **settings):
        self.cfg = Config(gateway_id=gateway_id, serial=serial,
                          brokers=[f"mqtt://127.0.0.1:{broker_port}"],
                          spool=str(work / "spool"), nodes=str(registry), metrics="",
                          batch_age=0.2, **settings)
        self.gw: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "gateway did not start"

    def _run(self):
        async def main():
            self.gw = Gateway(self.cfg)
            self.loop = asyncio.get_running_loop()
            self.ready.set()
            await self.gw.run()
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc
            self.ready.set()

    def link(self, device: str):
        return self.gw.ingest.stats.links.get(f"serial:{device}")

    def wait_open(self, device: str, timeout: float = 10):
        def is_open():
            assert self.error is None, f"the gateway stopped: {self.error!r}"
            return (s := self.link(device)) is not None and s.open
        wait_until(is_open, timeout, f"the gateway to open {device}")

    def seen(self, node_id: str) -> set[int]:
        """Sequence numbers of the node's data frames in the spool (stored, published or not)."""
        db = sqlite3.connect(Path(self.cfg.spool) / "spool.sqlite3")
        try:
            return {s for (s,) in db.execute("SELECT seq FROM seen WHERE node = ?", (node_id,))}
        finally:
            db.close()

    def stored_order(self, node_id: str) -> list[int]:
        """The node's data frames' sequence numbers in the order the spool took them."""
        db = sqlite3.connect(Path(self.cfg.spool) / "spool.sqlite3")
        try:
            return [s for (s,) in db.execute(
                "SELECT seq FROM seen WHERE node = ? ORDER BY rowid", (node_id,))]
        finally:
            db.close()

    def call(self, fn):
        """Run fn() on the gateway's loop; its result."""
        done = threading.Event()
        out = []
        self.loop.call_soon_threadsafe(lambda: (out.append(fn()), done.set()))
        assert done.wait(5)
        return out[0]

    def stop(self):
        if self.loop and self.gw:
            self.loop.call_soon_threadsafe(self.gw.stop)
        self.thread.join(30)


class Board:
    """An EmulatedNode (the real firmware, unix port) supervised in a thread, on a cable."""

    def __init__(self, config: Path, port: str, log: Path, emulated=EmulatedNode, **kw):
        self.log_path = log
        self.node = emulated(config, port, log=open(log, "a"), **kw)
        self.node.start()
        self.thread = threading.Thread(target=self.node.supervise, daemon=True)
        self.thread.start()

    def kill(self):
        """Power cut: SIGKILL the board's process; the supervisor restarts it."""
        proc = self.node.proc
        if proc and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    def stop(self):
        self.node.stop()
        self.thread.join(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Emitted:
    seq: int
    t: int
    names: tuple


def emitted(log: str) -> list[Emitted]:
    """The node's frames from its trace; "renumbered <old> <new>" (a new epoch's floor, docs/
    protocol.md) gives the latest frame numbered <old> its new number."""
    out: list[Emitted] = []
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "emitted":
            out.append(Emitted(int(parts[1]), int(parts[2]), tuple(parts[3:])))
        elif len(parts) == 3 and parts[0] == "renumbered":
            old = next((e for e in reversed(out) if e.seq == int(parts[1])), None)
            if old is not None:
                old.seq = int(parts[2])
    return out


class Rig:
    """One node on a tapped cable, the gateway in-process, a subscriber on the broker."""

    def __init__(self, work: Path, broker_port: int, kind: str = "energy", interval: int = 1,
                 node_settings: dict | None = None, up: Faults | None = None,
                 down: Faults | None = None, gateway: dict | None = None,
                 emulated=EmulatedNode, clock=None, **node_kw):
        self.work = work
        self.registry = work / "nodes.json"
        self.config = work / f"{kind}.json"
        self.node_id = f"{kind}-1"
        cfg = provision(self.node_id, kind, self.registry, self.config, interval=interval)
        cfg.update({"trace": True, **(node_settings or {})})
        self.config.write_text(json.dumps(cfg))
        self.base = cfg["base_name"]
        self.up = up if up is not None else Tap()  # node -> gateway
        self.down = down if down is not None else Tap()  # gateway -> node
        self.cable = VirtualCable(self.up, self.down)
        self.stats = Stats()
        gid = "faults"
        self.sub = ValueSubscriber(broker_port, f"sensorcity/v1/{gid}/batch", self.stats,
                              f"sub-{os.getpid()}-{time.monotonic_ns()}")
        assert self.sub.subscribed.wait(10)
        self.gateway = GatewayThread(work, self.registry, broker_port, [self.cable.b], gid,
                                     **(gateway or {}))
        self.gateway.wait_open(self.cable.b)
        if clock is not None:  # the gateway's time frames from this clock (seconds)
            self.gateway.gw.downlink.clock = clock
        self.board = None
        self.emulated = emulated
        self.node_kw = node_kw
        self.start_board()

    def start_board(self):
        self.board = Board(self.config, self.cable.a, self.work / "node.log",
                           emulated=self.emulated, **self.node_kw)

    def produced(self) -> list[Emitted]:
        return emitted(self.board.log())

    def arrived(self, e: Emitted) -> bool:
        return all((self.base + n, e.t) in self.stats.records for n in e.names)

    def missing(self, upto: list[Emitted]) -> list[Emitted]:
        seen = self.gateway.seen(self.node_id)
        return [e for e in upto if e.seq not in seen or not self.arrived(e)]

    def wait_delivered(self, upto: list[Emitted], timeout: float = 40) -> None:
        """Every frame in upto in the spool and every record of it at the broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.missing(upto):
            time.sleep(0.5)
        left = self.missing(upto)
        assert not left, (f"{len(left)} of {len(upto)} produced frames never arrived: "
                          f"{[(e.seq, e.t) for e in left[:10]]}")

    def health(self) -> list[dict]:
        """The health records at the broker, one dict per interval time, oldest first."""
        by_t: dict = {}
        with self.sub.lock:
            for (name, t), v in self.sub.values.items():
                q = name[len(self.base):]
                if name.startswith(self.base) and q in HEALTH:
                    by_t.setdefault(t, {"t": t})[q] = v
        return [by_t[t] for t in sorted(by_t)]

    def finish(self) -> dict:
        """Stop the node, let the gateway read what is on the line, stop everything; the
        counters: the cable's faults, the gateway's verdicts, duplicates."""
        self.board.stop()
        link = self.cable.b
        wait_until(lambda: self.gateway.link(link).bytes >= len(self.up.after), 10,
                   "the gateway to read the whole line")
        gw = self.gateway.gw
        rejected = self.gateway.call(gw.verdict.rejections)
        out = {
            "accepted": gw.verifier.stats.accepted, "rejected": rejected,
            "overflows": self.gateway.link(link).overflows,
            "duplicate_frames": gw.commit.stats.duplicates, "stored": gw.commit.stats.stored,
            "faults_up": dict(self.up.counts), "faults_down": dict(self.down.counts),
            "broker_duplicates": sum(n - 1 for n in self.stats.records.values() if n > 1),
        }
        out["clean_up"], out["corrupted_up"] = corrupted_frames(self.up)
        out["clean_down"], out["corrupted_down"] = corrupted_frames(self.down)
        self.gateway.stop()
        self.sub.stop()
        self.cable.close()
        return out

    def close(self):
        """Teardown whatever finish() did not reach (a failed test)."""
        for step in (self.board.stop, self.gateway.stop, self.sub.stop, self.cable.close):
            try:
                step()
            except Exception:  # noqa: BLE001 (best effort after a failure)
                pass


def line_rejections(c: dict) -> int:
    return sum(c["rejected"][r] for r in LINE_REASONS) + c["overflows"]


def frame_counts(c: dict) -> dict:
    return {k: c[k] for k in ("accepted", "clean_up", "corrupted_up", "overflows",
                              "duplicate_frames", "broker_duplicates")}


def gaps(ts: list[int], interval: int) -> list[tuple[int, int]]:
    return [(a, b) for a, b in zip(ts, ts[1:]) if b - a != interval]


def series(es: list[Emitted], name: str) -> list[int]:
    return sorted(e.t for e in es if name in e.names)


