# gcm.py under the MicroPython unix port: McGrew-Viega test vectors through both AES sources
# (cryptolib and the viper AES that ports without cryptolib use), FIPS-197's AES example, a
# rejected tag leaves the buffer alone, and open() allocates nothing.
import binascii
import gc

import gcm
from gcm_vectors import VECTORS

h = binascii.unhexlify
AES_SOURCES = [None, gcm.SoftAes] if gcm.cryptolib else [gcm.SoftAes]


def test_fips197_aes_example():
    out = bytearray(32)
    gcm.SoftAes(h("000102030405060708090a0b0c0d0e0f")).encrypt(
        h("00112233445566778899aabbccddeeff") * 2, out)
    assert out == h("69c4e0d86a7b0430d8cdb78070b4c55a") * 2, out


def test_vectors_full_and_truncated_tags():
    for aes in AES_SOURCES:
        for k, iv, p, a, c, t in VECTORS:
            for tlen in (16, 12):
                g = gcm.Gcm(h(k), aes)
                buf = bytearray(b"xy" + h(c))
                n = len(c) // 2
                assert g.open(h(iv), h(a), buf, 2, n, h(t), tlen), (aes, k, tlen)
                assert buf == b"xy" + h(p)


def test_rejects_a_wrong_tag_key_or_aad_and_leaves_the_buffer():
    k, iv, p, a, c, t = VECTORS[3]
    n = len(c) // 2
    for aes in AES_SOURCES:
        for key, aad, flip in ((k, a, None), ("00" * 16, a, None), (k, a[:-2], None),
                               (k, a, 0), (k, a, n - 1), (k, a, n), (k, a, n + 11)):
            msg = bytearray(h(c) + h(t)[:12])
            if flip is not None:
                msg[flip] ^= 0x01
            if key == k and aad == a and flip is None:
                continue
            buf = msg[:n]
            assert not gcm.Gcm(h(key), aes).open(h(iv), h(aad), buf, 0, n, msg[n:], 12), \
                (key, flip)
            assert buf == msg[:n]
        # a tag shorter than 12 bytes is never accepted
        buf = bytearray(h(c))
        assert not gcm.Gcm(h(k), aes).open(h(iv), h(a), buf, 0, n, h(t), 8)


def test_open_allocates_nothing():
    k, iv, p, a, c, t = VECTORS[3]
    n = len(c) // 2
    msg = h(c)
    tag = h(t)
    ivb = h(iv)
    aad = h(a)
    for aes in AES_SOURCES:
        g = gcm.Gcm(h(k), aes)
        buf = bytearray(len(msg))
        buf[:] = msg
        g.open(ivb, aad, buf, 0, n, tag, 12)  # warm: any first-call caches
        buf[:] = msg
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        ok = g.open(ivb, aad, buf, 0, n, tag, 12)
        after = gc.mem_alloc()
        gc.enable()
        assert ok and after == before, (aes, after - before)


def test_rejects_a_key_of_the_wrong_size():
    try:
        gcm.Gcm(bytes(15))
    except ValueError:
        return
    raise AssertionError("a 15-byte key was taken")


import mptest  # noqa: E402

mptest.run(globals())
