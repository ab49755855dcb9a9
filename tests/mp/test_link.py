# The firmware's link codec under the MicroPython unix port, against protocol/vectors/link-v1.json.
import binascii
import json

import cbor
import link
import mptest

with open("protocol/vectors/link-v1.json") as f:
    V = json.load(f)
KEYS = {n: binascii.unhexlify(k) for n, k in V["keys"].items()}


def _body(v):
    # JSON object keys are strings; SenML labels are integers on the wire
    if isinstance(v, list):
        return [_body(x) for x in v]
    if isinstance(v, dict):
        if "decfrac" in v:
            return cbor.Decimal(v["decfrac"][1], v["decfrac"][0])
        return {(int(k) if k.lstrip("-").isdigit() else k): _body(x) for k, x in v.items()}
    return v


def _decode(hexwire):
    wire = binascii.unhexlify(hexwire)
    return link.parse_frame(link.split_frame(link.cobs_decode(wire[:-1])), KEYS.get)


def test_node_frames_encode_byte_for_byte():
    for v in V["good"]:
        if v["from"] != "node":
            continue
        wire = link.encode_frame(KEYS[v["node"]], v["kind"], v["node"], v["seq"], _body(v["body"]))
        assert binascii.hexlify(wire).decode() == v["wire"], v["name"]


def test_frames_to_the_node_decode_to_their_meaning():
    for v in V["good"]:
        if v["from"] != "gateway":
            continue  # a node decodes only what the gateway sends it
        kind, node, seq, body = _decode(v["wire"])
        assert (kind, node, seq) == (v["kind"], v["node"], v["seq"]), v["name"]
        assert body == _body(v["body"]), v["name"]


def test_bad_vectors_are_rejected():
    reasons = {"crc": "crc", "tag": "tag", "unknown-node": "unknown-node", "cobs": None,
               "schema": "schema"}
    for v in V["bad"]:
        try:
            _decode(v["wire"])
        except link.LinkError as exc:
            want = reasons[v["reason"]]
            # a truncated frame fails COBS or, if the cut lands on a block end, its CRC
            assert want is None or str(exc) == want, (v["name"], str(exc))
            continue
        raise AssertionError("accepted " + v["name"])


def test_deframer_resyncs_and_bounds():
    d = link.Deframer(64)
    good = binascii.unhexlify(V["good"][4]["wire"])
    out = d.feed(b"junk\x00" + b"\xff" * 200 + b"\x00" + good, [])
    assert out[-1] == good[:-1]
    assert d.overflows == 1


def test_frame_seq_reads_stored_frames():
    v = V["good"][0]
    assert link.frame_seq(binascii.unhexlify(v["wire"])) == v["seq"]


mptest.run(globals())
