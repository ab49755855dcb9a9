"""Gateway configuration: TOML at /etc/sensorcity/gateway.toml, overridden by command-line flags.
Every broken setting is refused with one line that names it."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import tempfile
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from ..errors import FatalError
from .spool import DEFAULT_MAX_MB as DEFAULT_SPOOL_MB

DEFAULT_PATH = Path("/etc/sensorcity/gateway.toml")
TYPES = {"list[str]": list, "str": str, "int": int, "float": (int, float), "bool": bool,
         "bool | None": (bool, type(None))}


def default_registry() -> str:
    """Under systemd the registry (it holds keys) comes in as a credential, else from /etc."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and Path(creds, "nodes.json").exists():
        return str(Path(creds, "nodes.json"))
    return "/etc/sensorcity/nodes.json"


def default_password_file() -> str:
    """Under systemd the MQTT password may come in as the credential `mqtt-password`."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and Path(creds, "mqtt-password").exists():
        return str(Path(creds, "mqtt-password"))
    return ""


def shown(url: str) -> str:
    """A broker URL as it may be printed: scheme, host and port, never its userinfo."""
    u = urlparse(url if "://" in url else f"mqtt://{url}")
    return f"{u.scheme}://{u.netloc.rpartition('@')[2]}"


def read_password(path: str) -> str:
    """The file's first line; one line naming the file (never its content) if unreadable."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FatalError(f"password_file {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise FatalError(f"password_file {path}: empty (the password is its first line)")
    return password


