"""The gateway's status page in process: the node table's rows from frames fed through the
service's handler, the page's token rule off loopback, /metrics and /healthz beside it on the
aiohttp app, and no secret in the page, its snapshot or its event stream."""

import asyncio
import base64
import json
import logging

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sensorcity.gateway import health
from sensorcity.gateway.config import Config
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.registry import NodeEntry, Registry
from sensorcity.gateway.service import Gateway
from sensorcity.protocol import frames

KEYS = {"e1": bytes(range(1, 33)), "n1": bytes(range(101, 133))}
PASSWORD = "Br0kerPassw0rd-xyzzy"
TOKEN = "page-token-0123456789abcdef"


def gateway(tmp_path, **kw) -> Gateway:
    reg = tmp_path / "nodes.json"
    for node, kind in (("e1", "energy"), ("n1", "noise")):
        Registry.add(reg, NodeEntry(node, KEYS[node], f"urn:dev:test:{node}:", kind))
    cfg = Config(gateway_id="gw-page", spool=str(tmp_path / "spool"), nodes=str(reg),
                 brokers=[f"mqtt://ops:{PASSWORD}@127.0.0.1:9"], metrics="", **kw)
    return Gateway(cfg)


def data(node, seq, t, records, key=None):
    pack = [{-2: f"urn:dev:test:{node}:", -3: t, **records[0]}] + records[1:]
    return frames.encode(key or KEYS[node], frames.DATA, node, seq, pack)[:-1]


def power(v):
    return [{0: "power_import", 1: "W", 2: v}, {0: "energy_import_t1", 1: "kWh", 2: 1234.567}]


def health_records(uptime, heap, boots):
    return [{0: "uptime", 1: "s", 2: uptime}, {0: "heap_free", 1: "B", 2: heap},
            {0: "store_depth", 1: "count", 2: 0}, {0: "boot_count", 1: "count", 2: boots}]


async def feed(gw, link, cobs):
    return await gw.handle(link, cobs)


def row(view, node):
    return next(r for r in view if r["node"] == node)


def test_node_rows_from_the_service_hooks(tmp_path):
    async def main():
        gw = gateway(tmp_path)
        link = Link("tcp:127.0.0.1:5000", lambda b: None)
        hello = frames.encode(KEYS["e1"], frames.HELLO, "e1", 1,
                              {"fw": "0.2.0", "boot": 1, "interval": 30, "kind": "energy",
                               "bn": "urn:dev:test:e1:"})[:-1]
        assert await feed(gw, link, hello) is True
        r = row(gw.nodes.view(1000.0), "e1")
        assert (r["firmware"], r["interval_s"], r["interval_from"]) == ("0.2.0", 30, "hello")
        # two intervals 10 s apart: the records' times say 10 s, not the hello's 30
        assert await feed(gw, link, data("e1", 2, 960, power(100)))
        assert await feed(gw, link, data("e1", 3, 960, health_records(50, 90000, 4)))
        assert await feed(gw, link, data("e1", 4, 970, power(250.5)))
        # an older interval arriving late (a backlog) does not replace the latest reading
        assert await feed(gw, link, data("e1", 5, 940, power(7)))
        assert await feed(gw, link, data("e1", 6, 1, power(1), key=bytes(32))) is False
        v = gw.nodes.view(gw.nodes.rows["e1"].last_seen + 5)
        e1, n1 = row(v, "e1"), row(v, "n1")
        assert e1["interval_s"] == 10 and e1["interval_from"] == "records"
        assert e1["seq"] == 5 and e1["frames_hour"] == 4 and e1["link"] == link.name
        assert e1["rejects"] == 1 and e1["state"] == "ok"
        got = {x["q"]: (x["v"], x["u"], x["t"]) for x in e1["readings"]}
        assert got == {"power_import": (250.5, "W", 970), "energy_import_t1": (1234.567, "kWh", 970)}
        assert e1["health"] == {"uptime": 50, "heap_free": 90000, "store_depth": 0,
                                "boot_count": 4, "t": 960}
        assert n1["state"] == "never" and n1["sensor"] == "noise" and n1["readings"] == []
        # three intervals (30 s) without a frame: stale
        assert row(gw.nodes.view(gw.nodes.rows["e1"].last_seen + 31), "e1")["state"] == "stale"
        # rejections: the forged frame under its reason with the node it claims; a frame naming
        # no registered node adds a rejection but no row
        assert await feed(gw, link, frames.encode(bytes(32), frames.DATA, "ghost", 1, [])[:-1]) \
            is False
        assert await feed(gw, link, b"\x05abc") is False
        recent = [(x["reason"], x["node"], x["link"]) for x in gw.nodes.recent]
        assert recent == [("tag", "e1", link.name), ("unknown-node", "ghost", link.name),
                          ("cobs", None, link.name)]
        assert set(gw.nodes.rows) == {"e1", "n1"}
        # the spool's verdicts: a duplicate and a stale frame count on the node
        gw.nodes.outcome("e1", "duplicate")
        gw.nodes.outcome("e1", "stale")
        e1 = row(gw.nodes.view(0), "e1")
        assert e1["duplicates"] == 1 and e1["rejects"] == 2
        assert gw.nodes.recent[-1]["reason"] == "stale"
        gw.spool.close()
    asyncio.run(main())


