# P1 (DSMR) telegram reader: bytes from the meter's UART in, one set of energy fields per valid
# telegram out. A viper loop frames telegrams byte by byte into a preallocated buffer; plain
# Python parses a framed telegram (a few times a minute to once a second).
import micropython
from micropython import const
from array import array

# Fields of one telegram, in milli-units of the record's unit (Wh, mW, mV, mA, dm3): integers, so
# a 9-digit counter stays exact on a 32-bit float port. energy.py names them.
IMPORT_T1 = const(0)
IMPORT_T2 = const(1)
EXPORT_T1 = const(2)
EXPORT_T2 = const(3)
POWER_IMPORT = const(4)
POWER_EXPORT = const(5)
VOLTAGE_L1 = const(6)
CURRENT_L1 = const(9)
GAS = const(12)
IMPORT_TOTAL = const(13)
EXPORT_TOTAL = const(14)
NFIELDS = const(15)

_ENERGY = const(0)
_POWER = const(1)
_VOLT = const(2)
_AMP = const(3)
_M3 = const(4)
# Per kind: accepted units and the power of ten that brings them to the record's unit.
_UNITS = (
    ((b"kWh", 0), (b"Wh", -3)),
    ((b"kW", 3), (b"W", 0)),
    ((b"V", 0),),
    ((b"A", 0),),
    ((b"m3", 0),),
)


def _key(c, d, e):
    return (c << 16) | (d << 8) | e


# Electricity registers (OBIS 1-0:C.D.E) -> field * 8 + kind.
_OBIS = {
    _key(1, 8, 1): IMPORT_T1 * 8 + _ENERGY,
    _key(1, 8, 2): IMPORT_T2 * 8 + _ENERGY,
    _key(2, 8, 1): EXPORT_T1 * 8 + _ENERGY,
    _key(2, 8, 2): EXPORT_T2 * 8 + _ENERGY,
    _key(1, 8, 0): IMPORT_TOTAL * 8 + _ENERGY,
    _key(2, 8, 0): EXPORT_TOTAL * 8 + _ENERGY,
    _key(1, 7, 0): POWER_IMPORT * 8 + _POWER,
    _key(2, 7, 0): POWER_EXPORT * 8 + _POWER,
    _key(32, 7, 0): (VOLTAGE_L1 + 0) * 8 + _VOLT,
    _key(52, 7, 0): (VOLTAGE_L1 + 1) * 8 + _VOLT,
    _key(72, 7, 0): (VOLTAGE_L1 + 2) * 8 + _VOLT,
    _key(31, 7, 0): (CURRENT_L1 + 0) * 8 + _AMP,
    _key(51, 7, 0): (CURRENT_L1 + 1) * 8 + _AMP,
    _key(71, 7, 0): (CURRENT_L1 + 2) * 8 + _AMP,
}
_CLOCK = const(0x010000)  # 0-0:1.0.0, the meter's time
_VERSION = const(0x000208)  # 1-3:0.2.8, the DSMR version (42, 50)
_MBUS_TYPE = const(0x180100)  # 0-n:24.1.0
_MBUS_NL = const(0x180201)  # 0-n:24.2.1, temperature-corrected volume
_MBUS_BE = const(0x180203)  # 0-n:24.2.3, Belgian uncorrected volume
_MBUS_OLD = const(0x180300)  # 0-n:24.3.0, DSMR 2.2/3: value on the next line
_GAS_TYPE = const(3)  # EN 13757-3 device type: gas

# CRC-16/ARC table (poly 0x8005 reflected = 0xA001, init 0).
_CRCTAB = array("H", bytes(512))
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0xA001 if _c & 1 else _c >> 1
    _CRCTAB[_i] = _c

# Scanner state slots (array "i") and states/events.
_STATE = const(0)
_POS = const(1)
_CRC = const(2)
_ND = const(3)
_CRCV = const(4)
_HI = const(5)
_ODD = const(6)
_LINES = const(7)
_CAP = const(8)
_EV = const(9)
_TERM = const(10)
_IDLE = const(0)
_BODY = const(1)
_CHECK = const(2)
_EV_DONE = const(1)
_EV_ABORT = const(2)
_EV_OVERFLOW = const(3)


