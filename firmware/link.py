# The node's side of link protocol v1 (docs/protocol.md): CBOR frames, an HMAC-SHA256 tag
# truncated to 8 bytes, CRC-32, COBS framing with a 0x00 delimiter.
import binascii
import hashlib
import struct

from micropython import const

import cbor

VERSION = const(1)
DATA = const(0)
ACK = const(1)
HELLO = const(2)
TIME = const(3)
CMD = const(4)
SEQ = const(5)  # the gateway's sequence floor for the node's epoch (docs/protocol.md)
TAG_LEN = const(8)
MAX_FRAME = const(1024)  # decoded bytes; longer frames are rejected


class LinkError(ValueError):
    pass


def cobs_encode(data):
    out = bytearray(len(data) + len(data) // 254 + 2)
    code_at = 0
    o = 1
    code = 1
    for b in data:
        if b:
            out[o] = b
            o += 1
            code += 1
        if not b or code == 0xFF:
            out[code_at] = code
            code_at = o
            o += 1
            code = 1
    out[code_at] = code
    return bytes(out[:o])


def cobs_decode(data):
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise LinkError("cobs")
        end = i + code
        if end > n:
            raise LinkError("cobs")
        out.extend(data[i + 1:end])
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def hmac_sha256(key, msg):
    # RFC 2104 over hashlib.sha256, which MicroPython has on every port (hardware-backed on ESP32)
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def encode_frame(key, kind, node, seq, body):
    """The wire bytes of one frame: COBS(cbor || crc32le) 0x00."""
    buf = bytearray(b"\x86")  # array of 6: version, kind, node, seq, body, tag
    for item in (VERSION, kind, node, seq, body):
        cbor.encode_into(buf, item)
    tag = hmac_sha256(key, buf)[:TAG_LEN]
    buf.append(0x40 | TAG_LEN)
    buf.extend(tag)
    buf.extend(struct.pack("<I", binascii.crc32(buf) & 0xFFFFFFFF))
    return cobs_encode(buf) + b"\x00"


def split_frame(raw):
    """COBS-decoded bytes -> (cbor bytes); checks CRC. Raises LinkError('crc'|...)."""
    if len(raw) < 5:
        raise LinkError("short")
    body = raw[:-4]
    if struct.unpack("<I", raw[-4:])[0] != binascii.crc32(body) & 0xFFFFFFFF:
        raise LinkError("crc")
    return body


def parse_frame(body, key_for):
    """Checked CBOR bytes -> (kind, node, seq, payload). key_for(node) gives the key or None."""
    try:
        frame = cbor.decode(body)
    except (ValueError, TypeError):
        raise LinkError("schema")
    if not isinstance(frame, list) or len(frame) != 6 or frame[0] != VERSION:
        raise LinkError("schema")
    _, kind, node, seq, payload, tag = frame
    if not isinstance(node, str) or not isinstance(seq, int) or not isinstance(tag, bytes):
        raise LinkError("schema")
    key = key_for(node)
    if key is None:
        raise LinkError("unknown-node")
    if len(tag) != TAG_LEN or hmac_sha256(key, body[:-1 - TAG_LEN])[:TAG_LEN] != tag:
        raise LinkError("tag")
    return kind, node, seq, payload


def frame_seq(wire):
    """The sequence number of one of our own wire frames (as kept in the store)."""
    buf = split_frame(cobs_decode(wire[:-1]))
    i = 1  # past the array head; skip version, kind and node, read seq: the body stays unparsed
    for _ in range(3):
        i = cbor.decode_at(buf, i)[1]
    return cbor.decode_at(buf, i)[0]


class Deframer:
    """Collects bytes up to each 0x00 delimiter in a preallocated buffer; a frame longer than the
    buffer is dropped and counted, and the reader resyncs at the next delimiter."""

    def __init__(self, size=MAX_FRAME * 2):
        self.buf = bytearray(size)
        self.n = 0
        self.overflow = False
        self.overflows = 0

    def feed(self, data, out):
        """Append each complete COBS frame (without delimiter) in data to the list out."""
        buf = self.buf
        size = len(buf)
        for b in data:
            if b == 0:
                if self.n and not self.overflow:
                    out.append(bytes(buf[:self.n]))
                self.n = 0
                self.overflow = False
            elif self.n < size:
                buf[self.n] = b
                self.n += 1
            elif not self.overflow:
                self.overflow = True
                self.overflows += 1
        return out
