"""The gateway's side of link protocol v1 (docs/protocol.md), written apart from the firmware's.

Wire: COBS(cbor_frame || crc32_le(cbor_frame)) 0x00, where cbor_frame is the CBOR array
[1, kind, node, seq, body, tag] and tag = HMAC-SHA256(key, bytes of the array before tag)[:8].
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import cbor2

VERSION = 1
DATA, ACK, HELLO, TIME, CMD, SEQ = 0, 1, 2, 3, 4, 5
KIND_NAMES = {DATA: "data", ACK: "ack", HELLO: "hello", TIME: "time", CMD: "cmd", SEQ: "seq"}
TAG_LEN = 8
MAX_FRAME = 1024
SEQ_MAX = 2**32 - 1     # a node keeps its sequence in a u32 in flash (firmware/store.py)
NODE_MAX = 32           # bytes of a node id (link.cddl)
EPOCH_MAX = 2**30 - 1   # a hello's epoch: 30 bits, a small int on an ESP32 (link.cddl)
FLOOR_MAX = 2**30 - 2**20  # a seq-floor's floor is below it; the node refuses one at or above


class FrameError(ValueError):
    """A frame that cannot be accepted; .reason is the counter it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    kind: int
    node: str
    seq: int
    body: Any


def hello_epoch(frame: Frame) -> int | None:
    """The epoch a hello names (docs/protocol.md, "Re-flashed nodes"), or None."""
    epoch = frame.body.get("epoch") if frame.kind == HELLO and isinstance(frame.body, dict) \
        else None
    return epoch if type(epoch) is int else None


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            raise FrameError("cobs")
        out += data[i + 1:i + code]
        i += code
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()[:TAG_LEN]


def encode(key: bytes, kind: int, node: str, seq: int, body: Any) -> bytes:
    signed = b"\x86" + b"".join(cbor2.dumps(x) for x in (VERSION, kind, node, seq, body))
    frame = signed + cbor2.dumps(tag(key, signed))
    return cobs_encode(frame + struct.pack("<I", zlib.crc32(frame))) + b"\x00"


def check_crc(cobs: bytes) -> bytes:
    """COBS bytes (no delimiter) -> the CBOR frame, its CRC checked."""
    raw = cobs_decode(cobs)
    if len(raw) < 5:
        raise FrameError("short")
    if len(raw) - 4 > MAX_FRAME:
        raise FrameError("too-long")
    frame, crc = raw[:-4], struct.unpack("<I", raw[-4:])[0]
    if zlib.crc32(frame) != crc:
        raise FrameError("crc")
    return frame


def parse(frame: bytes) -> tuple[int, str, int, object, bytes]:
    """A CRC-checked CBOR frame -> (kind, node, seq, body, tag), its header bounded as
    link.cddl says; FrameError("schema") otherwise. The tag is not checked here."""
    try:
        item = cbor2.loads(frame)
    except Exception as exc:  # cbor2 raises several types on malformed input
        raise FrameError("schema", "not CBOR") from exc
    if not (isinstance(item, list) and len(item) == 6 and item[0] == VERSION):
        raise FrameError("schema", "not a v1 frame")
    _, kind, node, seq, body, mac = item
    # type checks first: an unhashable kind (a list) must not reach the dict lookup
    if type(kind) is not int or kind not in KIND_NAMES or type(node) is not str \
            or not 1 <= len(node.encode("utf-8", "replace")) <= NODE_MAX \
            or type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        raise FrameError("schema", "bad header")
    if type(mac) is not bytes or len(mac) != TAG_LEN:
        raise FrameError("schema", "bad tag field")
    return kind, node, seq, body, mac


def decode(cobs: bytes, key_for: Callable[[str], bytes | None]) -> Frame:
    """COBS bytes (no delimiter) -> Frame, or FrameError with the rejection reason."""
    frame = check_crc(cobs)
    kind, node, seq, body, mac = parse(frame)
    if not frame.endswith(b"\x48" + mac):
        raise FrameError("schema", "bad tag field")
    key = key_for(node)
    if key is None:
        raise FrameError("unknown-node", node)
    if not hmac.compare_digest(tag(key, frame[:-1 - TAG_LEN]), mac):
        raise FrameError("tag", node)
    return Frame(kind, node, seq, body)


class Deframer:
    """Splits a byte stream at 0x00; bounded: a run longer than the limit is dropped and counted."""

    def __init__(self, limit: int = 2 * MAX_FRAME):
        self.buf = bytearray()
        self.limit = limit
        self.skipping = False
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        frames = []
        while data:
            cut = data.find(b"\x00")
            part, data = (data, b"") if cut < 0 else (data[:cut], data[cut + 1:])
            if not self.skipping:
                self.buf += part
                if len(self.buf) > self.limit:
                    self.buf.clear()
                    self.skipping = True
                    self.overflows += 1
            if cut >= 0:
                if self.buf and not self.skipping:
                    frames.append(bytes(self.buf))
                self.buf.clear()
                self.skipping = False
        return frames
