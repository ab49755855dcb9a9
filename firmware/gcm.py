# AES-128-GCM decryption with a truncated tag (NIST SP 800-38D), as DLMS security suite 0 uses it:
# counter mode and GHASH here, allocation-free after construction; AES blocks from cryptolib
# where the port has it (the ESP32's is the chip's AES unit), else from the viper AES below.
# GHASH multiplies in GF(2^128) by a 4-bit table of H (Shoup), on 16-bit limbs: no value leaves
# 17 bits, so viper gives the same results on 32-bit boards and the 64-bit unix port.
import micropython
from array import array
from micropython import const

try:
    import cryptolib
except ImportError:
    cryptolib = None  # type: ignore[assignment]  # the QEMU board's port has none

_BATCH = const(4)  # counter blocks per AES call


def _sbox():
    # FIPS-197 5.1.1: the multiplicative inverse in GF(2^8), then the affine map
    exp = bytearray(256)
    log = bytearray(256)
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= ((x << 1) ^ (0x1B if x & 0x80 else 0)) & 0xFF  # x * 3
    box = bytearray(256)
    for a in range(256):
        b = exp[(255 - log[a]) % 255] if a else 0
        s = b
        for _ in range(4):
            b = ((b << 1) | (b >> 7)) & 0xFF
            s ^= b
        box[a] = s ^ 0x63
    return box


# state byte 4c + r after ShiftRows comes from column (c + r) mod 4
_SHIFT = bytes((4 * ((c + r) % 4) + r) for c in range(4) for r in range(4))


@micropython.viper
def _aes(rk, sbox, shift, tmp, src, dst, n: int):
    # n bytes (a multiple of 16) of src encrypted block by block into dst, dst's block the
    # state; rk: the 176-byte expanded key; tmp: 16 bytes
    tb = ptr8(tmp)
    k = ptr8(rk)
    sb = ptr8(sbox)
    sh = ptr8(shift)
    s = ptr8(src)
    d = ptr8(dst)
    off = 0
    while off < n:
        for i in range(16):
            d[off + i] = s[off + i] ^ k[i]
        rnd = 1
        while rnd <= 10:
            # SubBytes and ShiftRows through tmp
            b = off
            for i in range(16):
                tb[i] = sb[d[b + sh[i]]]
            for i in range(16):
                d[b + i] = tb[i]
            kr = 16 * rnd
            if rnd < 10:  # MixColumns: b_r = a_r ^ t ^ 2(a_r ^ a_r+1), t = a0 ^ a1 ^ a2 ^ a3
                for c in range(4):
                    p = b + 4 * c
                    x0 = d[p]
                    x1 = d[p + 1]
                    x2 = d[p + 2]
                    x3 = d[p + 3]
                    t = x0 ^ x1 ^ x2 ^ x3
                    u = x0 ^ x1
                    u = ((u << 1) ^ (0x1B if u & 0x80 else 0)) & 0xFF
                    d[p] = x0 ^ t ^ u
                    u = x1 ^ x2
                    u = ((u << 1) ^ (0x1B if u & 0x80 else 0)) & 0xFF
                    d[p + 1] = x1 ^ t ^ u
                    u = x2 ^ x3
                    u = ((u << 1) ^ (0x1B if u & 0x80 else 0)) & 0xFF
                    d[p + 2] = x2 ^ t ^ u
                    u = x3 ^ x0
                    u = ((u << 1) ^ (0x1B if u & 0x80 else 0)) & 0xFF
                    d[p + 3] = x3 ^ t ^ u
            for i in range(16):
                d[b + i] = d[b + i] ^ k[kr + i]
            rnd += 1
        off += 16