def is_loopback(host: str) -> bool:
    """localhost or a loopback address. Not *.localhost: a resolver may send those to DNS."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, tls: bool | None = None) -> "Broker":
        """mqtts:// is always TLS; mqtt:// is plain only to a loopback host or with tls = false
        (credentials and readings must not cross a street cabinet's network in clear)."""
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        try:
            port = u.port
        except ValueError:
            port = -1
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname or port == -1:
            raise FatalError(f"broker {shown(url)!r}: use mqtt://HOST:PORT or "
                             f"mqtts://HOST:PORT")
        secure = u.scheme == "mqtts" or tls is True
        if not secure and tls is None and not is_loopback(u.hostname):
            raise FatalError(f"broker {shown(url)!r}: plain MQTT to a host that is not "
                             f"loopback; use mqtts:// with ca/cert/key, or set tls = false to "
                             f"allow it")
        return cls(u.hostname, port or (8883 if secure else 1883), secure, u.username,
                   u.password)


@dataclass
class Config:
    gateway_id: str = field(default_factory=lambda: socket.gethostname())
    listen: list[str] = field(default_factory=list)      # tcp://HOST:PORT
    serial: list[str] = field(default_factory=list)      # device paths or globs, watched
    serial_baud: int = 115200
    brokers: list[str] = field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    tls: bool | None = None                              # None: TLS unless the broker is loopback
    ca: str = ""                                         # CA bundle (default: the system's)
    cert: str = ""                                       # client certificate (PEM)
    key: str = ""                                        # its private key (PEM)
    topic_prefix: str = "sensorcity/v1"
    mqtt_version: int = 5
    session_expiry: int = 7 * 24 * 3600                  # seconds the broker keeps our session
    keepalive: int = 30                                  # MQTT keepalive (PINGREQ) seconds
    replay_window: float = 10.0                          # s of acked batches re-sent after a lost link
    password_file: str = field(default_factory=lambda: default_password_file())
    spool: str = "/var/lib/sensorcity"
    spool_max_mb: int = DEFAULT_SPOOL_MB                 # disk budget; oldest intervals go above it
    nodes: str = field(default_factory=lambda: default_registry())
    batch_max: int = 200
    batch_age: float = 1.0
    time_every: float = 3600.0
    cmd_resend: float = 5.0                              # a command is resent until its node acks
    metrics: str = "127.0.0.1:9108"                      # HOST:PORT of /metrics and /healthz; "" off
    page_token: str = ""                                 # the status page off loopback needs it
    stall: float = 60.0                                  # uplink silent this long with a backlog: unhealthy
    drain: float = 5.0                                   # seconds SIGTERM allows to publish what is pending
    tcp_links_max: int = 1024                            # at most (and the file limit allows less)
    tcp_auth_timeout: float = 10.0                       # a new TCP link's time to send a valid frame
    tcp_idle: float = 900.0                              # silence before a TCP link is closed

    def check(self) -> None:
        if not self.gateway_id or any(c in self.gateway_id for c in "/+#") or \
                not self.gateway_id.isprintable():
            raise FatalError(f"gateway_id {self.gateway_id!r}: no '/', '+', '#' or control "
                             f"characters (it is an MQTT topic level)")
        if any(not level or any(c in level for c in "+#") or not level.isprintable()
               for level in self.topic_prefix.split("/")):
            raise FatalError(f"topic_prefix {self.topic_prefix!r}: MQTT topic levels joined by "
                             f"'/', none empty, no '+', '#' or control characters")
        for url in self.listen:
            host, _, port = url[6:].rpartition(":")
            if not url.startswith("tcp://") or not host or not port.isdigit() or \
                    int(port) > 65535:
                raise FatalError(f"listen {url!r}: use tcp://HOST:PORT (port 0..65535)")
        if self.mqtt_version not in (3, 4, 5):
            raise FatalError(f"mqtt_version {self.mqtt_version}: use 5 (or 4 for MQTT 3.1.1)")
        if self.batch_max < 1 or self.batch_age <= 0:
            raise FatalError("batch_max must be >= 1 and batch_age > 0")
        if not self.brokers:
            raise FatalError("no broker configured")
        if not 2 <= self.keepalive <= 65535:
            raise FatalError(f"keepalive {self.keepalive}: seconds, 2..65535")
        if self.replay_window < 0:
            raise FatalError(f"replay_window {self.replay_window}: seconds >= 0 (0: off)")
        self.broker_list()
        if bool(self.cert) != bool(self.key):
            raise FatalError("cert and key go together: set both or neither")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise FatalError(f"{name} {path}: no such file")
        if self.metrics:
            host, _, port = self.metrics.rpartition(":")
            if not host or not port.isdigit() or int(port) > 65535:
                raise FatalError(f"metrics {self.metrics!r}: use HOST:PORT (or \"\" for none)")
        if self.page_token and (len(self.page_token) < 16 or not self.page_token.isascii()
                                or not self.page_token.isprintable() or " " in self.page_token):
            raise FatalError("page_token: at least 16 printable ASCII characters, no spaces")
        if self.spool_max_mb < 4:
            raise FatalError(f"spool_max_mb {self.spool_max_mb}: at least 4")
        if self.session_expiry < 0 or self.cmd_resend <= 0 or self.stall <= 0 or self.drain < 0:
            raise FatalError("session_expiry, drain must be >= 0; cmd_resend, stall > 0")
        for name in ("time_every", "serial_baud", "tcp_links_max", "tcp_auth_timeout",
                     "tcp_idle"):
            if not getattr(self, name) > 0:
                raise FatalError(f"{name} {getattr(self, name)}: must be above 0")

    def check_spool(self) -> None:
        """The spool directory is there and writable, or can be made (check-config)."""
        path = Path(self.spool)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            if not path.is_dir():
                raise NotADirectoryError(f"{path} is not a directory")
            with tempfile.TemporaryDirectory(dir=path):  # as root, os.access says yes to all
                pass
        except OSError as exc:
            raise FatalError(f"spool {self.spool}: cannot write in {path} "
                             f"({exc.strerror or exc})") from exc

    def broker_list(self) -> list[Broker]:
        """The brokers, each with the password of password_file (a URL may carry a user
        name; a password there is accepted for old configs, but not beside password_file)."""
        brokers = [Broker.parse(b, self.tls) for b in self.brokers]
        if self.password_file:
            password = read_password(self.password_file)
            for url, b in zip(self.brokers, brokers):
                if b.password is not None:
                    raise FatalError(f"broker {shown(url)!r}: a password in the URL and "
                                     f"password_file; keep only password_file")
                b.password = password
        return brokers


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
        except (OSError, UnicodeDecodeError) as exc:
            raise FatalError(f"config {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    known = {f.name: f for f in fields(Config)}
    unknown = set(values) - set(known)
    if unknown:
        raise FatalError(f"config {path}: unknown setting {sorted(unknown)[0]!r}")
    for k, v in overrides.items():
        if v is not None and v != []:
            values[k] = v
    for k in ("nodes", "spool", "ca", "cert", "key", "password_file"):
        if isinstance(values.get(k), str):
            values[k] = os.path.expandvars(values[k])  # "$CREDENTIALS_DIRECTORY/client.key"
    cfg = Config(**values)
    for f in fields(Config):
        v = getattr(cfg, f.name)
        expected = TYPES[f.type]
        if not isinstance(v, expected) or (isinstance(v, bool) and bool not in
                                           (expected if isinstance(expected, tuple) else
                                            (expected,))):
            what = "" if f.name in ("brokers", "password_file") else f", not {v!r}"  # secrets
            raise FatalError(f"config {path}: {f.name} must be {f.type}{what}")
        if f.type == "float" and not math.isfinite(v):  # nan compares false: checks pass
            raise FatalError(f"config {path}: {f.name} must be a finite number, not {v!r}")
        if f.type == "list[str]" and not all(isinstance(x, str) for x in v):
            raise FatalError(f"config {path}: {f.name} must be a list of strings")
    try:
        cfg.check()
    except FatalError as exc:
        raise FatalError(f"config {path}: {exc}" if path is not None else str(exc)) from None
    return cfg
