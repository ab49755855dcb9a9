# Minimal CBOR (RFC 8949) for the link: ints, byte and text strings, arrays, maps, floats, bools.
# Enough for SenML-CBOR packs and link frames; no tags, no indefinite lengths.
import struct


class Decimal:
    """m * 10**e, encoded as a CBOR decimal fraction (tag 4): exact where a board's 32-bit float
    is not (a 9-digit meter counter in kWh with its Wh digits)."""

    def __init__(self, m, e):
        self.m = m
        self.e = e


def _head(out, major, n):
    if n < 24:
        out.append((major << 5) | n)
    elif n < 0x100:
        out.append((major << 5) | 24)
        out.append(n)
    elif n < 0x10000:
        out.append((major << 5) | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append((major << 5) | 26)
        out.extend(struct.pack(">I", n))
    else:
        out.append((major << 5) | 27)
        out.extend(struct.pack(">Q", n))


def encode_into(out, obj):
    """Append the CBOR encoding of obj to the bytearray out."""
    if obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(out, 0, obj)
        else:
            _head(out, 1, -1 - obj)
    elif isinstance(obj, float):
        # float32 when it holds the value exactly, else float64 (a counter in kWh needs 64 bits)
        f32 = struct.pack(">f", obj)
        if struct.unpack(">f", f32)[0] == obj:
            out.append(0xFA)
            out.extend(f32)
        else:
            out.append(0xFB)
            out.extend(struct.pack(">d", obj))
    elif isinstance(obj, Decimal):
        out.append(0xC4)
        out.append(0x82)
        encode_into(out, obj.e)
        encode_into(out, obj.m)
    elif isinstance(obj, str):
        b = obj.encode()
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, (list, tuple)):
        _head(out, 4, len(obj))
        for item in obj:
            encode_into(out, item)
    elif isinstance(obj, dict):
        # keys in RFC 8949 deterministic order (by their encoding), so a frame's bytes do not
        # depend on the port's dict ordering
        _head(out, 5, len(obj))
        for kb, k in sorted((encode(k), k) for k in obj):
            out.extend(kb)
            encode_into(out, obj[k])
    else:
        raise TypeError("cbor: cannot encode %s" % type(obj))
    return out


def encode(obj):
    return bytes(encode_into(bytearray(), obj))


def _half(h):
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        val = mant * 2.0 ** -24
    elif exp == 31:
        val = float("inf") if mant == 0 else float("nan")
    else:
        val = (mant + 1024) * 2.0 ** (exp - 25)
    return -val if h & 0x8000 else val


def _decode(buf, i, depth):
    if depth > 16:
        raise ValueError("cbor: nested too deep")
    ib = buf[i]
    i += 1
    major = ib >> 5
    info = ib & 0x1F
    if major == 7:
        if info == 20:
            return False, i
        if info == 21:
            return True, i
        if info == 22:
            return None, i
        if info == 25:
            return _half((buf[i] << 8) | buf[i + 1]), i + 2
        if info == 26:
            return struct.unpack(">f", bytes(buf[i:i + 4]))[0], i + 4
        if info == 27:
            return struct.unpack(">d", bytes(buf[i:i + 8]))[0], i + 8
        raise ValueError("cbor: unsupported simple value")
    if info < 24:
        n = info
    elif info == 24:
        n = buf[i]
        i += 1
    elif info == 25:
        n = (buf[i] << 8) | buf[i + 1]
        i += 2
    elif info == 26:
        n = struct.unpack(">I", bytes(buf[i:i + 4]))[0]
        i += 4
    elif info == 27:
        n = struct.unpack(">Q", bytes(buf[i:i + 8]))[0]
        i += 8
    else:
        raise ValueError("cbor: indefinite length not supported")
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major in (2, 3):
        if i + n > len(buf):
            raise ValueError("cbor: truncated")
        b = bytes(buf[i:i + n])
        return (b if major == 2 else b.decode()), i + n
    if major == 4:
        if n > len(buf):
            raise ValueError("cbor: bad length")
        items = []
        for _ in range(n):
            v, i = _decode(buf, i, depth + 1)
            items.append(v)
        return items, i
    if major == 5:
        if n > len(buf):
            raise ValueError("cbor: bad length")
        d = {}
        for _ in range(n):
            k, i = _decode(buf, i, depth + 1)
            v, i = _decode(buf, i, depth + 1)
            d[k] = v
        return d, i
    if major == 6 and n == 4:  # decimal fraction [exponent, mantissa]
        v, i = _decode(buf, i, depth + 1)
        if not (isinstance(v, list) and len(v) == 2):
            raise ValueError("cbor: bad decimal fraction")
        return Decimal(v[1], v[0]), i
    raise ValueError("cbor: unsupported tag")


def decode_at(buf, i):
    """(item, index after it) for the item starting at buf[i]."""
    try:
        return _decode(buf, i, 0)
    except IndexError:
        raise ValueError("cbor: truncated")


def decode(buf):
    """Decode one CBOR item that fills buf exactly; ValueError on anything else."""
    try:
        obj, end = _decode(buf, 0, 0)
    except IndexError:
        raise ValueError("cbor: truncated")
    if end != len(buf):
        raise ValueError("cbor: trailing bytes")
    return obj
