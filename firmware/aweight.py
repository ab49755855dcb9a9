# A-weighting (IEC 61672-1) and microphone equalisation as a cascade of first-order sections,
# designed at run time for the sample rate. Pure float code: it runs once at start-up, on the
# board and under CPython alike. Formulas avoid 1 - p for poles near z = 1, so that they keep
# their precision in the ESP32's single-precision floats.
import math

# Pole frequencies of the analytic A-weighting, IEC 61672-1 Annex E.
F1 = 20.598997
F2 = 107.65265
F3 = 737.86223
F4 = 12194.217

# Low-frequency -3 dB point of each microphone's acoustic high-pass roll-off, modelled as first
# order. INMP441: datasheet table 1 (60 Hz). ICS-43434 and SPH0645LM4H: read off the typical
# frequency-response plots; correct them here if a measured response says otherwise.
MICS = {"ideal": None, "inmp441": 60.0, "ics43434": 50.0, "sph0645": 35.0}

# The equaliser flattens the microphone down to this fraction of its corner (a 1/20 corner
# leaves -0.04 dB at 31.5 Hz for a 60 Hz roll-off) without unbounded gain at DC.
EQ_RATIO = 20.0


def hp(fc, rate):
    # Bilinear first-order high-pass s/(s+w): y = y1 + d - eps*(y1 + d/2), d = x - x1.
    k = math.pi * fc / rate
    return ("hp", 2.0 * k / (1.0 + k))


def eq(fc, rate):
    # Bilinear shelf (s+wc)/(s+we), we = wc/EQ_RATIO, undoing a first-order roll-off at fc:
    # y = y1 + d + gamma*d + eta*x1 - eps*y1.
    kc = math.pi * fc / rate
    ke = kc / EQ_RATIO
    return ("eq", (kc - ke) / (1.0 + ke), 2.0 * kc / (1.0 + ke), 2.0 * ke / (1.0 + ke))


def lp(fc, rate):
    # One of the two 12.2 kHz poles: the pole matched (z = exp(-wT)) and one zero placed so the
    # magnitude is exact at fm. A bilinear pole pair puts a double zero at Nyquist and reads
    # 2.7 dB low at 12.5 kHz (48 kHz); this section is within 0.07 dB up to 12.5 kHz.
    # y = p*y1 + g*x + g*b*x1.
    p = math.exp(-2.0 * math.pi * fc / rate)
    fm = min(12500.0, 0.3 * rate)
    c = math.cos(2.0 * math.pi * fm / rate)
    t = 1.0 / (1.0 + (fm / fc) ** 2)
    k = t * (1.0 - 2.0 * p * c + p * p) / ((1.0 - p) ** 2)
    qa = 1.0 - k
    qb = 2.0 * (c - k)
    r = math.sqrt(max(qb * qb - 4.0 * qa * qa, 0.0))
    b = (-qb + r) / (2.0 * qa)
    if abs(b) > 1.0:
        b = (-qb - r) / (2.0 * qa)
    g = (1.0 - p) / (1.0 + b)
    return ("lp", p, g, g * b)


def design(rate, mic="ideal"):
    """The sections in processing order: the high-passes first (so the equaliser's
    low-frequency boost acts on an already attenuated signal), then the two low-pass poles."""
    if mic not in MICS:
        raise ValueError("unknown microphone model %r" % (mic,))
    secs = [hp(F1, rate), hp(F1, rate)]
    if MICS[mic]:
        secs.append(eq(MICS[mic], rate))
    secs += [hp(F2, rate), hp(F3, rate)]
    low = lp(F4, rate)
    secs += [low, low]
    return secs


def section_gain(sec, f, rate):
    """|H(exp(j 2 pi f / rate))| of one section, from its coefficients."""
    kind = sec[0]
    if kind == "hp":
        e = sec[1]
        b0, b1, a1 = 1.0 - e / 2.0, -(1.0 - e / 2.0), -(1.0 - e)
    elif kind == "eq":
        gam, eta, e = sec[1], sec[2], sec[3]
        b0, b1, a1 = 1.0 + gam, -(1.0 + gam - eta), -(1.0 - e)
    else:
        b0, b1, a1 = sec[2], sec[3], -sec[1]
    c = math.cos(2.0 * math.pi * f / rate)
    num = b0 * b0 + b1 * b1 + 2.0 * b0 * b1 * c
    den = 1.0 + a1 * a1 + 2.0 * a1 * c
    return math.sqrt(num / den)


def gain(secs, f, rate):
    g = 1.0
    for s in secs:
        g *= section_gain(s, f, rate)
    return g
