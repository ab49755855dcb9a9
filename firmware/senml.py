# SenML-CBOR packs (RFC 8428 section 6): integer labels, base name and base time on the first record.
from micropython import const

BN = const(-2)
BT = const(-3)
N = const(0)
U = const(1)
V = const(2)


def pack(base_name, t, records):
    """records: (quantity, unit, value) read over the interval starting at t (epoch seconds)."""
    out = []  # type: list
    for name, unit, value in records:
        rec = {N: name, U: unit, V: value}
        if not out:
            rec[BN] = base_name
            rec[BT] = t
        out.append(rec)
    return out
