"""Decode link frames or MQTT batches to JSON lines."""

from __future__ import annotations

import json
import math

import cbor2

from ...protocol import frames, senml


def _jsonable(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def decode_stream(data: bytes, key_for=lambda node: None):
    """JSON-able dicts, one per frame in a raw link capture or per record in a SenML batch."""
    if data[:1] and (data[0] >> 5) == 4:  # a CBOR array: a SenML-CBOR batch
        try:
            for r in senml.resolve(cbor2.loads(data)):
                yield r.as_json()
            return
        except (ValueError, senml.SenMLError, cbor2.CBORDecodeError):
            pass
    for cobs in frames.Deframer(limit=1 << 20).feed(data + b"\x00"):
        try:
            raw = frames.check_crc(cobs)
            item = cbor2.loads(raw)
            _, kind, node, seq, body, _tag = item
        except (frames.FrameError, ValueError, cbor2.CBORDecodeError, TypeError) as exc:
            yield {"error": getattr(exc, "reason", "schema"), "bytes": len(cobs)}
            continue
        out = {"kind": frames.KIND_NAMES.get(kind, kind), "node": node, "seq": seq}
        key = key_for(node)
        if key is not None:
            try:
                frames.decode(cobs, key_for)
                out["tag"] = "ok"
            except frames.FrameError as exc:
                out["tag"] = exc.reason
        if kind == frames.DATA:
            try:
                out["records"] = [r.as_json() for r in senml.resolve(body)]
            except senml.SenMLError as exc:
                out["error"] = str(exc)
        else:
            out["body"] = _jsonable(body)
        yield out


def dumps(obj) -> str:
    return json.dumps(_jsonable(obj), separators=(",", ":"))
