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
        except (ValueError, TypeError, RecursionError, senml.SenMLError, cbor2.CBORDecodeError):
            pass
    for cobs in frames.Deframer(limit=1 << 20).feed(data + b"\x00"):
        try:
            kind, node, seq, body, _tag = frames.parse(frames.check_crc(cobs))
        except frames.FrameError as exc:
            yield {"error": exc.reason, "bytes": len(cobs)}
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
            except (TypeError, ValueError, OverflowError) as exc:  # a hostile pack's odd types
                out["error"] = f"schema: {exc}"
        else:
            out["body"] = body
        try:
            dumps(out)
        except (RecursionError, ValueError) as exc:  # nested past what JSON can print
            out = {"error": "schema", "bytes": len(cobs), "detail": str(exc)[:80]}
        yield out


def dumps(obj) -> str:
    # CBOR has more types than JSON (tags, decimals, sets, big numbers): those print as text
    return json.dumps(_jsonable(obj), separators=(",", ":"), default=str)
