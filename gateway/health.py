"""The gateway's HTTP listener (aiohttp, on the service's event loop):

- GET /metrics: Prometheus text; GET /healthz: 200 "ok" while the pipeline is alive and the
  uplink progressed recently or has nothing to send, else 503 and the reason. Open to whoever
  reaches the listener (loopback by default), as before.
- GET /: the status page (one static HTML file, inline CSS and JS); GET /status.json: the
  snapshot (gateway/status.py); GET /events: the same snapshot as server-sent events, one a
  second. These three are served on a loopback listener to anyone, on any other listener only
  with the configured page_token (`Authorization: Bearer <token>` or `?token=<token>`), and not
  at all when none is configured.

The listener is open to whoever reaches it, so it is bounded: at most HTTP_MAX connections at
once (more are accepted and hung up at once, counted), and a connection that has not sent a
whole request head within HEAD_TIMEOUT seconds, or sits idle between requests that long, is
closed (aiohttp's keep-alive timer, which also runs before the first request). Requests its
parser refuses are answered 400 and counted; the log gets one line per LOG_EVERY seconds
about them, never a traceback each. A connection's kernel send buffer is SEND_BUFFER, and an
event stream whose viewer has not taken a snapshot in VIEWER_TIMEOUT seconds is hung up, so a
client that never reads holds little memory, and its slot only for a while.

A loopback listener answers only requests addressed to a loopback name (Host), else 421: a
site whose name resolves to 127.0.0.1 (DNS rebinding) must not read it from a local browser."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import time
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import status
from .config import is_loopback

log = logging.getLogger("sensorcity.gateway.health")
PAGE = Path(__file__).with_name("page.html")
EVERY = 1.0          # seconds between two snapshots on the event stream
STREAMS_MAX = 16     # event streams open at once (a phone or two, a laptop): bounded memory
VIEWER_TIMEOUT = 15.0  # seconds a snapshot may wait for its viewer to read, then it is hung up
SHUTDOWN = 1.0       # seconds a stop waits for open requests
HTTP_MAX = 32        # HTTP connections at once: well inside the descriptors the TCP links leave
HEAD_TIMEOUT = 5.0   # seconds for a request head to arrive, and for an idle keep-alive
SEND_BUFFER = 64 * 1024  # a connection's kernel send buffer (Linux doubles it): not 4 MiB each
LOG_EVERY = 60.0     # seconds between two log lines about malformed requests


class HttpStats:
    """What the listener refused: connections over HTTP_MAX, requests its parser refused."""

    def __init__(self):
        self.refused = self.malformed = 0
        self._logged_at = -LOG_EVERY


class _QuietLog(logging.LoggerAdapter):
    """aiohttp's server logger: a request its parser refuses (the client's fault) is counted
    and logged as one line per LOG_EVERY seconds; anything else (our fault) keeps its
    traceback."""

    def __init__(self, stats: HttpStats):
        super().__init__(log, {})
        self.stats = stats

    def exception(self, msg, *args, exc_info=True, **kw):
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if not isinstance(exc, HttpProcessingError):
            return super().exception(msg, *args, exc_info=exc_info, **kw)
        st = self.stats
        st.malformed += 1
        now = time.monotonic()
        if now - st._logged_at >= LOG_EVERY:
            st._logged_at = now
            self.warning("malformed HTTP request answered 400: %s (%d so far)",
                         str(exc).splitlines()[0][:200], st.malformed)


class _Refuse(asyncio.Protocol):
    """A connection over HTTP_MAX: hung up as soon as it is accepted, its descriptor freed."""

    def connection_made(self, transport):
        transport.abort()


class _BoundedSite(web.TCPSite):
    """A TCPSite whose connections beyond HTTP_MAX are hung up at once."""

    def __init__(self, runner, host, port, stats: HttpStats, **kw):
        super().__init__(runner, host, port, **kw)
        self.stats = stats

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server

        def factory():
            if len(server.connections) >= HTTP_MAX:
                self.stats.refused += 1
                return _Refuse()
            return server()
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        socks = self._server.sockets
        for sock in socks:  # an accepted connection takes its listener's buffer size
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._bound_port = socks[0].getsockname()[1] if socks else self._port


def _csp(html: str) -> str:
    """Only the page's own inline script and style may run: nothing from elsewhere, and no
    markup that slipped into the page could execute."""
    def digest(tag):
        m = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode()
    return (f"default-src 'none'; script-src 'sha256-{digest('script')}'; "
            f"style-src 'sha256-{digest('style')}'; connect-src 'self'; img-src data:; "
            f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Page:
    """The page, its snapshot and its event stream, behind the token rule."""

    def __init__(self, gw, host: str):
        self.gw = gw
        self.open = is_loopback(host)
        self.token = gw.cfg.page_token
        self.html = PAGE.read_bytes()
        self.headers = {"Content-Security-Policy": _csp(self.html.decode()),
                        "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                        "Cache-Control": "no-store"}
        self.streams = 0
        self.closing = asyncio.Event()
        self._cached: tuple[float, bytes] = (0.0, b"")
        self._lock = asyncio.Lock()

    def allowed(self, request: web.Request) -> web.Response | None:
        """None when the request may see the page, else the response that says why not."""
        if self.open:
            return None
        if not self.token:
            return web.Response(status=404, text="the status page is off: this listener is not "
                                                 "loopback and no page_token is configured\n")
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else request.query.get("token", "")
        # bytes that are not UTF-8 come as surrogates: compare the bytes as sent
        if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode()):
            return None
        return web.Response(status=401, text="the status page needs its token\n",
                            headers={"WWW-Authenticate": 'Bearer realm="sensorcity"'})

    async def current(self) -> bytes:
        """The snapshot as JSON, made at most once a second whatever the number of viewers."""
        async with self._lock:
            made, body = self._cached
            if time.monotonic() - made >= EVERY * 0.9 or not body:
                spool = await asyncio.to_thread(status.spool_state, self.gw.spool)
                body = json.dumps(status.snapshot(self.gw, spool), separators=(",", ":"),
                                  allow_nan=False, default=str).encode()
                self._cached = (time.monotonic(), body)
            return body

    async def index(self, request):
        return self.allowed(request) or web.Response(body=self.html, headers={
            **self.headers, "Content-Type": "text/html; charset=utf-8"})

    async def snapshot(self, request):
        return self.allowed(request) or web.Response(body=await self.current(), headers={
            "Content-Type": "application/json", "Cache-Control": "no-store"})

    async def events(self, request):
        refused = self.allowed(request)
        if refused:
            return refused
        if self.streams >= STREAMS_MAX:
            return web.Response(status=503, text=f"{STREAMS_MAX} event streams are open\n")
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                   "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # no body goes out: a stream would never end
            return web.Response(headers=headers)
        resp = web.StreamResponse(headers=headers)
        self.streams += 1
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            while not self.closing.is_set():
                event = b"data: " + await self.current() + b"\n\n"
                try:
                    await asyncio.wait_for(resp.write(event), VIEWER_TIMEOUT)
                except asyncio.TimeoutError:
                    # a viewer that reads nothing (gone out of reach, or never meant to) would
                    # hold its slot as long as its TCP lives; its EventSource comes back if it can
                    if request.transport is not None:
                        request.transport.abort()
                    break
                try:
                    await asyncio.wait_for(self.closing.wait(), EVERY)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, RuntimeError):
            pass  # the viewer went away
        finally:
            self.streams -= 1
        return resp


def _addressed_to_loopback(host: str) -> bool:
    """A Host header naming a loopback address or name, with or without its port."""
    if host.startswith("["):                  # [::1]:9108
        name = host[1:].partition("]")[0]
    else:
        name, _, port = host.rpartition(":")
        if not port.isdigit():
            name = host
    return is_loopback(name.lower())


@web.middleware
async def _loopback_names_only(request, handler):
    """A loopback listener answers only requests addressed to it by a loopback name: a page
    whose name was made to resolve to 127.0.0.1 (DNS rebinding) could otherwise read every
    answer as its own. A request without Host is no browser's."""
    host = request.headers.get("Host")
    if host is not None and not _addressed_to_loopback(host):
        return web.Response(status=421, text="this listener answers requests addressed to "
                                             "127.0.0.1, [::1] or localhost only\n")
    return await handler(request)


