"""SenML (RFC 8428) in its CBOR representation: resolve packs into records and pack batches."""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from decimal import Decimal

# CBOR labels, RFC 8428 section 6
BVER, BN, BT, BU, BV, BS = -1, -2, -3, -4, -5, -6
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-:./_]*$")
NAME = _NAME  # RFC 8428's name syntax, for the registry's base names too
_KNOWN = {BVER, BN, BT, BU, BV, BS, N, U, V, VS, VB, S, T, UT, VD}
BASE_NAME_MAX = 96  # bytes of a node's base name (link.cddl's bn)


def base_name_error(bn) -> str | None:
    """Why bn cannot be a node's base name, or None: SenML's name syntax (RFC 8428 section
    4.5.1), 1..BASE_NAME_MAX bytes, ending in a separator (':' or '/'), so that no name of
    another base name that merely extends this one's text (pole1 -> pole12) falls under it."""
    if not (isinstance(bn, str) and _NAME.match(bn) and len(bn) <= BASE_NAME_MAX
            and bn[-1] in ":/"):
        return (f"base name {bn!r}: 1..{BASE_NAME_MAX} letters, digits and '-:./_', starting "
                f"with a letter or digit and ending in ':' or '/' (e.g. urn:dev:ops:pole1:)")
    return None


class SenMLError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    """A resolved record: full name, unit, one value, absolute time."""

    n: str
    u: str | None
    v: float | int | str | bool | bytes
    t: float

    def as_json(self) -> dict:
        out = {"n": self.n, "v": self.v, "t": self.t}
        if self.u is not None:
            out["u"] = self.u
        return out


def resolve(pack, now: float = 0.0) -> list[Record]:
    """Resolve a SenML-CBOR pack (a decoded list of maps) per RFC 8428 section 4.6."""
    if not isinstance(pack, list) or not pack:
        raise SenMLError("pack is not a non-empty array")
    bn, bt, bu, bv = "", 0.0, None, None
    out = []
    for rec in pack:
        if not isinstance(rec, dict) or not set(rec) <= _KNOWN:
            raise SenMLError("record is not a map of SenML labels")
        if BVER in rec and (not _is_num(rec[BVER]) or rec[BVER] > 10):
            raise SenMLError("unsupported SenML version")
        bn = rec.get(BN, bn)
        bt = rec.get(BT, bt)
        bu = rec.get(BU, bu)
        bv = rec.get(BV, bv)
        if not isinstance(bn, str) or not _is_num(bt) or not (bv is None or _is_num(bv)):
            raise SenMLError("bad base name, base time or base value")
        name = rec.get(N, "")
        name = bn + name if isinstance(name, str) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise SenMLError(f"bad name {name!r}")
        values = [k for k in (V, VS, VB, VD) if k in rec]
        if len(values) != 1 and not (S in rec and not values):
            raise SenMLError(f"{name}: a record needs exactly one value")
        if values:
            value = rec[values[0]]
            if isinstance(value, Decimal):  # a decimal fraction (tag 4): exact on the link
                value = float(value) if value.is_finite() else math.nan
            elif isinstance(value, float):
                value = _shortest(value)
            if values[0] == V:
                if bv is not None and _is_num(value):
                    value = _add(bv, value)
                if not _finite(value):
                    raise SenMLError(f"{name}: value is not a finite number")
            elif not isinstance(value, _VALUE_TYPES[values[0]]):
                raise SenMLError(f"{name}: value of the wrong type")
        else:
            value = rec[S]
            if not _finite(value):
                raise SenMLError(f"{name}: sum is not a finite number")
        t = rec.get(T, 0)
        t = _add(bt, t) if _is_num(t) else None
        if not _finite(t):
            raise SenMLError(f"{name}: bad time")
        if t < 2 ** 28:  # relative to now (RFC 8428 section 4.5.3)
            t = now + t if now else t
        unit = rec.get(U, bu)
        if unit is not None and not isinstance(unit, str):
            raise SenMLError(f"{name}: bad unit")
        out.append(Record(name, unit, value, t))
    return out


def _shortest(x: float) -> float:
    """A value a board computed in single precision (ESP32 floats are 32-bit), as the shortest
    decimal that is the same float32: 52.284 rather than 52.284000396728516. A value that is not
    a float32 is left as it is."""
    if not math.isfinite(x) or _f32(x) != x:
        return x
    for digits in range(1, 10):  # 9 significant digits tell every float32 apart
        # the nearest decimal of this many digits (a tie to even, as format rounds), or at a
        # power of two (where the float32 below is nearer than the one above) the next one up
        # or down, whichever is the same float32
        near = float(f"{x:.{digits - 1}e}")
        step = 10.0 ** (int(f"{near:e}".split("e")[1]) - digits + 1)
        others = sorted((float(f"{near + k * step:.{digits - 1}e}") for k in (1, -1)),
                        key=lambda d: abs(d - x))
        for d in (near, *others):
            if _f32(d) == x:
                return d
    return x


