"""Writes link-v1.json: link protocol v1 test vectors (wire bytes and their meaning).

Standalone on purpose (cbor2, hmac, zlib and a COBS written here), so neither codec under test
produces its own expectations. Floats are encoded as the node does: float32 when exact, else
float64. Run: .venv/bin/python protocol/vectors/generate.py
"""

import hashlib
import hmac
import json
import struct
from decimal import Decimal
import zlib
from pathlib import Path

import cbor2

KEYS = {"n1": bytes(range(32)).hex(), "traffic-7": ("5a" * 32)}


def enc(obj) -> bytes:
    if isinstance(obj, Decimal):  # decimal fraction, tag 4: [exponent, mantissa]
        sign, digits, exp = obj.as_tuple()
        m = int("".join(map(str, digits))) * (-1 if sign else 1)
        return b"\xc4" + _len(4, 2) + enc(exp) + enc(m)
    if isinstance(obj, float):
        f32 = struct.pack(">f", obj)
        if struct.unpack(">f", f32)[0] == obj:
            return b"\xfa" + f32
        return b"\xfb" + struct.pack(">d", obj)
    if isinstance(obj, list):
        return _len(4, len(obj)) + b"".join(enc(x) for x in obj)
    if isinstance(obj, dict):
        items = sorted((enc(k), enc(v)) for k, v in obj.items())  # RFC 8949 deterministic
        return _len(5, len(obj)) + b"".join(k + v for k, v in items)
    return cbor2.dumps(obj)


def _len(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    return bytes([major << 5 | 25]) + struct.pack(">H", n)


def _json(obj):
    """A decimal fraction's meaning in the JSON file: {"decfrac": [exponent, mantissa]}."""
    sign, digits, exp = obj.as_tuple()
    return {"decfrac": [exp, int("".join(map(str, digits))) * (-1 if sign else 1)]}


def cobs(data: bytes) -> bytes:
    out, block = bytearray(), bytearray()
    for b in data + b"\x00":
        if b == 0 or len(block) == 254:
            out += bytes([len(block) + 1]) + block
            block = bytearray()
            if b != 0:
                block.append(b)
        else:
            block.append(b)
    return bytes(out)


def frame(key_hex, kind, node, seq, body, corrupt=None):
    signed = b"\x86" + enc(1) + enc(kind) + enc(node) + enc(seq) + enc(body)
    tag = hmac.new(bytes.fromhex(key_hex), signed, hashlib.sha256).digest()[:8]
    if corrupt == "tag":
        tag = bytes([tag[0] ^ 1]) + tag[1:]
    raw = signed + b"\x48" + tag
    crc = struct.pack("<I", zlib.crc32(raw))
    if corrupt == "crc":
        crc = bytes([crc[0] ^ 0x80]) + crc[1:]
    return cobs(raw + crc) + b"\x00"


def main():
    bn = "urn:dev:mac:0024befffe804ff1:"
    noise = [{-2: bn, -3: 1795000000, 0: "LAeq", 1: "dB", 2: 55.25},
             {0: "LAFmax", 1: "dB", 2: 71.5}, {0: "LA90", 1: "dB", 2: 48.13}]
    energy = [{-2: "urn:dev:org:32473-sensorcity-n1:", -3: 1795000060,
               0: "energy_import_t1", 1: "kWh", 2: Decimal("12345678.901")},
              {0: "power_import", 1: "W", 2: 420}, {0: "p1_crc_errors", 1: "count", 2: 0}]
    traffic = [{-2: "urn:dev:org:32473-sensorcity-traffic-7:", -3: 1795000120,
                0: "lane1/count", 1: "count", 2: 3}, {0: "lane1/speed_v85", 1: "km/h", 2: 52.5}]
    hello = {"fw": "0.1.0", "boot": 7, "kind": "noise", "bn": bn, "interval": 60}
    hello_epoch = {"fw": "0.2.0", "boot": 1, "kind": "noise", "bn": bn, "interval": 60,
                   "safe": False, "epoch": 736113921}
    good = [
        ("data-noise", "node", 0, "n1", 1000, noise),
        ("data-energy", "node", 0, "n1", 1001, energy),
        ("data-traffic-long-node-id", "node", 0, "traffic-7", 65536, traffic),
        ("hello", "node", 2, "n1", 999, hello),
        ("ack-from-node", "node", 1, "n1", 1002, 17),
        ("ack-from-gateway", "gateway", 1, "n1", 0, 1000),
        ("time", "gateway", 3, "n1", 18, 1795000000123),
        ("cmd-interval", "gateway", 4, "n1", 19, {"op": "interval", "value": 30}),
        ("cmd-reboot", "gateway", 4, "traffic-7", 20, {"op": "reboot"}),
        ("hello-epoch", "node", 2, "n1", 0, hello_epoch),
        ("seq-floor", "gateway", 5, "n1", 21, {"epoch": 736113921, "floor": 70000}),
    ]
    out = {"keys": KEYS, "good": [], "bad": []}
    for name, origin, kind, node, seq, body in good:
        out["good"].append({
            "name": name, "from": origin, "kind": kind, "node": node, "seq": seq,
            "body": json.loads(json.dumps(body, default=_json)),
            "wire": frame(KEYS[node], kind, node, seq, body).hex()})
    k = KEYS["n1"]
    out["bad"] = [
        {"name": "bit-error", "reason": "crc", "wire": frame(k, 0, "n1", 5, noise, "crc").hex()},
        {"name": "forged-tag", "reason": "tag", "wire": frame(k, 0, "n1", 5, noise, "tag").hex()},
        {"name": "wrong-key", "reason": "tag", "wire": frame("11" * 32, 0, "n1", 5, noise).hex()},
        {"name": "unknown-node", "reason": "unknown-node",
         "wire": frame(k, 0, "stranger", 5, noise).hex()},
        {"name": "truncated", "reason": "cobs",
         "wire": frame(k, 0, "n1", 5, noise)[:40].hex() + "00"},
        {"name": "not-cbor", "reason": "schema",
         "wire": (cobs(b"\xff\xff\xff" + struct.pack("<I", zlib.crc32(b"\xff\xff\xff"))) + b"\x00").hex()},
    ]
    path = Path(__file__).with_name("link-v1.json")
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
