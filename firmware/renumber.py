# A frame of our own again under a new sequence number, its body's bytes kept: what a re-flashed
# node does to the readings it stored before the gateway gave it its floor (docs/protocol.md,
# "Re-flashed nodes"). Apart from link.py so that it takes no heap on a node that never needs it.
import binascii
import struct

import cbor
import link


def reseq(key, wire, seq):
    """One of our own wire frames again under a new sequence number (body bytes kept)."""
    buf = link.split_frame(link.cobs_decode(wire[:-1]))
    i = 1
    for _ in range(3):
        i = cbor.decode_at(buf, i)[1]
    end = cbor.decode_at(buf, i)[1]
    out = bytearray(buf[:i])
    cbor.encode_into(out, seq)
    out.extend(buf[end:len(buf) - 1 - link.TAG_LEN])
    tag = link.hmac_sha256(key, out)[:link.TAG_LEN]
    out.append(0x40 | link.TAG_LEN)
    out.extend(tag)
    out.extend(struct.pack("<I", binascii.crc32(out) & 0xFFFFFFFF))
    return link.cobs_encode(out) + b"\x00"
