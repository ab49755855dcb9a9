"""Synthetic sensor input for emulated nodes: what a microphone, a smart meter's P1 port and a
pair of loop detectors would deliver, generated on the host."""

from __future__ import annotations

import math
import random
import struct

from .p1data import telegram


def tone_block(rate: int, freq: float, dbfs: float, n: int, phase0: int = 0) -> bytes:
    """n little-endian int32 samples of a sine at dbfs (re a full-scale sine, as microphone
    datasheets use it), as I2S delivers them."""
    amp = 10 ** (dbfs / 20) * 2 ** 31
    w = 2 * math.pi * freq / rate
    return struct.pack(f"<{n}i", *(max(-2**31, min(2**31 - 1, int(amp * math.sin(w * (phase0 + i)))))
                                   for i in range(n)))


class StreetNoise:
    """A 1 kHz tone whose level wanders like a street's (55-80 dB SPL), one second at a time."""

    def __init__(self, rate: int = 48000, sensitivity_dbfs: float = -26.0, seed: int = 0):
        self.rate = rate
        self.sens = sensitivity_dbfs
        self.rng = random.Random(seed)
        self.level = 65.0
        self.pos = 0
        self._cache: dict[int, bytes] = {}

    def second(self) -> bytes:
        self.level = min(80.0, max(55.0, self.level + self.rng.uniform(-3, 3)))
        key = round(self.level)
        if key not in self._cache:  # 1 kHz has whole periods in a second: blocks join seamlessly
            self._cache[key] = tone_block(self.rate, 1000.0, key - 94.0 + self.sens, self.rate)
        return self._cache[key]


class Meter:
    """A DSMR 5 meter: a telegram a second, counters rising with a varying load."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.import_t1 = 1234.567
        self.import_t2 = 2345.678
        self.gas = 456.789

    def second(self) -> bytes:
        kw = round(self.rng.uniform(0.2, 3.5), 3)
        self.import_t1 = round(self.import_t1 + kw / 3600, 3)
        self.gas = round(self.gas + 0.0002, 3)
        return telegram(self.import_t1, self.import_t2, kw, self.gas,
                        volts=round(self.rng.uniform(228, 234), 1))


class Traffic:
    """Vehicles on one lane: (time, pin, state) edges for loops A and B."""

    def __init__(self, pins=(32, 35), spacing: float = 4.0, loop_length: float = 2.0,
                 seed: int = 0):
        self.rng = random.Random(seed)
        self.pins = pins
        self.spacing = spacing
        self.loop_length = loop_length

    def vehicle(self, t0: float) -> list[tuple[float, int, int]]:
        speed = self.rng.uniform(30, 70) / 3.6
        length = self.rng.choice([4.2, 4.5, 4.8, 8.0, 16.5])
        occ = (length + self.loop_length) / speed
        dt = self.spacing / speed
        a, b = self.pins
        return sorted([(t0, a, 1), (t0 + occ, a, 0), (t0 + dt, b, 1), (t0 + dt + occ, b, 0)])
