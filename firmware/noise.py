# A-weighted sound level meter for an I2S MEMS microphone: LAeq, LAFmax, LAFmin, LA10/50/90.
#
# The per-sample work is one viper function in 32-bit fixed point (see docs/noise.md for the
# number formats and the proof that no intermediate leaves int32 on a board). Per 125 ms block
# Python reads the Fast level once for the statistics; nothing is allocated per sample.
import math
import micropython
from array import array
from micropython import const

import aweight
from levels import Histogram

# State words (array "i"); signed ones are read in viper through the 16-bit halves, because a
# ptr32 load zero-extends on the 64-bit unix port.
_SINE_DB = 3.0103  # 20 log10(sqrt(2)): a full-scale sine's RMS is 3.01 dB below full scale
_XP = const(0)    # previous input sample, 2**-3 of the raw word
_YA = const(1)    # section outputs: hp F1, hp F1, eq, hp F2, hp F3, lp, lp
_YB = const(2)
_YE = const(3)
_YC = const(4)
_YD = const(5)
_YL1 = const(6)
_YL2 = const(7)
_SHI = const(8)   # sub-block sum of squares = SHI * 2**28 + SLO
_SLO = const(9)
_B0 = const(10)   # 125 ms block sum of squares = B2 * 2**56 + B1 * 2**28 + B0
_B1 = const(11)
_B2 = const(12)
_SC = const(13)   # samples left in the sub-block
_NB = const(14)   # sub-blocks left in the block
_DONE = const(15)
_FM = const(16)   # Fast mean square = FM * 2**FE, FM in [2**29, 2**30) or 0
_FE = const(17)
_XM = const(18)   # its maximum and minimum since take()
_XE = const(19)
_NM = const(20)
_NE = const(21)
_MSET = const(22)
_EA = const(23)   # coefficients: mantissa E < 2**15 and shift; value E * 2**-(shift + 15)
_SA = const(24)
_EC = const(25)
_SCC = const(26)
_ED = const(27)
_SD = const(28)
_EQON = const(29)
_GE = const(30)
_GS = const(31)
_HE = const(32)
_HS = const(33)
_PE = const(34)
_PS = const(35)
_CP = const(36)   # low-pass: p, g, g*b as value * 2**15
_CG = const(37)
_CB = const(38)
_NSUB = const(39)
_NBLK = const(40)
_K1M = const(41)  # Fast weighting per sub-block: F = F * K1 + E * K2; K = KM * 2**KE
_K1E = const(42)
_K2M = const(43)
_K2E = const(44)
_A0 = const(45)  # the interval's completed blocks' sum of squares = A2 * 2**56 + A1 * 2**28 + A0
_A1 = const(46)
_A2 = const(47)
_NST = const(48)
_C2 = const(123302)  # 100 log10(2) in 2**-12: the dB tenths of one binary order of magnitude

_TAU = 0.125  # s, time weighting F
# A 0 B FS of the squared signal z = y >> 3 is 2**25 (the raw word's 2**31 / 2**6).
_Z_FS_DB = 150.51499783199059  # 20 * log10(2**25)


