# One pipeline per sensor kind: read the hardware, close a record set for every interval, each
# in turn under its own start, however late the task runs (docs/node.md, "Clock").
import asyncio
import time

import board
from records import energy_records, noise_records, traffic_records


def _noise_meter(cfg):
    from noise import NoiseMeter
    return NoiseMeter(cfg.get("rate", board.MIC_RATE),
                      cfg.get("mic_sensitivity", board.MIC_SENSITIVITY_DBFS),
                      cfg.get("calibration_db", 0.0), cfg.get("mic", board.MIC))


async def noise(node, meter=None):
    from node import Intervals  # loaded by the node already; replay uses the records alone
    cfg = node.cfg
    rate = cfg.get("rate", board.MIC_RATE)
    if meter is None:
        meter = _noise_meter(cfg)
    reader = asyncio.StreamReader(node.hw.microphone(rate))
    buf = bytearray(1024)  # 5 ms at 48 kHz; the I2S driver's DMA buffers (ibuf) hold the rest
    mv = memoryview(buf)
    iv = Intervals(node)
    whole = False  # the first, partial interval after boot is not reported
    while True:
        n = await reader.readinto(mv)
        if n:
            meter.feed(mv, n // 4)
            node.progress += 1
        # an ended interval closes once it holds a whole 125 ms level reading: after a stall
        # each late one takes the next block read (the microphone's buffer, then new sound)
        while iv.ended() and iv.leapt():  # the intervals a clock step leapt over: flagged
            pass
        if iv.ended() and (meter.heard() or not whole):
            levels = meter.take()
            iv.close(noise_records(meter.QUANTITIES, levels) if whole and levels else None)
            whole = True


async def energy(node):
    from node import Intervals
    from energy import EnergyInterval
    from p1 import P1Reader
    p1 = P1Reader()
    line = _p1_cipher(node.cfg, p1)
    agg = EnergyInterval(p1, line)
    iv = Intervals(node)

    def telegram(values, have):
        # a telegram read after the oldest open interval ended, once that one has one, is the
        # next one's: after a stall, the UART's buffered telegrams go one to each late interval
        while iv.ended() and iv.leapt():  # no telegram goes to an interval the clock leapt
            pass
        if iv.ended() and agg.seen:
            iv.close(energy_records(agg.take(exact=True)))
        agg.add(values, have)
    p1.on_telegram = telegram
    asyncio.create_task(_read_p1(node, line or p1))
    waited = 0  # ms a catch-up has waited for the telegrams the UART buffered
    while True:
        # intervals close on the clock, whether or not the meter is talking; a catch-up waits
        # up to an interval for the buffered telegrams (they close the late intervals one
        # each), then closes the rest on the clock: the lag stays within an interval
        await asyncio.sleep_ms(200)
        waited = waited + 200 if iv.ended() and iv.late() else 0
        while iv.ended():
            if iv.leapt():
                continue
            if iv.late() and waited < node.interval * 1000:
                break
            iv.close(energy_records(agg.take(exact=True)))


def _p1_cipher(cfg, reader):
    """An encrypted meter's line (node.json "p1_key", and "p1_auth_key" where it is not the
    Smarty's published one: 32 hex digits each), or None. The keys stay in node.json."""
    if not cfg.get("p1_key"):
        return None
    from binascii import unhexlify
    from dlms import P1Cipher, SMARTY_AUTH_KEY
    auth = cfg.get("p1_auth_key")
    return P1Cipher(reader, unhexlify(cfg["p1_key"]),
                    unhexlify(auth) if auth else SMARTY_AUTH_KEY)


async def _read_p1(node, p1):
    reader = asyncio.StreamReader(node.hw.p1_uart(node.cfg.get("dsmr", 5)))
    buf = bytearray(512)
    mv = memoryview(buf)
    while True:
        n = await reader.readinto(mv)
        if n and p1.feed(buf, n):  # no slice: nothing allocated per read
            node.progress += 1


async def traffic(node):
    from node import Intervals
    from loops import EdgeRing, Loops
    cfg = node.cfg
    lanes = cfg.get("lanes", 1)
    ring = EdgeRing(256)
    iv = Intervals(node)
    end_us = time.ticks_add(time.ticks_us(), -node.clock.since_ms(iv.start) * 1000)
    det = Loops(lanes, cfg.get("loop_length", 2.0), cfg.get("loop_spacing", 4.0),
                min_speed=cfg.get("min_speed", 5.0), start_us=end_us)
    pins = node.hw.loop_inputs(lanes, ring)  # noqa: F841 (kept alive: their IRQs fill the ring)
    close_ms = None  # when the oldest ended interval may close, in ticks_ms
    while True:
        await asyncio.sleep_ms(100)
        det.drain(ring)
        node.progress += 1
        while iv.ended():
            if iv.leapt():
                continue
            if close_ms is None:
                # it closes once its last vehicle can have reached loop B (grace_us later)
                end_us, late = iv.end_us(end_us)
                close_ms = time.ticks_add(time.ticks_ms(), det.grace_us // 1000 - late)
            if time.ticks_diff(time.ticks_ms(), close_ms) < 0:
                break
            det.drain(ring)
            iv.close(traffic_records(det.take(end_us)))
            close_ms = None


# the modules each pipeline imports, loaded by pipeline(kind, load=True)
_MODULES = {"noise": ("aweight", "levels", "noise"), "energy": ("p1", "energy"),
            "traffic": ("loops",)}


def pipeline(kind, cfg=None):
    """The pipeline of a sensor kind: a coroutine function of the node. Given the node's config,
    its modules are imported and a noise node's meter built now, before the node's tasks start:
    the native code (4 KiB) and the LN histogram (3.2 KiB) each need a hole that large, which a
    64 KiB heap has at boot and not once the link and the store have run a while."""
    if kind not in _MODULES:
        raise ValueError("node.json: unknown sensor " + kind)
    if cfg is not None:
        for name in _MODULES[kind] + (("gcm", "dlms") if cfg.get("p1_key") else ()):
            __import__(name)
        if kind == "noise":
            meter = _noise_meter(cfg)
            return lambda node: noise(node, meter)
    return {"noise": noise, "energy": energy, "traffic": traffic}[kind]