@micropython.viper
def _scan(st, buf, tab, data, i: int, n: int) -> int:
    # Frames one telegram: returns the index where it stopped; st[_EV] says why (0: data used up).
    s = ptr32(st)
    b = ptr8(buf)
    t = ptr16(tab)
    d = ptr8(data)
    state = s[_STATE]
    pos = s[_POS]
    crc = s[_CRC]
    nd = s[_ND]
    crcv = s[_CRCV]
    hi = s[_HI]
    odd = s[_ODD]
    lines = s[_LINES]
    cap = s[_CAP]
    ev = 0
    while i < n:
        c = d[i]
        m = c & 0x7F  # 7E1 read as 8N1 leaves the parity bit in bit 7
        if m == 0x2F:  # '/': a telegram starts here, whatever came before
            if state == _BODY:
                ev = _EV_ABORT
                state = _IDLE
                break
            if state == _CHECK:
                ev = _EV_DONE
                s[_TERM] = m
                state = _IDLE
                break
            state = _BODY
            pos = 0
            crc = 0
            nd = 0
            crcv = 0
            hi = 0
            odd = 0
            lines = 0
        elif state == _IDLE:
            i += 1
            continue
        i += 1
        hi += c >> 7
        p = c ^ (c >> 4)
        p ^= p >> 2
        p ^= p >> 1
        odd += p & 1
        if state == _BODY:
            if pos >= cap:
                ev = _EV_OVERFLOW
                state = _IDLE
                break
            b[pos] = m
            pos += 1
            # over the bytes as sent: meters with a CRC are 8N1, so bit 7 is data (and an error)
            crc = (crc >> 8) ^ t[(crc ^ c) & 0xFF]
            if m == 10:
                lines += 1
            elif m == 0x21:  # '!': CRC covers '/' up to here
                state = _CHECK
            continue
        # after '!': up to four hex digits, ended by the fourth or by any other byte (a digit
        # with bit 7 set too: like the CRC, its digits come from an 8N1 meter)
        v = -1
        if c >= 0x30 and c <= 0x39:
            v = c - 0x30
        elif c >= 0x41 and c <= 0x46:
            v = c - 0x37
        elif c >= 0x61 and c <= 0x66:
            v = c - 0x57
        if v < 0:
            ev = _EV_DONE
            s[_TERM] = m
            state = _IDLE
            break
        crcv = (crcv << 4) | v
        nd += 1
        if nd == 4:
            ev = _EV_DONE
            s[_TERM] = 0
            state = _IDLE
            break
    s[_STATE] = state
    s[_POS] = pos
    s[_CRC] = crc
    s[_ND] = nd
    s[_CRCV] = crcv
    s[_HI] = hi
    s[_ODD] = odd
    s[_LINES] = lines
    s[_EV] = ev
    return i


_CUM = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _clock(buf, i, k):
    # YYMMDDhhmmssX (X: W winter = UTC+1, S summer = UTC+2, as DSMR gives Dutch time) -> seconds
    # since 2000-01-01 UTC; -1 if malformed. Only differences matter to the node.
    if k - i != 13:
        return -1
    # each field on its own, no list: a telegram is parsed without allocating (issue 14)
    y = _digits(buf, i, i + 2)
    mo = _digits(buf, i + 2, i + 4)
    d = _digits(buf, i + 4, i + 6)
    h = _digits(buf, i + 6, i + 8)
    mi = _digits(buf, i + 8, i + 10)
    sec = _digits(buf, i + 10, i + 12)
    if y < 0 or d < 0 or h < 0 or mi < 0 or sec < 0 or not 1 <= mo <= 12:
        return -1
    # days since 2000-01-01 (years 2000-2099: every fourth year is a leap year)
    days = 365 * y + (y + 3) // 4 + _CUM[mo - 1] + d - 1
    if mo > 2 and y % 4 == 0:
        days += 1
    off = 7200 if buf[k - 1] == 0x53 else 3600
    return days * 86400 + h * 3600 + mi * 60 + sec - off


def _digits(buf, i, k):
    # Unsigned decimal at buf[i:k]; -1 if empty or not all digits.
    if i >= k:
        return -1
    v = 0
    while i < k:
        c = buf[i] - 0x30
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
        i += 1
    return v


def _same(buf, i, k, word):
    if k - i != len(word):
        return False
    for j in range(k - i):
        if buf[i + j] != word[j]:
            return False
    return True


