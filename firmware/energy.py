# Energy quantities per interval from a P1Reader's valid telegrams: counters are the last valid
# telegram's, instantaneous values the mean over the interval's valid telegrams.
from micropython import const
import p1

_COUNTER = const(0)
_MEAN = const(1)
# (record name, SenML unit, P1Reader field, how the interval combines it), in the design's order
QUANTITIES = (
    ("energy_import_t1", "kWh", p1.IMPORT_T1, _COUNTER),
    ("energy_import_t2", "kWh", p1.IMPORT_T2, _COUNTER),
    ("energy_export_t1", "kWh", p1.EXPORT_T1, _COUNTER),
    ("energy_export_t2", "kWh", p1.EXPORT_T2, _COUNTER),
    ("power_import", "W", p1.POWER_IMPORT, _MEAN),
    ("power_export", "W", p1.POWER_EXPORT, _MEAN),
    ("voltage_l1", "V", p1.VOLTAGE_L1, _MEAN),
    ("voltage_l2", "V", p1.VOLTAGE_L1 + 1, _MEAN),
    ("voltage_l3", "V", p1.VOLTAGE_L1 + 2, _MEAN),
    ("current_l1", "A", p1.CURRENT_L1, _MEAN),
    ("current_l2", "A", p1.CURRENT_L1 + 1, _MEAN),
    ("current_l3", "A", p1.CURRENT_L1 + 2, _MEAN),
    ("gas_volume", "m3", p1.GAS, _COUNTER),
)


class EnergyInterval:
    """Aggregates the valid telegrams of one interval; take() closes it and opens the next."""

    def __init__(self, reader, cipher=None):
        self._reader = reader
        self._cipher = cipher  # a P1Cipher: its decrypt_errors are reported too
        self._decrypt_errors = cipher.decrypt_errors if cipher else 0
        n = p1.NFIELDS
        self._sum = [0] * n  # counters: last value; means: sum (milli-units, exact integers)
        self._count = [0] * n
        self._rejected = reader.rejected()
        self.seen = 0  # valid telegrams in the interval
        reader.on_telegram = self.add

    def add(self, values, have):
        self.seen += 1
        s = self._sum
        c = self._count
        for _name, _unit, f, how in QUANTITIES:
            if have[f]:
                if how == _COUNTER:
                    s[f] = values[f]
                    c[f] = 1
                else:
                    s[f] += values[f]
                    c[f] += 1

    def take(self, exact=False):
        """[(name, unit, value)] for the interval, then reset. Quantities the meter did not send
        in a valid telegram are left out; p1_crc_errors (telegrams rejected) is always there, and
        on an encrypted line p1_decrypt_errors (frames rejected before the telegram).

        exact=True gives each value as an integer in thousandths of the unit (means rounded half
        up), for encoders that must not pass a 9-digit counter through a 32-bit float.
        """
        out = []  # type: list
        self.seen = 0
        s = self._sum
        c = self._count
        for name, unit, f, how in QUANTITIES:
            n = c[f]
            if n:
                if exact:
                    out.append((name, unit, s[f] if n == 1 else (2 * s[f] + n) // (2 * n)))
                else:
                    out.append((name, unit, s[f] / (n * 1000)))
            s[f] = 0
            c[f] = 0
        rejected = self._reader.rejected()
        out.append(("p1_crc_errors", "count", rejected - self._rejected))
        self._rejected = rejected
        if self._cipher:
            bad = self._cipher.decrypt_errors
            out.append(("p1_decrypt_errors", "count", bad - self._decrypt_errors))
            self._decrypt_errors = bad
        return out
