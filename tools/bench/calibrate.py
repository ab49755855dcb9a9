"""`sensorcity calibrate`: with an acoustic calibrator (94 dB SPL at 1 kHz) on the microphone,
measure the node's LAeq and set its offset so that it reads the reference.

How the node reports its level: through its ordinary records. The tool is a one-node gateway on
the link: it answers the hello with the time, asks for short intervals (command `interval`),
drops the first interval (it began before the calibrator was steady and before the change), and
takes the mean of the next `count` LAeq records. The node measures with its current offset, so
the new offset is old + reference - measured. It goes to the node in the command `calibration`
(the node keeps it in node.json and reboots; the reboot also restores its own interval) and into
the technician's copy of NODE.json."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ...errors import FatalError
from ...protocol import frames, senml
from .monitor import Link

SETTLE = 1  # intervals dropped after the interval command


def _laeq(frame) -> float | None:
    for r in senml.resolve(frame.body):
        if r.n.endswith("LAeq"):
            return float(r.v)
    return None


def write_config(path: Path, cfg: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the key
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=1)
    os.replace(tmp, path)


def calibrate(port: str, config: Path, reference: float = 94.0, seconds: int = 10,
              count: int = 1, out=print) -> dict:
    config = Path(config)
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise FatalError(f"cannot read node config {config}: {exc}") from exc
    if cfg.get("sensor") != "noise":
        raise FatalError(f"{cfg.get('node_id')} is a {cfg.get('sensor')} node: only noise "
                         f"nodes are calibrated")
    node, old = cfg["node_id"], float(cfg.get("calibration_db", 0.0))
    timeout = (SETTLE + count + 3) * seconds + 30
    with Link.open(port, {node: bytes.fromhex(cfg["key"])}) as link:
        link.send(node, frames.TIME, int(time.time() * 1000))
        link.send(node, frames.CMD, {"op": "interval", "value": int(seconds)})
        asked = time.time()
        levels: list[float] = []
        seen = 0
        for frame in link.frames(timeout):
            link.answer(frame)
            if frame.kind == frames.HELLO:  # it rebooted: ask again
                link.send(node, frames.CMD, {"op": "interval", "value": int(seconds)})
                asked, seen, levels = time.time(), 0, []
                continue
            if frame.kind != frames.DATA:
                continue
            level = _laeq(frame)
            records_t = senml.resolve(frame.body)[0].t
            if level is None or records_t < asked - seconds:
                continue  # health, or a stored record from before the calibrator
            seen += 1
            if seen <= SETTLE:
                continue
            levels.append(level)
            out(f"LAeq over {seconds} s: {level:.2f} dB")
            if len(levels) == count:
                break
        else:
            raise FatalError(f"no LAeq from {node} on {port} in {timeout} s: is it a running "
                             f"noise node? (`sensorcity monitor --port {port} --config {config}`)")
        # the mean of levels is an energy mean, as LAeq over the whole time would be
        measured = 10 * math.log10(sum(10 ** (v / 10) for v in levels) / len(levels))
        new = round(old + reference - measured, 2)
        sent = link.send(node, frames.CMD, {"op": "calibration", "value": new})
        for frame in link.frames(10):
            link.answer(frame)
            if frame.kind == frames.ACK and frame.body == sent:
                break
        else:
            raise FatalError(f"{node} did not acknowledge its new offset: nothing was changed")
    cfg["calibration_db"] = new
    write_config(config, cfg)
    return {"measured": round(measured, 2), "reference": reference, "old": old, "new": new}