def app(gw, host: str) -> web.Application:
    page = Page(gw, host)

    async def metrics(request):
        body = await asyncio.to_thread(generate_latest, gw.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request):
        ok, why = gw.health()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def closing(_app):
        page.closing.set()

    a = web.Application(middlewares=[_loopback_names_only] if page.open else [])
    a.router.add_get("/metrics", metrics)
    a.router.add_get("/healthz", healthz)
    a.router.add_get("/", page.index)
    a.router.add_get("/status.json", page.snapshot)
    a.router.add_get("/events", page.events)
    a.on_shutdown.append(closing)
    return a


async def serve(host: str, port: int, gw, started: asyncio.Event | None = None):
    stats = gw.http
    runner = web.AppRunner(app(gw, host), access_log=None, handle_signals=False,
                           keepalive_timeout=HEAD_TIMEOUT, logger=_QuietLog(stats))
    await runner.setup()
    site = _BoundedSite(runner, host, port, stats, shutdown_timeout=SHUTDOWN)
    try:
        await site.start()
        if not runner.addresses:  # no socket came of it (no descriptor was left for one)
            raise OSError("no listening socket")
    except OSError as exc:
        # observability must not take the data path down: say so and run without it
        log.error("metrics %s:%d: %s; running without /metrics, /healthz and the page", host,
                  port, exc.strerror or exc)
        await runner.cleanup()
        if started is not None:
            started.port = None
            started.set()
        return
    bound = runner.addresses[0][1]
    if started is not None:
        started.port = bound
        started.set()
    log.info("metrics, health and the status page on http://%s:%d/", host, bound)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())
