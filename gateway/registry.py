"""The node registry `sensorcity provision` writes: node id -> key, base name, sensor kind."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import FatalError
from ..kinds import KINDS, NAMES
from ..protocol.senml import base_name_error


@dataclass(frozen=True)
class NodeEntry:
    node_id: str
    key: bytes
    base_name: str
    sensor: str


KEY_MIN = 16   # bytes; `sensorcity provision` makes 32
# link.cddl's node is 1..32 characters; these are safe in an MQTT topic level and a file name
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def _entry(nid: str, e: dict) -> NodeEntry:
    """One node, checked: an id link.cddl allows, a key of KEY_MIN bytes or more, a base name."""
    if not NODE_ID.match(nid):
        raise ValueError(f"node id {nid!r}: use 1-32 letters, digits, '.', '_' or '-'")
    key = bytes.fromhex(e["key"])
    if len(key) < KEY_MIN:
        raise ValueError(f"node {nid}: key of {len(key)} bytes, at least {KEY_MIN}")
    if not isinstance(e["base_name"], str) or not e["base_name"] or \
            not isinstance(e["sensor"], str):
        raise ValueError(f"node {nid}: base_name and sensor must be non-empty strings")
    why = base_name_error(e["base_name"])
    if why:
        raise ValueError(f"node {nid}: {why}")
    if e["sensor"] not in KINDS:
        raise ValueError(f"node {nid}: sensor {e['sensor']!r}: use one of {', '.join(NAMES)}")
    return NodeEntry(nid, key, e["base_name"], e["sensor"])


def overlap_error(bases: dict[str, str]) -> str | None:
    """Two nodes of which one's base name begins the other's (node id -> base name): the first
    one's key could write readings under the second's names. Sorted, such a pair is adjacent."""
    ordered = sorted(bases.items(), key=lambda kv: kv[1])
    for (a, x), (b, y) in zip(ordered, ordered[1:]):
        if y.startswith(x):
            return f"nodes {a} and {b}: base name {x!r} begins {y!r} (give each its own)"
    return None


class Registry:
    def __init__(self, nodes: dict[str, NodeEntry]):
        self.nodes = nodes

    def key_for(self, node_id: str) -> bytes | None:
        entry = self.nodes.get(node_id)
        return entry.key if entry else None

    @classmethod
    def load(cls, path: Path | str) -> "Registry":
        """The registry file; a missing one is a FatalError (a gateway without it would reject
        every frame), an empty file is a registry of no nodes."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FatalError(f"node registry {path}: no such file (write it with "
                             f"`sensorcity provision --registry {path}`)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise FatalError(f"node registry {path}: {getattr(exc, 'strerror', None) or exc}") \
                from exc
        try:
            raw = json.loads(text) if text.strip() else {}
            nodes = {nid: _entry(nid, e) for nid, e in raw.get("nodes", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FatalError(f"node registry {path} is unreadable: {exc}") from exc
        why = overlap_error({nid: e.base_name for nid, e in nodes.items()})
        if why:
            raise FatalError(f"node registry {path}: {why}")
        return cls(nodes)

    @staticmethod
    def add(path: Path | str, entry: NodeEntry) -> None:
        """Add or replace a node; the file holds keys, so it is written 0600, atomically."""
        path = Path(path)
        raw = {"nodes": {}}
        if path.exists():
            try:
                raw = json.loads(path.read_text() or '{"nodes": {}}')  # empty: no nodes yet
            except ValueError as exc:
                raise FatalError(f"node registry {path} is not JSON: {exc}") from exc
        bases = {nid: e.get("base_name") for nid, e in raw.get("nodes", {}).items()
                 if isinstance(e, dict) and isinstance(e.get("base_name"), str)}
        bases[entry.node_id] = entry.base_name
        why = base_name_error(entry.base_name) or overlap_error(bases)
        if why:
            raise FatalError(f"node {entry.node_id}: {why}")
        raw.setdefault("nodes", {})[entry.node_id] = {
            "key": entry.key.hex(), "base_name": entry.base_name, "sensor": entry.sensor}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(raw, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