class SoftAes:
    """AES-128 encryption (FIPS-197) in viper, for ports without cryptolib: encrypt(src, dst)
    as cryptolib.aes(key, 1) has it (ECB, len(src) a multiple of 16)."""

    def __init__(self, key):
        self._sbox = sb = _sbox()
        rk = bytearray(176)
        rk[:16] = key
        rcon = 1
        for i in range(16, 176, 4):
            t0, t1, t2, t3 = rk[i - 4], rk[i - 3], rk[i - 2], rk[i - 1]
            if i % 16 == 0:
                t0, t1, t2, t3 = sb[t1] ^ rcon, sb[t2], sb[t3], sb[t0]
                rcon = ((rcon << 1) ^ (0x1B if rcon & 0x80 else 0)) & 0xFF
            rk[i] = rk[i - 16] ^ t0
            rk[i + 1] = rk[i - 15] ^ t1
            rk[i + 2] = rk[i - 14] ^ t2
            rk[i + 3] = rk[i - 13] ^ t3
        self._rk = rk
        self._tmp = bytearray(16)

    def encrypt(self, src, dst):
        _aes(self._rk, self._sbox, _SHIFT, self._tmp, src, dst, len(src))


@micropython.viper
def _ghash(y, tab, red, data, off: int, n: int):
    # y = (y ^ block) * H over data[off:off + n], the last block zero-padded. y: 8 limbs of 16
    # bits, most significant first (limb 0's bit 15 is GCM's x^0); tab: 16 x 8 limbs, the
    # multiples of H by a nibble; red: the reduction of 4 bits shifted off the end.
    Y = ptr16(y)
    T = ptr16(tab)
    R = ptr16(red)
    D = ptr8(data)
    end = off + n
    while off < end:
        for j in range(8):
            p = off + 2 * j
            v = 0
            if p < end:
                v = D[p] << 8
            if p + 1 < end:
                v |= D[p + 1]
            Y[j] = Y[j] ^ v
        # Horner over the 32 nibbles from the last: z = z * x^4 + M[nibble]
        z0 = 0
        z1 = 0
        z2 = 0
        z3 = 0
        z4 = 0
        z5 = 0
        z6 = 0
        z7 = 0
        k = 31
        while k >= 0:
            r = z7 & 15
            z7 = (z7 >> 4) | ((z6 & 15) << 12)
            z6 = (z6 >> 4) | ((z5 & 15) << 12)
            z5 = (z5 >> 4) | ((z4 & 15) << 12)
            z4 = (z4 >> 4) | ((z3 & 15) << 12)
            z3 = (z3 >> 4) | ((z2 & 15) << 12)
            z2 = (z2 >> 4) | ((z1 & 15) << 12)
            z1 = (z1 >> 4) | ((z0 & 15) << 12)
            z0 = (z0 >> 4) ^ R[r]
            m = 8 * ((Y[k >> 2] >> (12 - 4 * (k & 3))) & 15)
            z0 ^= T[m]
            z1 ^= T[m + 1]
            z2 ^= T[m + 2]
            z3 ^= T[m + 3]
            z4 ^= T[m + 4]
            z5 ^= T[m + 5]
            z6 ^= T[m + 6]
            z7 ^= T[m + 7]
            k -= 1
        Y[0] = z0
        Y[1] = z1
        Y[2] = z2
        Y[3] = z3
        Y[4] = z4
        Y[5] = z5
        Y[6] = z6
        Y[7] = z7
        off += 16


@micropython.viper
def _counters(ctr, first: int, nb: int):
    # blocks 0..nb-1 of ctr: their last 4 bytes the big-endian counter first + i (IV in front)
    c = ptr8(ctr)
    for i in range(nb):
        v = first + i
        p = 16 * i + 12
        c[p] = (v >> 24) & 0xFF
        c[p + 1] = (v >> 16) & 0xFF
        c[p + 2] = (v >> 8) & 0xFF
        c[p + 3] = v & 0xFF


@micropython.viper
def _xor(buf, off: int, ks, n: int):
    b = ptr8(buf)
    s = ptr8(ks)
    for i in range(n):
        b[off + i] = b[off + i] ^ s[i]


