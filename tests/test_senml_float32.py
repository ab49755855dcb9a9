"""protocol/senml.py shortens a board's float32 value to its shortest decimal with the standard
library only (the gateway on a Pi has no numpy); numpy's float32 repr (Dragon4, shortest
round-trip) is the independent reference."""

import random
import struct

import numpy as np
import pytest

from sensorcity.protocol.senml import _shortest


def _floats_from_bits(bits):
    return [struct.unpack("<f", struct.pack("<I", b))[0] for b in bits]


def _reference(x):
    return float(str(np.float32(x)))


def test_random_float32_values_match_numpy():
    rng = random.Random(12)
    values = _floats_from_bits(rng.getrandbits(32) for _ in range(40_000))
    values = [v for v in values if np.isfinite(v)]
    bad = [(v, _shortest(v), _reference(v)) for v in values if _shortest(v) != _reference(v)]
    assert not bad[:5]


def test_powers_of_two_and_their_neighbours_match_numpy():
    # at a power of two the float32 below is half as far as the one above: the nearest decimal
    # of a length may fall outside, and another one of that length inside
    bits = []
    for e in range(1, 255):
        b = e << 23
        bits += [b - 1, b, b + 1, b | 1 << 31]
    bad = [(v, _shortest(v)) for v in _floats_from_bits(bits) if _shortest(v) != _reference(v)]
    assert not bad[:5]


@pytest.mark.parametrize("value, expected", [
    (52.284000396728516, 52.284),  # a level as an ESP32 computes it
    (0.1, 0.1),  # not a float32: left as it is
    (1e300, 1e300),  # beyond float32's range
    (3.4028234663852886e38, 3.4028235e38),  # float32's largest
    (1.401298464324817e-45, 1e-45),  # its smallest subnormal
    (-0.0, -0.0),
])
def test_known_values(value, expected):
    assert _shortest(value) == expected
