"""Gateway configuration: TOML at /etc/sensorcity/gateway.toml, overridden by command-line flags."""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import FatalError

DEFAULT_PATH = Path("/etc/sensorcity/gateway.toml")


@dataclass
class Config:
    gateway_id: str = field(default_factory=lambda: socket.gethostname())
    listen: list[str] = field(default_factory=list)      # tcp://HOST:PORT
    serial: list[str] = field(default_factory=list)      # device paths
    brokers: list[str] = field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    topic_prefix: str = "sensorcity/v1"
    mqtt_version: int = 5
    spool: str = "/var/lib/sensorcity"
    nodes: str = "/etc/sensorcity/nodes.json"
    batch_max: int = 200
    batch_age: float = 1.0
    time_every: float = 3600.0

    def check(self) -> None:
        for url in self.listen:
            if not url.startswith("tcp://") or ":" not in url[6:]:
                raise FatalError(f"listen {url!r}: use tcp://HOST:PORT")
        if self.mqtt_version not in (3, 4, 5):
            raise FatalError(f"mqtt_version {self.mqtt_version}: use 5 (or 4 for MQTT 3.1.1)")
        if self.batch_max < 1 or self.batch_age <= 0:
            raise FatalError("batch_max must be >= 1 and batch_age > 0")
        if not self.brokers:
            raise FatalError("no broker configured")


def load(path: Path | str | None, **overrides) -> Config:
    """The file (if any), then every override that is not None."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            if path != DEFAULT_PATH:
                raise FatalError(f"config {path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise FatalError(f"config {path}: {exc}") from exc
        except OSError as exc:
            raise FatalError(f"config {path}: {exc.strerror}") from exc
    known = {f.name: f for f in fields(Config)}
    unknown = set(values) - set(known)
    if unknown:
        raise FatalError(f"config {path}: unknown setting {sorted(unknown)[0]!r}")
    for k, v in overrides.items():
        if v is not None and v != []:
            values[k] = v
    try:
        cfg = Config(**values)
    except TypeError as exc:
        raise FatalError(f"config {path}: {exc}") from exc
    for f in fields(Config):
        v = getattr(cfg, f.name)
        expected = {"list[str]": list, "str": str, "int": int, "float": (int, float)}[f.type]
        if not isinstance(v, expected) or isinstance(v, bool):
            raise FatalError(f"config {path}: {f.name} must be {f.type}, not {v!r}")
    cfg.check()
    return cfg
