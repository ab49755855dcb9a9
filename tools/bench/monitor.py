"""`sensorcity monitor`: sit on a node's link as the gateway would and show what it says: each
frame decoded and verified with the node's key, its health, and a sparkline of its noise levels.

Passive by default (nothing is sent, so a node resends unacked data: the monitor shows what the
node holds). With ack=True it is a one-node gateway: hello gets an ack and the time, data an ack,
so the node drains its store and its clock is set. Nothing is stored: acked data is gone."""

from __future__ import annotations

import json
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from ...errors import FatalError
from ...protocol import frames, senml
from ...gateway.registry import Registry
from . import port as ports

BARS = "▁▂▃▄▅▆▇█"


def keys_from(config: str | None = None, registry: str | None = None) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    if registry:
        keys.update({n: e.key for n, e in Registry.load(registry).nodes.items()})
    if config:
        try:
            cfg = json.loads(Path(config).read_text())
            keys[cfg["node_id"]] = bytes.fromhex(cfg["key"])
        except (OSError, ValueError, KeyError) as exc:
            raise FatalError(f"cannot read node config {config}: {exc}") from exc
    if not keys:
        raise FatalError("give --config NODE.json or --registry REGISTRY: frames are verified "
                         "with the node's key")
    return keys


def sparkline(values) -> str:
    vals = list(values)
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * len(BARS)))] for v in vals)


class Link:
    """A node's serial link from the host: frames in (verified), frames out (signed)."""

    def __init__(self, serial, keys: dict[str, bytes]):
        self.serial = serial
        self.keys = keys
        self.deframer = frames.Deframer()
        self.rejected: dict[str, int] = {}
        self.pending: list[frames.Frame] = []
        self._seq = int(time.time() * 1000)  # downlink numbers above any the node saw before

    @classmethod
    @contextmanager
    def open(cls, port: str, keys: dict[str, bytes]):
        import serial
        ports.check(port)
        try:
            s = serial.serial_for_url(port, baudrate=115200, timeout=0.1, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise ports.translate(port, exc) from exc
        try:
            yield cls(s, keys)
        finally:
            s.close()

    def frames(self, timeout: float | None = None):
        """Verified frames as they come, until timeout seconds pass (None: forever)."""
        end = None if timeout is None else time.monotonic() + timeout
        while end is None or time.monotonic() < end:
            if self.pending:
                yield self.pending.pop(0)
                continue
            data = self.serial.read(4096)
            for raw in self.deframer.feed(data):
                try:
                    self.pending.append(frames.decode(raw, self.keys.get))
                except frames.FrameError as exc:
                    self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1

    def send(self, node: str, kind: int, body) -> int:
        if kind == frames.ACK:
            seq = 0
        else:
            self._seq += 1
            seq = self._seq
        self.serial.write(frames.encode(self.keys[node], kind, node, seq, body))
        return seq

    def answer(self, frame: frames.Frame) -> None:
        """What the gateway answers: ack data and hello, and the time after a hello."""
        if frame.kind in (frames.DATA, frames.HELLO):
            self.send(frame.node, frames.ACK, frame.seq)
        if frame.kind == frames.HELLO:
            epoch = frames.hello_epoch(frame)
            if epoch is not None:  # a new epoch sends nothing before its floor; the gateway
                # raises it later if it knows higher numbers (docs/protocol.md)
                self.send(frame.node, frames.SEQ, {"epoch": epoch, "floor": 0})
            self.send(frame.node, frames.TIME, int(time.time() * 1000))


def describe(frame: frames.Frame, levels: deque) -> str:
    kind = frames.KIND_NAMES[frame.kind]
    head = f"{time.strftime('%H:%M:%S')} {frame.node} {kind:<5} #{frame.seq}"
    if frame.kind != frames.DATA:
        return f"{head} {json.dumps(frame.body, default=str)}"
    try:
        records = senml.resolve(frame.body)
    except senml.SenMLError as exc:
        return f"{head} bad SenML: {exc}"
    parts = []
    for r in records:
        short = r.n.rsplit(":", 1)[-1]
        v = f"{r.v:.1f}" if isinstance(r.v, float) else str(r.v)
        parts.append(f"{short}={v}{r.u or ''}" if r.u in ("dB", "%") else f"{short}={v}")
        if short == "LAeq":
            levels.append(float(r.v))
    when = time.strftime("%H:%M:%S", time.gmtime(records[0].t)) if records else ""
    line = f"{head} t={when} " + " ".join(parts)
    return line + (f"  LAeq {sparkline(levels)}" if levels and any(
        r.n.endswith("LAeq") for r in records) else "")


def monitor(port: str, keys: dict[str, bytes], ack: bool = False, seconds: float | None = None,
            out=print, width: int = 40) -> dict:
    """Show frames until `seconds` pass (None: until Ctrl-C); returns counts by frame kind."""
    counts = {name: 0 for name in frames.KIND_NAMES.values()}
    levels: deque = deque(maxlen=width)
    with Link.open(port, keys) as link:
        try:
            for frame in link.frames(seconds):
                counts[frames.KIND_NAMES[frame.kind]] += 1
                out(describe(frame, levels))
                if ack:
                    link.answer(frame)
        finally:
            if link.rejected:
                out("rejected: " + ", ".join(f"{k}={v}" for k, v in link.rejected.items()))
    return dict(counts, rejected=sum(link.rejected.values()))