def _f32(x: float) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # beyond float32's largest (a candidate decimal above it)
        return math.inf


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x) -> bool:
    """A number a float holds (a bignum or inf from a hostile frame is not)."""
    try:
        return _is_num(x) and math.isfinite(x)
    except OverflowError:
        return False


def _add(a, b):
    try:
        return a + b
    except OverflowError:  # a float plus a bignum beyond it
        return math.inf


_VALUE_TYPES = {VS: str, VB: bool, VD: bytes}


def pack(records: list[Record]) -> list[dict]:
    """A compact pack of resolved records: base name and base time per run of one node."""
    out = []
    bn = None
    bt = None
    for r in records:
        base, _, quantity = r.n.rpartition(":")
        base = base + ":" if base else ""
        rec: dict = {}
        if base != bn:
            rec[BN] = bn = base
            rec[BT] = bt = r.t
        rec[N] = quantity
        if r.u is not None:
            rec[U] = r.u
        rec[V] = r.v
        if r.t != bt:
            rec[T] = r.t - bt
        out.append(rec)
    return out


# --- batches from stored packs, without decoding them --------------------------------------
def _head(b: bytes, i: int) -> tuple[int, int, int, int]:
    """(major type, additional info, argument, next index) of the CBOR head at i (RFC 8949
    section 3); a float's argument is its bits. IndexError or ValueError if it is not one."""
    ib = b[i]
    major, ai, i = ib >> 5, ib & 31, i + 1
    if ai < 24:
        return major, ai, ai, i
    if ai > 27:  # reserved, or indefinite length: never in a pack we encoded
        raise ValueError("head")
    n = 1 << (ai - 24)
    if i + n > len(b):
        raise IndexError("head")
    return major, ai, int.from_bytes(b[i:i + n], "big"), i + n


# link.cddl's senml-record as verify encodes it (cbor2, senml.pack): each label is one byte;
# per label its bit (no label twice) and whether its value is text (else a number)
_LABELS = {0x21: (1, True), 0x22: (2, False), 0x00: (4, True), 0x01: (8, True),
           0x02: (16, False), 0x06: (32, False)}  # bn, bt, n, u, v, t
_FIRST, _EACH = 1 | 2, 4 | 16   # bn and bt in a pack's first record (a batch's next row must
# not inherit the one before's), n and v in every record
_INF = {25: 0x7C00, 26: 0x7F800000, 27: 0x7FF0000000000000}  # a float's exponent all ones
NUMBER_MAX = 2 ** 53            # |v|, bt, t: what a double holds exactly (verify's bound)


def pack_span(data: bytes) -> tuple[int, int] | None:
    """(records, where they begin past the array's head) when `data` is a pack as verify
    stores it: a definite CBOR array of records, each a map of link.cddl's labels (bn, bt, n,
    u, v, t; none twice; n and v in each, bn and bt in the first) to text (valid UTF-8) or a
    finite number within NUMBER_MAX, with nothing after it; else None. A scan of the heads
    (RFC 8949 appendix C): nothing is built, so a batch is made of the records' bytes as verify
    encoded them, once, and what the city decodes is SenML (RFC 8428) of the node's base name."""
    end, labels = len(data), _LABELS
    try:
        major, _, count, i = _head(data, 0)
        if major != 4 or count < 1:
            return None
        start, need = i, _FIRST | _EACH
        for _ in range(count):
            major, _, pairs, i = _head(data, i)
            if major != 5:
                return None
            seen = 0
            for _ in range(pairs):
                bit, text = labels[data[i]]  # KeyError (a LookupError) for any other label
                if seen & bit:
                    return None
                seen |= bit
                major, ai, arg, i = _head(data, i + 1)
                if text:
                    if major != 3 or i + arg > end:
                        return None
                    str(data[i:i + arg], "utf-8")  # UnicodeDecodeError is a ValueError
                    i += arg
                elif not (major in (0, 1) and arg + major <= NUMBER_MAX
                          or major == 7 and ai in _INF and arg & _INF[ai] != _INF[ai]):
                    return None
            if seen & need != need:
                return None
            need = _EACH
    except (LookupError, ValueError):
        return None
    return (count, start) if i == end else None


def array_head(count: int) -> bytes:
    """The CBOR head of a definite array of `count` items (RFC 8949 section 3.1, major 4)."""
    if count < 24:
        return bytes([0x80 | count])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if count < 1 << (8 * size):
            return bytes([0x80 | ai]) + count.to_bytes(size, "big")
    raise ValueError("array too long for CBOR")
