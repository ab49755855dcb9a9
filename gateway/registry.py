"""The node registry `sensorcity provision` writes: node id -> key, base name, sensor kind."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FatalError


@dataclass(frozen=True)
class NodeEntry:
    node_id: str
    key: bytes
    base_name: str
    sensor: str


class Registry:
    def __init__(self, nodes: dict[str, NodeEntry]):
        self.nodes = nodes

    def key_for(self, node_id: str) -> bytes | None:
        entry = self.nodes.get(node_id)
        return entry.key if entry else None

    @classmethod
    def load(cls, path: Path | str) -> "Registry":
        path = Path(path)
        if not path.exists():
            return cls({})
        try:
            raw = json.loads(path.read_text())
            nodes = {
                nid: NodeEntry(nid, bytes.fromhex(e["key"]), e["base_name"], e["sensor"])
                for nid, e in raw.get("nodes", {}).items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FatalError(f"node registry {path} is unreadable: {exc!r}") from exc
        return cls(nodes)

    @staticmethod
    def add(path: Path | str, entry: NodeEntry) -> None:
        """Add or replace a node; the file holds keys, so it is written 0600, atomically."""
        path = Path(path)
        raw = {"nodes": {}}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
            except ValueError as exc:
                raise FatalError(f"node registry {path} is not JSON: {exc}") from exc
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