@micropython.viper
def _run(buf: ptr32, start: int, n: int, st: ptr32) -> int:
    s = ptr16(st)
    xp = (((s[1] ^ 0x8000) - 0x8000) << 16) | s[0]
    ya = (((s[3] ^ 0x8000) - 0x8000) << 16) | s[2]
    yb = (((s[5] ^ 0x8000) - 0x8000) << 16) | s[4]
    ye = (((s[7] ^ 0x8000) - 0x8000) << 16) | s[6]
    yc = (((s[9] ^ 0x8000) - 0x8000) << 16) | s[8]
    yd = (((s[11] ^ 0x8000) - 0x8000) << 16) | s[10]
    yl1 = (((s[13] ^ 0x8000) - 0x8000) << 16) | s[12]
    yl2 = (((s[15] ^ 0x8000) - 0x8000) << 16) | s[14]
    fe = (((s[35] ^ 0x8000) - 0x8000) << 16) | s[34]
    xe = (((s[39] ^ 0x8000) - 0x8000) << 16) | s[38]
    ne = (((s[43] ^ 0x8000) - 0x8000) << 16) | s[42]
    k1e = (((s[85] ^ 0x8000) - 0x8000) << 16) | s[84]
    k2e = (((s[89] ^ 0x8000) - 0x8000) << 16) | s[88]
    shi = st[_SHI]
    slo = st[_SLO]
    b0 = st[_B0]
    b1 = st[_B1]
    b2 = st[_B2]
    sc = st[_SC]
    nb = st[_NB]
    fm = st[_FM]
    xm = st[_XM]
    nm = st[_NM]
    mset = st[_MSET]
    ea = st[_EA]
    sa = st[_SA]
    ra = (1 << sa) >> 1
    ec = st[_EC]
    scc = st[_SCC]
    rc = (1 << scc) >> 1
    ed = st[_ED]
    sd = st[_SD]
    rd = (1 << sd) >> 1
    eqon = st[_EQON]
    ge = st[_GE]
    gs = st[_GS]
    rg = (1 << gs) >> 1
    he = st[_HE]
    hs = st[_HS]
    rh = (1 << hs) >> 1
    pe = st[_PE]
    ps = st[_PS]
    rp = (1 << ps) >> 1
    cp = st[_CP]
    cg = st[_CG]
    cb = st[_CB]
    nsub = st[_NSUB]
    k1h = st[_K1M] >> 15
    k1l = st[_K1M] & 0x7FFF
    k2h = st[_K2M] >> 15
    k2l = st[_K2M] & 0x7FFF
    done = 0
    i = start
    end = start + n
    while i < end:
        m = end - i
        if m > sc:
            m = sc
        stop = i + m
        while i < stop:
            # The 24-bit sample in the top of the word, kept as word >> 3 (2**28 full scale).
            x = (buf[i] >> 3) & 0x1FFFFFFF
            x -= (x & 0x10000000) << 1
            # High-passes: y = y1 + d - eps*(y1 + d/2); eps*u as E*u >> (15 + shift), split
            # into 15-bit halves of u so that each product stays below 2**30.
            t = x - xp
            xp = x
            u = ya + (t >> 1)
            v = ya + t - ((ea * (u >> 15) + ((ea * (u & 0x7FFF)) >> 15) + ra) >> sa)
            t = v - ya
            ya = v
            u = yb + (t >> 1)
            v = yb + t - ((ea * (u >> 15) + ((ea * (u & 0x7FFF)) >> 15) + ra) >> sa)
            t = v - yb
            yb = v
            if eqon:
                u = yb - t  # the section's previous input
                v = (ye + t + ((ge * (t >> 15) + ((ge * (t & 0x7FFF)) >> 15) + rg) >> gs)
                     + ((he * (u >> 15) + ((he * (u & 0x7FFF)) >> 15) + rh) >> hs)
                     - ((pe * (ye >> 15) + ((pe * (ye & 0x7FFF)) >> 15) + rp) >> ps))
                t = v - ye
                ye = v
            u = yc + (t >> 1)
            v = yc + t - ((ec * (u >> 15) + ((ec * (u & 0x7FFF)) >> 15) + rc) >> scc)
            t = v - yc
            yc = v
            u = yd + (t >> 1)
            v = yd + t - ((ed * (u >> 15) + ((ed * (u & 0x7FFF)) >> 15) + rd) >> sd)
            t = v - yd
            yd = v
            # Low-pass pair: y = p*y1 + g*x + g*b*x1, coefficients * 2**15.
            u = yd - t
            v = (cp * (yl1 >> 15) + ((cp * (yl1 & 0x7FFF) + 0x4000) >> 15)
                 + cg * (yd >> 15) + ((cg * (yd & 0x7FFF) + 0x4000) >> 15)
                 + cb * (u >> 15) + ((cb * (u & 0x7FFF) + 0x4000) >> 15))
            u = yl1
            yl1 = v
            v = (cp * (yl2 >> 15) + ((cp * (yl2 & 0x7FFF) + 0x4000) >> 15)
                 + cg * (yl1 >> 15) + ((cg * (yl1 & 0x7FFF) + 0x4000) >> 15)
                 + cb * (u >> 15) + ((cb * (u & 0x7FFF) + 0x4000) >> 15))
            yl2 = v
            # Square z = y / 8 (clipped at twice full scale) exactly into SHI * 2**28 + SLO.
            v = (v + 4) >> 3
            if v < 0:
                v = -v
            if v > 0x3FFFFFF:
                v = 0x3FFFFFF
            u = v >> 14
            v = v & 0x3FFF
            t = 2 * u * v
            shi += u * u + (t >> 14)
            slo += ((t & 0x3FFF) << 14) + v * v
            if slo >= 0x10000000:
                shi += slo >> 28
                slo &= 0x0FFFFFFF
            i += 1
        sc -= m
        if sc == 0:
            sc = nsub
            b0 += slo
            b1 += shi + (b0 >> 28)
            b0 &= 0x0FFFFFFF
            b2 += b1 >> 28
            b1 &= 0x0FFFFFFF
            # The sub-block's energy as a float: em * 2**ee, em in [2**29, 2**30).
            em = shi
            ee = 28
            while em >> 30:  # 2**30 is no small int on a 32-bit board
                em >>= 1
                ee += 1
            while em < 0x20000000 and (em | slo) != 0:
                em = (em << 1) | (slo >> 27)
                slo = (slo << 1) & 0x0FFFFFFF
                ee -= 1
            shi = 0
            slo = 0
            # F = F * K1 + E * K2 (exponential time weighting, per sub-block).
            if fm != 0:
                u = fm >> 15
                v = fm & 0x7FFF
                fm = u * k1h + ((u * k1l + v * k1h) >> 15)
                fe += k1e + 30
                while fm < 0x20000000:
                    fm <<= 1
                    fe -= 1
            if em != 0:
                u = em >> 15
                v = em & 0x7FFF
                em = u * k2h + ((u * k2l + v * k2h) >> 15)
                ee += k2e + 30
                while em < 0x20000000:
                    em <<= 1
                    ee -= 1
                if fm == 0:
                    fm = em
                    fe = ee
                else:
                    if ee > fe:
                        u = fm
                        fm = em
                        em = u
                        u = fe
                        fe = ee
                        ee = u
                    u = fe - ee
                    if u < 31:
                        fm += em >> u
                    if fm >> 30:
                        fm >>= 1
                        fe += 1
            if mset == 0:
                xm = fm
                xe = fe
                nm = fm
                ne = fe
                mset = 1
            else:
                if fm != 0 and (xm == 0 or fe > xe or (fe == xe and fm > xm)):
                    xm = fm
                    xe = fe
                if nm != 0 and (fm == 0 or ne > fe or (ne == fe and nm > fm)):
                    nm = fm
                    ne = fe
            nb -= 1
            if nb == 0:
                nb = st[_NBLK]
                done = 1
                break
    st[_XP] = xp
    st[_YA] = ya
    st[_YB] = yb
    st[_YE] = ye
    st[_YC] = yc
    st[_YD] = yd
    st[_YL1] = yl1
    st[_YL2] = yl2
    st[_SHI] = shi
    st[_SLO] = slo
    st[_B0] = b0
    st[_B1] = b1
    st[_B2] = b2
    st[_SC] = sc
    st[_NB] = nb
    st[_DONE] = done
    st[_FM] = fm
    st[_FE] = fe
    st[_XM] = xm
    st[_XE] = xe
    st[_NM] = nm
    st[_NE] = ne
    st[_MSET] = mset
    return i - start