@micropython.viper
def _tag_differs(y, ej0, tag, n: int) -> int:
    # 0 if tag[:n] is the first n bytes of E(J0) ^ GHASH (y's limbs); no early exit
    Y = ptr16(y)
    e = ptr8(ej0)
    b = ptr8(tag)
    diff = 0
    for i in range(n):
        s = Y[i >> 1]
        s = (s >> 8) if (i & 1) == 0 else (s & 0xFF)
        diff |= (s ^ e[i]) ^ b[i]
    return diff


class Gcm:
    """AES-128-GCM with a 96-bit IV: open() checks the tag and decrypts in place.

    Gcm(key) uses cryptolib's AES if the port has it; Gcm(key, SoftAes) forces the viper one."""

    def __init__(self, key, aes=None):
        if len(key) != 16:
            raise ValueError("AES-128 needs a 16-byte key")
        if aes is None and cryptolib is not None:
            self._enc = cryptolib.aes(bytes(key), 1).encrypt
        else:
            self._enc = SoftAes(key).encrypt  # type: ignore[assignment]  # same call as cryptolib's
        h = bytearray(16)
        self._enc(bytes(16), h)
        # tab[n]: nibble n (its bit 3 is x^0) times H; red[r]: 4 bits r shifted off x^127
        tab = array("H", bytes(256))
        v = [(h[2 * j] << 8) | h[2 * j + 1] for j in range(8)]
        for bit in (8, 4, 2, 1):
            for j in range(8):
                tab[8 * bit + j] = v[j]
            v = _times_x(v)
        for n in range(16):
            if n & (n - 1):  # not a power of two: the sum of its bits' rows
                low = n & -n
                for j in range(8):
                    tab[8 * n + j] = tab[8 * low + j] ^ tab[8 * (n ^ low) + j]
        red = array("H", bytes(32))
        for r in range(16):
            w = [0] * 7 + [r]
            for _ in range(4):
                w = _times_x(w)
            red[r] = w[0]
        self._tab = tab
        self._red = red
        self._y = array("H", bytes(16))
        self._ctr = bytearray(16 * _BATCH)
        self._ks = bytearray(16 * _BATCH)
        self._j0 = bytearray(16)
        self._ej0 = bytearray(16)
        self._len = bytearray(16)

    def open(self, iv, aad, buf, off, n, tag, tag_len):
        """buf[off:off + n] is the ciphertext, tag[:tag_len] its tag (12..16 bytes); iv: 12
        bytes; aad: the additional authenticated data. Returns True and leaves the plaintext in
        buf[off:off + n], or returns False with buf unchanged."""
        y = self._y
        for j in range(8):
            y[j] = 0
        _ghash(y, self._tab, self._red, aad, 0, len(aad))
        _ghash(y, self._tab, self._red, buf, off, n)
        ln = self._len
        a = 8 * len(aad)
        c = 8 * n
        for j in range(4):
            ln[7 - j] = (a >> (8 * j)) & 0xFF
            ln[15 - j] = (c >> (8 * j)) & 0xFF
        _ghash(y, self._tab, self._red, ln, 0, 16)
        j0 = self._j0
        ctr = self._ctr
        for j in range(12):
            j0[j] = iv[j]
        for b in range(_BATCH):
            for j in range(12):
                ctr[16 * b + j] = iv[j]
        j0[15] = 1
        self._enc(j0, self._ej0)
        if not 12 <= tag_len <= 16 or _tag_differs(y, self._ej0, tag, tag_len):
            return False
        first = 2
        done = 0
        ks = self._ks
        while done < n:
            _counters(ctr, first, _BATCH)
            self._enc(ctr, ks)
            k = n - done
            if k > 16 * _BATCH:
                k = 16 * _BATCH
            _xor(buf, off + done, ks, k)
            done += k
            first += _BATCH
        return True


def _times_x(v):
    # v * x in GCM's bit order (a right shift), reduced by x^128 = 1 + x + x^2 + x^7
    out = [0] * 8
    carry = 0
    for j in range(8):
        out[j] = (v[j] >> 1) | (carry << 15)
        carry = v[j] & 1
    if carry:
        out[0] ^= 0xE100
    return out
