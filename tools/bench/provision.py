"""Provision a node: a fresh per-node key, its config file and its entry in the gateway registry."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from ...errors import FatalError
from ...gateway.registry import NODE_ID as _ID
from ...gateway.registry import NodeEntry, Registry
from ...kinds import get as get_kind
from ...protocol.senml import base_name_error
from . import boards

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")


def parse_location(text: str) -> tuple[float, float]:
    """'52.0907,5.1214' (WGS84 degrees, latitude first) -> (lat, lon)."""
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise FatalError(f"--location {text!r}: give LAT,LON in degrees, e.g. 52.0907,5.1214") \
            from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise FatalError(f"--location {text!r}: latitude within +-90, longitude within +-180")
    return lat, lon


def base_name_for(node_id: str, mac: str | None = None) -> str:
    """RFC 9039 URN: urn:dev:mac when the board's MAC is known, else an organisation-scoped one
    (PEN 32473 is the documentation number of RFC 5612: set your own with --base-name)."""
    if mac:
        return f"urn:dev:mac:{mac.replace(':', '').replace('-', '').lower()}:"
    return f"urn:dev:org:32473-sensorcity-{node_id}:"


def provision(node_id: str, sensor: str, registry: Path, out: Path, interval: int = 60,
              base_name: str | None = None, mac: str | None = None, calibration_db: float = 0.0,
              location: tuple[float, float] | None = None, board: str = "esp32-devkitc",
              p1_key: str | None = None, p1_auth_key: str | None = None) -> dict:
    if not _ID.match(node_id):
        raise FatalError(f"node id {node_id!r}: use 1-32 letters, digits, '.', '_' or '-'")
    get_kind(sensor)
    spec = boards.load(board)
    if sensor not in spec["sensors"]:
        raise FatalError(f"board {board} has no {sensor} input; it carries "
                         f"{', '.join(spec['sensors'])}")
    if base_name is not None and base_name_error(base_name):
        raise FatalError(f"--base-name: {base_name_error(base_name)}")
    if mac and not _MAC.match(mac):
        raise FatalError(f"--mac {mac!r}: give six hex bytes, e.g. 24:0a:c4:12:34:56")
    if not -40.0 <= calibration_db <= 40.0:
        raise FatalError(f"--calibration {calibration_db}: an offset beyond 40 dB is a wrong "
                         f"microphone or sensitivity, not a calibration")
    if (p1_key or p1_auth_key) and sensor != "energy":
        raise FatalError("--p1-key: only an energy node reads a P1 port")
    key = secrets.token_bytes(32)
    cfg = {
        "node_id": node_id, "key": key.hex(), "sensor": sensor,
        "base_name": base_name or base_name_for(node_id, mac), "interval": interval,
        "board": board, "calibration_db": calibration_db,
    }
    if location:
        cfg["location"] = {"lat": location[0], "lon": location[1]}
    if p1_key or p1_auth_key:  # an encrypted meter's keys: in node.json only, never registered
        cfg["p1_key"] = p1_key_hex("--p1-key", p1_key)
        if p1_auth_key:
            cfg["p1_auth_key"] = p1_key_hex("--p1-auth-key", p1_auth_key)
    # the registry first: an entry it refuses (a base name overlapping another node's) leaves
    # no node.json behind
    Registry.add(registry, NodeEntry(node_id, key, cfg["base_name"], sensor))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=1)
    return cfg


def p1_key_hex(option: str, value: str | None) -> str:
    """A P1 meter's 16-byte key given as 32 hex digits, or a FatalError that says so."""
    try:
        key = bytes.fromhex(value or "")
    except ValueError:
        key = b""
    if len(key) != 16:
        raise FatalError(f"{option}: give the meter's 16-byte key as 32 hex digits")
    return key.hex()
