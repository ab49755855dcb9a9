# The record sets the pipelines close, as (name, unit, value): one function per sensor kind, also
# what replay uses (it loads this, not the pipelines: a 64 KiB heap holds no more).
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