async def _get(client, path, **kw):
    async with client.get(path, **kw) as r:
        return r.status, await r.text()


async def _first_event(session, url, **kw):
    async with session.get(url, **kw) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        async for line in r.content:
            if line.startswith(b"data: "):
                return json.loads(line[6:])


async def _serve(gw, rule_host):
    """The app on a loopback port, judging requests as a listener on `rule_host` would."""
    server = TestServer(health.app(gw, rule_host), host="127.0.0.1")
    await server.start_server()
    return server, aiohttp.ClientSession(f"http://127.0.0.1:{server.port}")


def test_the_page_off_loopback_needs_its_token(tmp_path):
    async def main():
        for token in ("", TOKEN):
            gw = gateway(tmp_path / (token or "none"), page_token=token)
            server, http = await _serve(gw, "192.0.2.7")
            try:
                # /metrics and /healthz keep today's rule: whoever reaches the listener
                status, text = await _get(http, "/metrics")
                assert status == 200 and "sensorcity_gateway_frames_accepted_total" in text
                assert await _get(http, "/healthz") == (200, "ok\n")
                for path in ("/", "/status.json", "/events"):
                    status, text = await _get(http, path)
                    assert status == (404 if not token else 401), (path, status)
                    if token:
                        assert (await _get(http, path, headers={
                            "Authorization": "Bearer wrong-token-0123456789"}))[0] == 401
                        assert (await _get(http, path + "?token=" + TOKEN[:-1]))[0] == 401
                if token:
                    status, html = await _get(http, "/", headers={
                        "Authorization": f"Bearer {TOKEN}"})
                    assert status == 200 and "<html" in html
                    status, text = await _get(http, f"/status.json?token={TOKEN}")
                    assert status == 200 and json.loads(text)["gateway"]["id"] == "gw-page"
                    snap = await _first_event(http, f"/events?token={TOKEN}")
                    assert snap["gateway"]["id"] == "gw-page"
            finally:
                await http.close()
                await server.close()
                gw.spool.close()
    asyncio.run(main())


def test_page_assets_are_its_own(tmp_path):
    """One static page: no external script, style, font or image; the CSP allows none."""
    async def main():
        gw = gateway(tmp_path)
        server, http = await _serve(gw, "127.0.0.1")
        try:
            async with http.get("/") as r:
                html = await r.text()
                csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "connect-src 'self'" in csp
            for marker in ("http://", "https://", "//cdn", "<link", "src="):
                assert marker not in html, marker
            assert '<meta name="viewport"' in html
        finally:
            await http.close()
            await server.close()
            gw.spool.close()
    asyncio.run(main())


