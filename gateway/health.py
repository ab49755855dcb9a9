"""The loopback HTTP endpoint: GET /metrics (Prometheus text) and GET /healthz (200 "ok" while
the pipeline is alive and the uplink progressed recently or has nothing to send, else 503 and
the reason). A deliberately tiny HTTP/1.0 server on the service's event loop."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


log = logging.getLogger("sensorcity.gateway.health")
REQUEST_MAX = 8192


async def serve(host: str, port: int, gw, started: asyncio.Event | None = None):
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = head[:REQUEST_MAX].decode("latin-1").split(" ", 2)
            path = path.split("?", 1)[0]
            if method != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                body = await asyncio.to_thread(generate_latest, gw.metrics.registry)
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path == "/healthz":
                ok, why = gw.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", (why + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(client, host, port)
    except OSError as exc:
        # observability must not take the data path down: say so and run without it
        log.error("metrics %s:%d: %s; running without /metrics and /healthz", host, port,
                  exc.strerror or exc)
        if started is not None:
            started.port = None
            started.set()
        return
    if started is not None:
        started.port = server.sockets[0].getsockname()[1]
        started.set()
    log.info("metrics and health on http://%s:%d/", host, started.port if started else port)
    async with server:
        await server.serve_forever()