def _value(buf, i, k, kind, implied):
    # "digits[.digits][*unit]" at buf[i:k] -> milli-units of the record's unit; -1 malformed,
    # -2 usable number but not a unit of this kind (the field is then left out).
    star = buf.find(b"*", i, k)
    ve = k if star < 0 else star
    v = 0
    dec = -1
    nd = 0
    while i < ve:
        c = buf[i]
        if c == 0x2E and dec < 0:
            dec = 0
        elif 0x30 <= c <= 0x39:
            v = v * 10 + c - 0x30
            nd += 1
            if dec >= 0:
                dec += 1
        else:
            return -1
        i += 1
    if nd == 0:
        return -1
    shift = 0
    if star < 0:
        if not implied:
            return -2
    else:
        for unit, shift in _UNITS[kind]:
            if _same(buf, star + 1, k, unit):
                break
        else:
            return -2
    e = 3 + shift - (dec if dec > 0 else 0)
    if e >= 0:
        return v * 10 ** e
    q = 10 ** -e
    return (v + q // 2) // q  # half up: the counters have no finer digits than the record


class P1Reader:
    """Frames and checks P1 telegrams from UART chunks; keeps the fields of the last valid one.

    Counters since boot: telegrams (valid), crc_errors, malformed (includes truncated and
    parity_errors), overflows (longer than max_len); fragments are bytes from '/' cut off before
    their first line ended, which is line noise rather than a telegram.
    """

    def __init__(self, max_len=2048):
        self._buf = bytearray(max_len)
        self._st = array("i", bytes(4 * 11))
        self._st[_CAP] = max_len
        self.values = [0] * NFIELDS
        self.have = bytearray(NFIELDS)
        self._mtype = bytearray(10)
        self._mval = [0] * 10
        self._mhave = bytearray(10)
        self._pend = -1  # M-Bus channel whose DSMR 2.2/3 gas value is on the next line
        self._pend_m3 = False
        self._obis_lines = 0
        self.clock = -1  # the last valid telegram's 0-0:1.0.0 in seconds (UTC, since 2000), or -1
        self._clock = -1
        self.version = 0  # the DSMR version the meter states (1-3:0.2.8), 0 if none
        self._crc_seen = False  # a meter that sent a CRC once always sends one
        self.on_telegram = None  # called with (values, have) after each valid telegram
        self.telegrams = 0
        self.crc_errors = 0
        self.malformed = 0
        self.truncated = 0
        self.parity_errors = 0
        self.overflows = 0
        self.fragments = 0

    def rejected(self):
        return self.crc_errors + self.malformed + self.overflows

    def feed(self, data, n=None):
        """Takes the next chunk of the byte stream; returns how many valid telegrams it completed."""
        size = len(data)
        if n is None or n > size:
            n = size
        st = self._st
        good = 0
        i = 0
        while i < n:
            i = _scan(st, self._buf, _CRCTAB, data, i, n)
            ev = st[_EV]
            if ev:
                st[_EV] = 0
                good += self._end(ev)
        return good

    def close(self):
        """End of stream: a telegram still open is counted as truncated; returns valid ones (0/1)."""
        st = self._st
        state = st[_STATE]
        st[_STATE] = _IDLE
        if state == _CHECK:
            st[_TERM] = 10 if st[_ND] == 0 else 0
            return self._end(_EV_DONE)
        if state == _BODY:
            return self._end(_EV_ABORT)
        return 0

    def _end(self, ev):
        st = self._st
        if ev == _EV_OVERFLOW:
            self.overflows += 1
            return 0
        if ev == _EV_ABORT:
            if st[_LINES] == 0:
                self.fragments += 1
            else:
                self.truncated += 1
                self.malformed += 1
            return 0
        nd = st[_ND]
        if nd == 0:
            # DSMR 2.2/3: no CRC; the line end must follow '!', and parity must hold if the
            # UART passed parity bits through (any byte with bit 7 set).
            term = st[_TERM]
            if self._crc_seen or (term != 13 and term != 10):
                self.malformed += 1
                return 0
            if st[_HI] and st[_ODD]:
                self.parity_errors += 1
                self.malformed += 1
                return 0
        elif st[_CRCV] != st[_CRC]:
            self.crc_errors += 1
            return 0
        try:
            ok = self._parse(st[_POS], nd == 0)
        except Exception:  # a reader never raises on what the line delivers
            ok = False
        if not ok:
            self.malformed += 1
            return 0
        if nd:
            self._crc_seen = True
        self.telegrams += 1
        self.clock = self._clock
        if self.on_telegram is not None:
            self.on_telegram(self.values, self.have)
        return 1

    def _parse(self, end, strict):
        # buf[0:end] runs from '/' to '!'. strict (no CRC): every data line must be well formed.
        buf = self._buf
        have = self.have
        for k in range(NFIELDS):
            have[k] = 0
        for k in range(10):
            self._mtype[k] = 0
            self._mhave[k] = 0
        self._pend = -1
        self._pend_m3 = False
        self._obis_lines = 0
        self._clock = -1
        i = buf.find(b"\n", 0, end) + 1  # the header line is free text
        if i == 0:
            return False
        last = end - 1  # the '!'
        while i < last:
            j = buf.find(b"\n", i, last)
            if j < 0:
                j = last
            k = j
            if k > i and buf[k - 1] == 13:
                k -= 1
            if k > i and not self._line(buf, i, k, strict):
                return False
            i = j + 1
        if strict and not self._obis_lines:
            return False
        vals = self.values
        for ch in range(1, 10):
            if self._mtype[ch] == _GAS_TYPE and self._mhave[ch]:
                vals[GAS] = self._mval[ch]
                have[GAS] = 1
                break
        # A single-rate meter's only register (1.8.0/2.8.0) is its tariff-1 register.
        if have[IMPORT_TOTAL] and not (have[IMPORT_T1] or have[IMPORT_T2]):
            vals[IMPORT_T1] = vals[IMPORT_TOTAL]
            have[IMPORT_T1] = 1
        if have[EXPORT_TOTAL] and not (have[EXPORT_T1] or have[EXPORT_T2]):
            vals[EXPORT_T1] = vals[EXPORT_TOTAL]
            have[EXPORT_T1] = 1
        return True

    def _line(self, buf, i, k, strict):
        # One line buf[i:k] without its line end; False if the telegram is malformed.
        if strict and buf[k - 1] != 0x29:
            return False
        if buf[i] == 0x28:  # '(' continues the line before: DSMR 2.2/3 gas value
            ch = self._pend
            self._pend = -1
            if ch > 0:
                if buf[k - 1] != 0x29:
                    return False
                v = _value(buf, i + 1, k - 1, _M3, True)
                if v == -1:
                    return False
                if v >= 0 and self._pend_m3:
                    self._mval[ch] = v
                    self._mhave[ch] = 1
            return not strict or ch > 0
        self._pend = -1
        # OBIS reduced id "A-B:C.D.E(" ; anything else is free text, allowed only with a CRC
        p = buf.find(b"(", i, k)
        m1 = buf.find(b"-", i, p)
        m2 = buf.find(b":", i, p)
        m3 = buf.find(b".", m2 + 1, p)
        m4 = buf.find(b".", m3 + 1, p) if m3 > 0 else -1
        if p < 0 or m1 < 0 or m2 < m1 or m3 < 0 or m4 < 0:
            return not strict
        a = _digits(buf, i, m1)
        b = _digits(buf, m1 + 1, m2)
        key = (_digits(buf, m2 + 1, m3) << 16) | (_digits(buf, m3 + 1, m4) << 8) | _digits(buf, m4 + 1, p)
        if a < 0 or b < 0 or key < 0:
            return not strict
        self._obis_lines += 1
        if a == 1 and b == 0:
            fk = _OBIS.get(key)
            if fk is None:
                return True
            q = buf.find(b")", p, k)
            if q < 0:
                return False
            v = _value(buf, p + 1, q, fk & 7, False)
            if v == -1:
                return False
            if v >= 0:
                self.values[fk >> 3] = v
                self.have[fk >> 3] = 1
            return True
        if a == 1 and b == 3 and key == _VERSION:
            q = buf.find(b")", p, k)
            v = _digits(buf, p + 1, q) if q > 0 else -1
            self.version = v if v > 0 else 0
            return True
        if a == 0 and b == 0 and key == _CLOCK:
            q = buf.find(b")", p, k)
            self._clock = _clock(buf, p + 1, q) if q > 0 else -1
            return True
        if a != 0 or b < 1 or b > 9:
            return True
        if key == _MBUS_TYPE:
            q = buf.find(b")", p, k)
            t = _digits(buf, p + 1, q) if q > 0 else -1
            if t < 0:
                return False
            self._mtype[b] = t if t < 256 else 255
            return True
        if key == _MBUS_NL or key == _MBUS_BE or key == _MBUS_OLD:
            # the reading (or, in DSMR 2.2/3, the unit) is the line's last group
            if buf[k - 1] != 0x29:
                return False
            o = k - 2
            while o > p and buf[o] != 0x28:
                o -= 1
            if key == _MBUS_OLD:
                self._pend = b
                self._pend_m3 = _same(buf, o + 1, k - 1, b"m3")
                return True
            v = _value(buf, o + 1, k - 1, _M3, False)
            if v == -1:
                return False
            if v >= 0:
                self._mval[b] = v
                self._mhave[b] = 1
        return True
