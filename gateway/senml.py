"""SenML (RFC 8428) in its CBOR representation: resolve packs into records and pack batches."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

# CBOR labels, RFC 8428 section 6
BVER, BN, BT, BU, BV, BS = -1, -2, -3, -4, -5, -6
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-:./_]*$")
_KNOWN = {BVER, BN, BT, BU, BV, BS, N, U, V, VS, VB, S, T, UT, VD}


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
        if BVER in rec and rec[BVER] > 10:
            raise SenMLError("unsupported SenML version")
        bn = rec.get(BN, bn)
        bt = rec.get(BT, bt)
        bu = rec.get(BU, bu)
        bv = rec.get(BV, bv)
        if not isinstance(bn, str) or not _is_num(bt):
            raise SenMLError("bad base name or base time")
        name = bn + rec.get(N, "")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SenMLError(f"bad name {name!r}")
        values = [k for k in (V, VS, VB, VD) if k in rec]
        if len(values) != 1 and not (S in rec and not values):
            raise SenMLError(f"{name}: a record needs exactly one value")
        if values:
            value = rec[values[0]]
            if isinstance(value, Decimal):  # a decimal fraction (tag 4): exact on the link
                value = float(value) if value.is_finite() else math.nan
            if values[0] == V:
                if not _is_num(value) or (isinstance(value, float) and not math.isfinite(value)):
                    raise SenMLError(f"{name}: value is not a finite number")
                if bv is not None:
                    value = bv + value
        else:
            value = rec[S]
        t = rec.get(T, 0)
        if not _is_num(t):
            raise SenMLError(f"{name}: bad time")
        t = bt + t
        if t < 2 ** 28:  # relative to now (RFC 8428 section 4.5.3)
            t = now + t if now else t
        unit = rec.get(U, bu)
        if unit is not None and not isinstance(unit, str):
            raise SenMLError(f"{name}: bad unit")
        out.append(Record(name, unit, value, t))
    return out


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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
