# One pipeline per sensor kind: read the hardware, close a record set at each interval boundary.
import asyncio
import time

import board
from cbor import Decimal


def noise_records(quantities, levels):
    return [(q, "dB", round(v, 2)) for q, v in zip(quantities, levels)]


def energy_records(exact):
    """EnergyInterval.take(exact=True) -> records; values in thousandths go on the link as decimal
    fractions, so no 32-bit float rounds a meter's counter."""
    return [(n, u, v if u == "count" else Decimal(v, -3)) for n, u, v in exact]


def traffic_records(records):
    # a board's float holds about 7 digits: 3 decimals keep km/h and % as measured
    return [(n, u, round(v, 3) if isinstance(v, float) else v) for n, u, v in records]


def _noise_meter(cfg):
    from noise import NoiseMeter
    return NoiseMeter(cfg.get("rate", board.MIC_RATE),
                      cfg.get("mic_sensitivity", board.MIC_SENSITIVITY_DBFS),
                      cfg.get("calibration_db", 0.0), cfg.get("mic", board.MIC))


async def noise(node, meter=None):
    cfg = node.cfg
    rate = cfg.get("rate", board.MIC_RATE)
    if meter is None:
        meter = _noise_meter(cfg)
    reader = asyncio.StreamReader(node.hw.microphone(rate))
    buf = bytearray(1024)  # 5 ms at 48 kHz; the I2S driver's DMA buffers (ibuf) hold the rest
    mv = memoryview(buf)
    start = node.interval_start()
    whole = False  # the first, partial interval after boot is not reported
    while True:
        n = await reader.readinto(mv)
        if n:
            meter.feed(mv, n // 4)
            node.progress += 1
        now = node.interval_start()
        if now != start:
            levels = meter.take()
            if whole and levels:
                node.emit(start, noise_records(meter.QUANTITIES, levels))
            start = now
            whole = True


async def energy(node):
    from energy import EnergyInterval
    from p1 import P1Reader
    p1 = P1Reader()
    line = _p1_cipher(node.cfg, p1)
    agg = EnergyInterval(p1, line)
    asyncio.create_task(_read_p1(node, line or p1))
    start = node.interval_start()
    while True:
        # intervals close on the clock, whether or not the meter is talking
        await asyncio.sleep_ms(200)
        now = node.interval_start()
        if now != start:
            node.emit(start, energy_records(agg.take(exact=True)))
            start = now


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
    from loops import EdgeRing, Loops
    cfg = node.cfg
    lanes = cfg.get("lanes", 1)
    ring = EdgeRing(256)
    start = node.interval_start()
    start_us = time.ticks_add(time.ticks_us(), -(node.epoch_ms() - start * 1000) * 1000)
    det = Loops(lanes, cfg.get("loop_length", 2.0), cfg.get("loop_spacing", 4.0),
                min_speed=cfg.get("min_speed", 5.0), start_us=start_us)
    pins = node.hw.loop_inputs(lanes, ring)  # noqa: F841 (kept alive: their IRQs fill the ring)
    pending = []  # (interval start, its end in ticks_us, when it may close in ticks_ms)
    while True:
        await asyncio.sleep_ms(100)
        det.drain(ring)
        node.progress += 1
        now = node.interval_start()
        if now != start:
            # the boundary in ticks; the interval closes once its last vehicle can have reached
            # loop B (Loops.grace_us later)
            late_us = (node.epoch_ms() - now * 1000) * 1000
            end_us = time.ticks_add(time.ticks_us(), -late_us)
            pending.append((start, end_us, time.ticks_add(time.ticks_ms(), det.grace_us // 1000)))
            start = now
        while pending and time.ticks_diff(time.ticks_ms(), pending[0][2]) >= 0:
            t, end_us, _ = pending.pop(0)
            det.drain(ring)
            node.emit(t, traffic_records(det.take(end_us)))


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