@pytest.mark.adversarial
def test_no_secret_reaches_the_page_or_its_stream(tmp_path):
    async def main():
        gw = gateway(tmp_path, page_token=TOKEN)
        link = Link("tcp:127.0.0.1:5001", lambda b: None)
        for node in KEYS:
            hello = frames.encode(KEYS[node], frames.HELLO, node, 1, {
                "fw": "0.2.0", "boot": 1, "interval": 60, "bn": f"urn:dev:test:{node}:",
                "kind": "energy" if node == "e1" else "noise"})[:-1]
            await feed(gw, link, hello)
        await feed(gw, link, data("e1", 2, 960, power(100)))
        await feed(gw, link, data("e1", 3, 1, power(1), key=KEYS["n1"]))   # n1's key on e1
        secrets = [PASSWORD, TOKEN, f"ops:{PASSWORD}"]
        for key in KEYS.values():
            secrets += [key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                        key.decode("latin-1")]
        assert gw.uplink.brokers[0].password == PASSWORD   # the gateway does hold it
        server, http = await _serve(gw, "127.0.0.1")
        try:
            served = [(await _get(http, "/"))[1], (await _get(http, "/status.json"))[1],
                      json.dumps(await _first_event(http, "/events"))]
        finally:
            await http.close()
            await server.close()
            gw.spool.close()
        snap = json.loads(served[1])
        assert row(snap["nodes"], "e1")["readings"] and snap["rejections"]["by_reason"]["tag"] == 1
        assert snap["uplink"]["brokers"] == ["127.0.0.1:9"]
        for text in served:
            for secret in secrets:
                assert secret not in text, secret
    asyncio.run(main())


def test_snapshot_has_the_spool_the_uplink_and_pending_commands(tmp_path):
    from sensorcity.gateway import status

    async def main():
        gw = gateway(tmp_path)
        gw.commands.submit("sensorcity/v1/gw-page/cmd/n1", b'{"op": "interval", "value": 30}')
        gw.spool.store([("e1", 7, 960.0, b"\x80", 3)], now=1000.0)
        snap = status.snapshot(gw, status.spool_state(gw.spool), now=1010.0)
        assert row(snap["nodes"], "n1")["pending"][0]["op"] == "interval"
        assert row(snap["nodes"], "n1")["pending"][0]["value"] == 30
        assert row(snap["nodes"], "e1")["pending"] == []
        sp = snap["spool"]
        assert (sp["frames"], sp["readings"], sp["oldest_age_s"]) == (1, 3, 10.0)
        assert sp["used_bytes"] <= sp["budget_bytes"]
        up = snap["uplink"]
        assert (up["connected"], up["broker"], up["brokers"], up["in_flight"]) == \
            (False, None, ["127.0.0.1:9"], 0)
        assert snap["gateway"]["id"] == "gw-page" and snap["gateway"]["healthy"]
        json.dumps(snap, allow_nan=False)
        gw.spool.close()
    asyncio.run(main())


@pytest.mark.adversarial
def test_a_token_of_any_bytes_is_refused_not_a_crash(tmp_path, caplog):
    """Anyone who reaches a listener off loopback sends Authorization: Bearer with bytes that
    are not UTF-8 (aiohttp hands them on as surrogates): the comparison must refuse them (401)
    like any wrong token, not fail with a 500 and a traceback in the log for each request."""
    async def main():
        gw = gateway(tmp_path, page_token=TOKEN)
        server, http = await _serve(gw, "192.0.2.7")
        try:
            for auth in (b"Bearer \xff\xfe", b"Bearer " + TOKEN.encode()[:-1] + b"\xe9",
                         b"Bearer \xc3\xa9" + TOKEN.encode()[2:], b"\xff" + TOKEN.encode()):
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(b"GET /status.json HTTP/1.1\r\nHost: gw\r\nAuthorization: %s\r\n"
                        b"Connection: close\r\n\r\n" % auth)
                answer = await asyncio.wait_for(r.read(), 10)
                w.close()
                assert answer.startswith(b"HTTP/1.1 401"), (auth, answer[:200])
            for query in ("%FF%FE", "%ED%A0%80", TOKEN[:-1] + "%E9", "%00" + TOKEN):
                assert (await _get(http, "/status.json?token=" + query))[0] == 401, query
        finally:
            await http.close()
            await server.close()
            gw.spool.close()
    asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
