"""Proof that the noise meter's viper kernel never leaves int32 on a board, for any input.

The unix port's viper ints are 64-bit, so a test run there cannot see a 32-bit wrap. Instead
this bounds every intermediate of firmware/noise.py's _run() by the l1 norm of the impulse
response from the input to it: |node[n]| <= ||h||_1 * max|x|, with max|x| = 2**28 (the raw word
>> 3). The coefficients are the quantised words the firmware itself puts in its state array
(printed by a unix-port run), the l1 norms come from their exact frequency responses on a
2**18-point grid (every pole has decayed below 1e-40 of its start by then), and the rounding
errors the integer code adds are bounded separately and added on top.

Operands of each split product (E * (v >> 15), E * (v & 0x7FFF), E < 2**15) must stay below
2**30 in magnitude, and every sum below 2**31. The squaring and the Fast detector work on the
clipped output and are bounded by construction (see the comments in noise.py and docs/noise.md).
"""
import numpy as np
import pytest

from conftest import run_micropython

pytestmark = pytest.mark.unixport

X = 2.0 ** 28
M = 2 ** 18
RATES = (16000, 32000, 48000)
MICS = ("ideal", "inmp441", "ics43434", "sph0645")

DUMP = """
from noise import NoiseMeter
for rate in %r:
    for mic in %r:
        m = NoiseMeter(rate, mic=mic)
        print(rate, mic, " ".join(str(v) for v in m._st))
""" % (RATES, MICS)


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    script = tmp_path_factory.mktemp("dump") / "dump.py"
    script.write_text(DUMP)
    out = {}
    for line in run_micropython(script).stdout.split("\n"):
        if line.strip():
            rate, mic, *w = line.split()
            out[(int(rate), mic)] = [int(v) for v in w]
    return out


def sections(w):
    """(kind, b0, b1, a1, error per step, coefficients) per section, from the state words."""
    def frac(e, sh):
        return e / 2.0 ** (15 + sh)

    def hp(e):
        return ("hp", 1 - e / 2, -(1 - e / 2), -(1 - e), 2.0, (e,))

    out = [hp(frac(w[23], w[24])), hp(frac(w[23], w[24]))]
    if w[29]:
        gam, eta, eps = frac(w[30], w[31]), frac(w[32], w[33]), frac(w[34], w[35])
        out.append(("eq", 1 + gam, -(1 + gam - eta), -(1 - eps), 4.5, (gam, eta, eps)))
    out += [hp(frac(w[25], w[26])), hp(frac(w[27], w[28]))]
    p, g, gb = w[36] / 2 ** 15, w[37] / 2 ** 15, w[38] / 2 ** 15
    out += [("lp", g, gb, -p, 1.5, (p, g, gb))] * 2
    return out


def response(sec, z1):
    _, b0, b1, a1, *_ = sec
    return (b0 + b1 * z1) / (1 + a1 * z1)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("mic", MICS)
def test_kernel_stays_in_int32(words, rate, mic):
    secs = sections(words[(rate, mic)])
    z1 = np.exp(-2j * np.pi * np.arange(M // 2 + 1) / M)
    h = np.ones_like(z1)
    node_l1 = [1.0]          # the input itself
    node_d1 = [2.0]          # l1 norm of its first difference
    for sec in secs:
        h = h * response(sec, z1)
        imp = np.fft.irfft(h, M)
        node_l1.append(np.abs(imp).sum())
        node_d1.append(np.abs(np.diff(np.r_[0.0, imp])).sum())
    # Rounding: each section adds at most `err` per step inside its recursion, which its own
    # pole accumulates (l1 = 1/(1-p)) and every later section passes on (at most its l1 norm).
    sec_l1 = []
    for sec in secs:
        imp = np.fft.irfft(response(sec, z1), M)
        sec_l1.append(np.abs(imp).sum())
    err = [0.0]
    for k, sec in enumerate(secs):
        pole = -sec[3]
        err.append(err[-1] * sec_l1[k] + sec[4] / (1 - pole))
    for k, sec in enumerate(secs):
        kind = sec[0]
        xin = node_l1[k] * X + err[k]        # this section's input, x and x1
        d = node_d1[k] * X + 2 * err[k]      # t = x - x1
        y = node_l1[k + 1] * X + err[k + 1]  # its output, y and y1
        if kind == "hp":
            assert y + d / 2 + 1 < 2 ** 30, (k, "u = y1 + t/2")
            assert y + d + 1 < 2 ** 31, (k, "y1 + t")
        elif kind == "eq":
            gam, eta, eps = sec[5]
            assert max(d, xin, y) < 2 ** 30, (k, "eq operands")
            assert y + d + gam * d + eta * xin + eps * y + 3 < 2 ** 31, (k, "eq sum")
        else:
            p, g, gb = sec[5]
            assert max(xin, y) < 2 ** 30, (k, "lp operands")
            assert p * y + g * xin + gb * xin + 3 < 2 ** 31, (k, "lp sum")
    # The accumulated rounding is a worst case, not noise (the tone tests show the noise), and
    # it must leave the headroom above full scale (2**28) essentially untouched.
    assert err[-1] < 2 ** 20, err[-1]
