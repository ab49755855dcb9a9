"""Attacks on the gateway's status page in a real browser (Debian's headless Chromium, as in
test_gateway_page_browser.py) on a real `sensorcity gateway run`, with protocol-level nodes on
TCP and no broker: markup from the outside shown as text, and a page that comes back by itself
after its event stream was refused or its gateway restarted."""

import socket
import time

import pytest

from rigs.gateway import Gateway, wait_until
from sensorcity.protocol import frames
from test_gateway_page_browser import browser

pytestmark = [pytest.mark.adversarial, pytest.mark.browser]
NO_BROKER = ["mqtt://127.0.0.1:9"]


def shown(driver, css, what="textContent"):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e[arguments[1]])",
        css, what)


def test_markup_from_the_outside_is_shown_as_text(tmp_path):
    """What strangers and nodes put in frames reaches the page: the node name a forged frame
    claims (anyone on the TCP listener), a node's firmware version and units (a node, or whoever
    holds its key). Each is markup that would run a script if the page wrote it as HTML (the
    page's CSP would block inline script too: the test looks for any element made of it)."""
    gw = Gateway(tmp_path, NO_BROKER, gateway_id="gw-xss")
    driver = None
    img = "<img src=x onerror=pwned=1>"
    try:
        node = gw.node()
        node.send(1, kind=frames.HELLO, value={"fw": img, "boot": 1, "interval": 60,
                                               "kind": "energy", "bn": "urn:dev:ops:n1:"})
        node.sock.sendall(frames.encode(node.key, frames.DATA, "n1", 2, [
            {-2: "urn:dev:ops:n1:", -3: int(time.time()), 0: "power_import",
             1: "<b id=unit>W</b>", 2: 5}]))
        wait_until(lambda: {1, 2} <= node.acked, 15, "the hello and the data frame acked")
        claims = [img.replace("1", "2"), "</script><script>pwned=3</script>",
                  "\"><svg onload=pwned=4>", "n1<style>*{display:none}</style>"]
        with socket.create_connection(("127.0.0.1", gw.tcp), timeout=5) as s:
            for claim in claims:
                s.sendall(frames.encode(bytes(32), frames.DATA, claim, 7, []))
            driver = browser()
            driver.get(f"http://127.0.0.1:{gw.http}/")
            wait_until(lambda: len(shown(driver, "#rejections li")) >= len(claims) and
                       shown(driver, 'section.node [data-q="power_import"]'), 30,
                       "the forged frames under their reasons and the node's reading")
        texts = " | ".join(shown(driver, "#rejections li"))
        for claim in claims:
            assert claim in texts, (claim, texts)
        assert shown(driver, 'section.node [data-f="fw"] b') == [img]
        assert shown(driver, 'section.node [data-q="power_import"] [data-v]') == \
            ["5 <b id=unit>W</b>"]
        made = driver.execute_script(
            "return [window.pwned, document.querySelectorAll('main img, main svg, main b#unit, "
            "main script, main style').length]")
        assert made == [None, 0], made
    finally:
        if driver is not None:
            driver.quit()
        gw.stop()


def test_the_page_comes_back_after_a_refused_stream_and_a_restart(tmp_path):
    """The page's event stream refused (503: 16 streams are open, other tabs and phones) and
    the gateway restarted (systemd, an upgrade): an EventSource that gets an HTTP error gives up
    for good (the HTML standard: no reconnection after a status that is not 200), so the page
    would say "no update" until someone reloads it. It must come back by itself."""
    gw = Gateway(tmp_path / "first", NO_BROKER, gateway_id="gw-first")
    port = gw.http
    driver, held, second = None, [], None
    try:
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            held.append(s)
        wait_until(lambda: gw.get("/events")[0] == 503, 15, "the streams' cap taken")
        driver = browser()
        driver.get(f"http://127.0.0.1:{port}/")
        driver.execute_script("window.loadedOnce = 'yes'")  # gone if the page ever reloads
        time.sleep(2)  # its stream asked for (when the page loads) and refused
        assert shown(driver, "#gw") == ["gateway"]  # no snapshot yet
        for s in held:
            s.close()
        held.clear()
        wait_until(lambda: shown(driver, "#gw") == ["gw-first"] and
                   shown(driver, "#live") == ["live"], 60, "the page live once a stream is free")
        gw.stop()
        wait_until(lambda: shown(driver, "#live") != ["live"], 30, "the page seeing it gone")
        second = Gateway(tmp_path / "second", NO_BROKER, gateway_id="gw-second",
                         metrics=f"127.0.0.1:{port}")
        wait_until(lambda: shown(driver, "#gw") == ["gw-second"] and
                   shown(driver, "#live") == ["live"], 60, "the page on the restarted gateway")
        assert driver.execute_script("return window.loadedOnce") == "yes"
    finally:
        for s in held:
            s.close()
        if driver is not None:
            driver.quit()
        gw.stop()
        if second is not None:
            second.stop()


def test_the_page_fits_a_small_phone_whatever_the_strings(tmp_path):
    """A 320 px wide phone (the narrowest still about), and the longest strings the outside
    can put on the page: a forged frame's claimed node name (64 characters, no space), a
    firmware version (32), a quantity (32) and a unit (16). Nothing may need a sideways scroll."""
    gw = Gateway(tmp_path, NO_BROKER, gateway_id="gw-narrow-" + "x" * 20)
    driver = None
    try:
        node = gw.node()
        node.send(1, kind=frames.HELLO, value={"fw": "v" * 32, "boot": 1, "interval": 60,
                                               "kind": "energy", "bn": "urn:dev:ops:n1:"})
        node.sock.sendall(frames.encode(node.key, frames.DATA, "n1", 2, [
            {-2: "urn:dev:ops:n1:", -3: int(time.time()), 0: "q" * 32, 1: "u" * 16, 2: 5}]))
        wait_until(lambda: {1, 2} <= node.acked, 15, "the hello and the data frame acked")
        with socket.create_connection(("127.0.0.1", gw.tcp), timeout=5) as s:
            s.sendall(frames.encode(bytes(32), frames.DATA, "N" * 64, 7, []))
            driver = browser()
            driver.set_window_size(320, 800)
            driver.get(f"http://127.0.0.1:{gw.http}/")
            wait_until(lambda: shown(driver, "#rejections li") and
                       shown(driver, "section.node .readings"), 30, "the page's snapshot")
        width = driver.execute_script("return [document.documentElement.scrollWidth, "
                                      "document.documentElement.clientWidth, innerWidth]")
        driver.save_screenshot(str(tmp_path / "page-320.png"))
        assert width[2] <= 320 and width[0] <= width[1], width
    finally:
        if driver is not None:
            driver.quit()
        gw.stop()
