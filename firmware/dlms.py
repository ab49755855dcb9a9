# Encrypted P1: DLMS general-global-cipher frames (security suite 0, AES-128-GCM), as
# Luxembourg's Smarty and Austrian meters send them: 0xDB, 0x08 and the 8-byte system title, 0x82
# and a 2-byte length L, then L bytes: security control 0x30 (authenticated and encrypted), the
# 4-byte frame counter, the ciphertext of one telegram and a 12-byte GCM tag. IV = system title +
# frame counter; AAD = 0x30 + the authentication key. Each opened telegram goes to a P1Reader.
import micropython
from array import array
from micropython import const

from gcm import Gcm

_HDR = const(18)  # bytes up to and including the frame counter
_TAG = const(12)
_SC = const(0x30)
SMARTY_AUTH_KEY = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff"


@micropython.viper
def _frame(st, dst, data, i: int, n: int) -> int:
    # Copies bytes from data[i:n] into dst until st[1] bytes are there (while st[2], hunting,
    # from a 0xDB on); returns where it stopped. dst may be data itself (a rescan): the copy
    # never overtakes.
    s = ptr32(st)
    f = ptr8(dst)
    d = ptr8(data)
    pos = s[0]
    need = s[1]
    hunt = s[2]
    while i < n:
        c = d[i]
        i += 1
        if hunt and pos == 0 and c != 0xDB:
            continue
        f[pos] = c
        pos += 1
        if pos == need:
            break
    s[0] = pos
    return i


_HUNT = const(0)  # phases: the header, the ciphertext, the tag
_TEXT = const(1)
_TAIL = const(2)


class P1Cipher:
    """Decrypts general-global-cipher frames and feeds each telegram to a P1Reader.

    The ciphertext lands in the reader's own buffer and is decrypted there, so an encrypted
    line costs no second telegram buffer. Counters since boot: frames (opened), decrypt_errors:
    frames whose tag does not match the keys (a wrong key, or bytes changed on the line), or
    that start like a frame (0xDB 0x08) and are not one we can open (another security control,
    a length beyond the reader's buffer), or that the stream cut off. A frame whose tag fails
    is dropped whole; bytes between frames are skipped.
    """

    def __init__(self, reader, key, auth_key=SMARTY_AUTH_KEY):
        if len(auth_key) != 16:
            raise ValueError("the authentication key has 16 bytes")
        self.reader = reader
        self._gcm = Gcm(key)
        self._aad = bytearray(17)
        self._aad[0] = _SC
        self._aad[1:] = auth_key
        self._hdr = bytearray(_HDR)
        self._tag = bytearray(_TAG)
        self._iv = bytearray(12)
        self._st = array("i", (0, _HDR, 1))  # bytes in the phase's buffer, bytes wanted, hunting
        self._phase = _HUNT
        self._n = 0  # the frame's ciphertext length
        self.frames = 0
        self.decrypt_errors = 0

    def feed(self, data, n=None):
        """The next chunk of the line; returns how many valid telegrams it completed."""
        n = len(data) if n is None else min(n, len(data))
        st = self._st
        good = i = 0
        while i < n:
            ph = self._phase
            dst = self._hdr if ph == _HUNT else self._tag if ph == _TAIL else self.reader._buf
            i = _frame(st, dst, data, i, n)
            if st[0] == st[1]:
                good += self._step()
        return good

    def close(self):
        """End of stream: a frame still open is counted; the reader is closed."""
        if self._phase != _HUNT or self._st[0] > 1:
            self.decrypt_errors += 1
        self._next(_HUNT, _HDR)
        return self.reader.close()

    def _next(self, phase, need):
        st = self._st
        st[0] = 0
        st[1] = need
        st[2] = 1 if phase == _HUNT else 0
        self._phase = phase

    def _step(self):
        h = self._hdr
        if self._phase == _HUNT:
            size = (h[11] << 8) | h[12]
            n = size - 17
            if h[1] == 8 and h[10] == 0x82 and h[13] == _SC and 0 <= n <= len(self.reader._buf):
                self._n = n
                if n:
                    self._next(_TEXT, n)
                else:
                    self._next(_TAIL, _TAG)
                return 0
            if h[1] == 8:
                self.decrypt_errors += 1
            # not a frame start: look for one in the 17 bytes after this 0xDB
            self._next(_HUNT, _HDR)
            _frame(self._st, h, h, 1, _HDR)  # 17 bytes: never a whole header
            return 0
        if self._phase == _TEXT:
            self._next(_TAIL, _TAG)
            return 0
        self._next(_HUNT, _HDR)
        iv = self._iv
        for j in range(8):
            iv[j] = h[2 + j]
        for j in range(4):
            iv[8 + j] = h[14 + j]
        n = self._n
        buf = self.reader._buf
        # the tag is checked over the ciphertext in buf; a frame that fails leaves it as it is
        if not self._gcm.open(iv, self._aad, buf, 0, n, self._tag, _TAG):
            self.decrypt_errors += 1
            return 0
        self.frames += 1
        # the reader frames its telegram in place: its copy from '/' on is onto itself
        return self.reader.feed(buf, n)
