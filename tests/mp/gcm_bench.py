# Time and heap of Gcm.open on one frame of N bytes (default 1024, a large P1 telegram), per AES
# source: `micropython gcm_bench.py [N]` with firmware/ on MICROPYPATH. Prints one line each:
# "<aes> <N> bytes: <us> us per frame, <bytes> bytes allocated per frame, <bytes> kept".
import gc
import sys
import time

import gcm

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
buf = bytearray(n)
tag = bytearray(12)
iv = bytes(12)
aad = bytes(17)
for name, aes in (("cryptolib", None), ("viper", gcm.SoftAes)):
    if aes is None and not gcm.cryptolib:
        continue
    gc.collect()
    before = gc.mem_alloc()
    g = gcm.Gcm(bytes(16), aes)
    gc.collect()
    kept = gc.mem_alloc() - before
    g.open(iv, aad, buf, 0, n, tag, 12)
    runs = 20
    a0 = gc.mem_alloc()
    t0 = time.ticks_us()
    for _ in range(runs):
        g.open(iv, aad, buf, 0, n, tag, 12)  # a wrong tag: GHASH and E(J0), no decryption
    t1 = time.ticks_us()
    # a frame that opens costs that and counter mode over its n bytes, timed here alone
    ctr = g._ctr
    ks = g._ks
    batch = len(ctr) // 16
    t2 = time.ticks_us()
    for _ in range(runs):
        done = 0
        first = 2
        while done < n:
            gcm._counters(ctr, first, batch)
            g._enc(ctr, ks)
            k = min(n - done, 16 * batch)
            gcm._xor(buf, done, ks, k)
            done += k
            first += batch
    t3 = time.ticks_us()
    alloc = (gc.mem_alloc() - a0) // (2 * runs)
    print("%s %d bytes: %d us per frame (GHASH+tag %d, CTR %d), %d bytes allocated per frame, "
          "%d kept" % (name, n, (time.ticks_diff(t1, t0) + time.ticks_diff(t3, t2)) // runs,
                       time.ticks_diff(t1, t0) // runs, time.ticks_diff(t3, t2) // runs, alloc,
                       kept))