def _fixed(c):
    # c (0 < c < 1) as (E, shift): c ~ E * 2**-(shift + 15), E in [2**14, 2**15).
    sh = 0
    while c * (1 << 15) * (1 << sh) < 16383.5:
        sh += 1
    return int(c * (1 << 15) * (1 << sh) + 0.5), sh


def _soft(v):
    # A positive float as (mantissa in [2**29, 2**30), exponent); 0 as (0, 0).
    if v <= 0:
        return 0, 0
    m, e = math.frexp(v)
    return int(m * (1 << 30)), e - 30


class NoiseMeter:
    QUANTITIES = ("LAeq", "LAFmax", "LAFmin", "LA10", "LA50", "LA90")  # unit "dB"

    def __init__(self, rate=48000, sensitivity_dbfs=-26.0, offset_db=0.0, mic="ideal"):
        if rate % 8000:
            raise ValueError("rate must be a multiple of 8 kHz")
        self.rate = rate
        self._nsub = rate // 1000  # 1 ms sub-blocks for the Fast weighting: 16..64 samples
        if self._nsub > 64:
            raise ValueError("rate above 64 kHz")
        self._nblk = 125  # sub-blocks per 125 ms reading
        secs = aweight.design(rate, mic)
        st = array("i", bytes(4 * _NST))
        hps = []
        low = []  # type: list
        eqs = []  # type: list
        q = []  # type: list  # the coefficients as quantised, for the 1 kHz normalisation
        for sec in secs:
            if sec[0] == "hp":
                e, sh = _fixed(sec[1])
                hps.append((e, sh))
                q.append(("hp", e / (1 << 15) / (1 << sh)))
            elif sec[0] == "eq":
                eqs = [_fixed(c) for c in sec[1:]]
                q.append(("eq",) + tuple(e / (1 << 15) / (1 << sh) for e, sh in eqs))
            else:
                low = [min(int(c * (1 << 15) + 0.5), 32767) for c in sec[1:]]
                q.append(("lp",) + tuple(c / (1 << 15) for c in low))
        st[_EA], st[_SA] = hps[0]
        st[_EC], st[_SCC] = hps[2]
        st[_ED], st[_SD] = hps[3]
        if eqs:
            st[_EQON] = 1
            st[_GE], st[_GS] = eqs[0]
            st[_HE], st[_HS] = eqs[1]
            st[_PE], st[_PS] = eqs[2]
        st[_CP], st[_CG], st[_CB] = low
        st[_NSUB] = self._nsub
        st[_NBLK] = self._nblk
        st[_SC] = self._nsub
        st[_NB] = self._nblk
        a = math.exp(-self._nsub / (_TAU * rate))
        st[_K1M], st[_K1E] = _soft(a)
        st[_K2M], st[_K2E] = _soft((1.0 - a) / self._nsub)
        self._st = st
        # dB SPL = 10 log10(mean z**2) - 20 log10(z full scale) - 20 log10(|H(1 kHz)|)
        #          + 3.01 - sensitivity + 94 + offset
        # dBFS as MEMS datasheets and AES17 define it: 0 dBFS is a full-scale sine, whose RMS is
        # full scale / sqrt(2); so a -26 dBFS microphone's 94 dB tone peaks at -26 dB of full scale.
        self._k = (-_Z_FS_DB - 20.0 * math.log10(aweight.gain(q, 1000.0, rate))
                   + _SINE_DB - sensitivity_dbfs + 94.0 + offset_db)
        self._hist = Histogram()
        # 100 log10(1 + j/64) in 2**-12, j = 0..64: a reading's histogram bin in integers
        self._log = t = array("i", range(65))  # no temporary list: the heap is tight here
        for j in range(65):
            t[j] = int(4096 * 100 * math.log10(1 + j / 64) + 0.5)
        self._kq = round(4096 * 10 * self._k)
        self._low = round(10 * self._db(0.0))  # _db's floor (a mean square of 1e-3)
        self._warm = False
        self._taken = 0    # energy of the current block already counted by take()
        self._n = 0        # samples in the interval

    def _db(self, ms):
        return 10.0 * math.log10(ms if ms > 1e-3 else 1e-3) + self._k

    def _block(self):
        st = self._st
        if not self._warm:
            # The Fast level starts from the first block's mean, not from silence.
            e = (st[_B2] << 56) + (st[_B1] << 28) + st[_B0]
            self._warm = True
            st[_FM], st[_FE] = _soft(e / (self._nsub * self._nblk))
            st[_XM] = st[_NM] = st[_FM]
            st[_XE] = st[_NE] = st[_FE]
            st[_MSET] = 1
        # every 125 ms: small ints only, nothing allocated on a 32-bit port (no big int, no
        # float); the interval's energy is summed in 28-bit limbs
        a = st[_A0] + st[_B0]
        b = st[_A1] + st[_B1] + (a >> 28)
        st[_A0] = a & 0xFFFFFFF
        st[_A1] = b & 0xFFFFFFF
        st[_A2] += st[_B2] + (b >> 28)
        st[_B0] = st[_B1] = st[_B2] = 0
        self._hist.add_tenths(self._tenths(st[_FM], st[_FE]))

    def _tenths(self, fm, fe):
        """10 x the level in dB of the mean square fm * 2**fe (fm in [2**29, 2**30), or 0),
        rounded, as round(10 * _db(fm * 2**fe)) but in integers: the log's mantissa by linear
        interpolation in a 65-entry table (error below 2e-4 dB)."""
        if fm <= 0:
            return self._low
        j = (fm >> 23) - 64
        r = (fm >> 13) & 1023
        t = self._log
        v = (_C2 * (fe + 29) + t[j] + (((t[j + 1] - t[j]) * r) >> 10) + self._kq + 2048) >> 12
        return v if v > self._low else self._low

    def feed(self, buf, n):
        """Process n samples from buf: a bytearray/memoryview of raw I2S RX data as
        machine.I2S(bits=32, format=I2S.MONO) delivers it on an ESP32: little-endian signed 32-bit
        words, the microphone's 24-bit sample left-justified (so full scale is 2**31).
        buf must be 4-byte aligned (a bytearray is)."""
        st = self._st
        off = 0
        while off < n:
            off += _run(buf, off, n - off, st)  # type: ignore[arg-type]  # viper takes buffers
            if st[_DONE]:
                st[_DONE] = 0
                self._block()
        self._n += n

    def heard(self):
        """Whether the interval holds a complete 125 ms level reading."""
        return self._hist.n > 0

    def take(self):
        """Close the interval: return (LAeq, LAFmax, LAFmin, LA10, LA50, LA90) as floats in dB, or
        None if no complete 125 ms block was seen; reset for the next interval. Filter state
        carries over (it is one continuous signal)."""
        st = self._st
        part = ((st[_B2] << 56) + (st[_B1] << 28) + st[_B0] + (st[_SHI] << 28) + st[_SLO])
        energy = (st[_A2] << 56) + (st[_A1] << 28) + st[_A0] + part - self._taken
        self._taken = part
        st[_A0] = st[_A1] = st[_A2] = 0
        n = self._n
        self._n = 0
        h = self._hist
        out = None
        if h.n and n:
            out = (self._db(energy / n),
                   self._db(st[_XM] * 2.0 ** st[_XE]),
                   self._db(st[_NM] * 2.0 ** st[_NE]),
                   h.exceeded(10), h.exceeded(50), h.exceeded(90))
        st[_MSET] = 0
        h.reset()
        return out
