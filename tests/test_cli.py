"""The CLI: provision writes a 0600 config and registry and never prints a key; bad input gets one
line and exit code 2; decode turns a capture into JSON lines."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sensorcity.protocol import frames

SENSORCITY = str(Path(sys.executable).parent / "sensorcity")


def run(*args, stdin=None):
    return subprocess.run([SENSORCITY, *args], capture_output=True, text=stdin is None or
                          isinstance(stdin, str), input=stdin, timeout=60)


def test_provision_writes_private_files_and_hides_the_key(tmp_path):
    p = run("provision", "--node-id", "asn-1", "--sensor", "noise", "--registry",
            str(tmp_path / "reg.json"), "--out", str(tmp_path / "asn-1.json"))
    assert p.returncode == 0, p.stderr
    cfg = json.loads((tmp_path / "asn-1.json").read_text())
    reg = json.loads((tmp_path / "reg.json").read_text())
    assert reg["nodes"]["asn-1"]["key"] == cfg["key"] and len(bytes.fromhex(cfg["key"])) == 32
    assert cfg["key"] not in p.stdout + p.stderr
    for f in ("asn-1.json", "reg.json"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600


def test_provision_keeps_an_encrypted_meters_key_in_the_node_config_only(tmp_path):
    meter_key = "0f" * 16
    p = run("provision", "--node-id", "lux-1", "--sensor", "energy", "--registry",
            str(tmp_path / "reg.json"), "--out", str(tmp_path / "lux-1.json"),
            "--p1-key", meter_key.upper())
    assert p.returncode == 0, p.stderr
    cfg = json.loads((tmp_path / "lux-1.json").read_text())
    assert cfg["p1_key"] == meter_key and "p1_auth_key" not in cfg
    assert meter_key not in (tmp_path / "reg.json").read_text().lower()
    assert meter_key not in (p.stdout + p.stderr).lower()
    for args in (["--sensor", "noise", "--p1-key", meter_key], ["--sensor", "energy", "--p1-key",
                                                                "0f" * 15],
                 ["--sensor", "energy", "--p1-key", meter_key, "--p1-auth-key", "xyz"]):
        p = run("provision", "--node-id", "lux-2", "--registry", str(tmp_path / "r2.json"),
                "--out", str(tmp_path / "lux-2.json"), *args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert not (tmp_path / "lux-2.json").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "gw.toml"
    bad.write_text("listen = [\"udp://x\"]\n")
    wind = tmp_path / "wind.json"  # a node config of a kind there is none of
    wind.write_text(json.dumps({"node_id": "w1", "sensor": "wind", "key": "00" * 32}))
    for args in (["provision", "--node-id", "bad id!", "--sensor", "noise", "--registry",
                  str(tmp_path / "r.json"), "--out", str(tmp_path / "n.json")],
                 ["gateway", "check-config", "--config", str(bad)],
                 ["gateway", "check-config", "--config", str(tmp_path / "missing.toml")],
                 ["emulate", "--config", str(tmp_path / "missing.json"), "--port", "tcp://x:1"],
                 ["emulate", "--config", str(wind), "--port", "tcp://127.0.0.1:1"],
                 ["emulate", "--config", str(wind), "--port", "/dev/null", "--target", "qemu"]):
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def test_decode_prints_frames_as_json_lines(tmp_path):
    key = bytes(32)
    wire = frames.encode(key, frames.DATA, "n1", 7, [{-2: "urn:dev:mac:0011:", -3: 1795000000,
                                                       0: "LAeq", 1: "dB", 2: 55.5}])
    cap = tmp_path / "cap.bin"
    cap.write_bytes(b"noise\x00" + wire + wire[:10] + b"\x00")
    p = run("decode", str(cap))
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    ok = [x for x in lines if x.get("kind") == "data"]
    assert ok[0]["records"] == [{"n": "urn:dev:mac:0011:LAeq", "u": "dB", "v": 55.5,
                                 "t": 1795000000}]
    assert any("error" in x for x in lines)


def raw_frame(item) -> bytes:
    """Any CBOR item as a frame with a good CRC: what a stranger can put on a link."""
    import struct
    import zlib

    import cbor2
    raw = cbor2.dumps(item)
    return frames.cobs_encode(raw + struct.pack("<I", zlib.crc32(raw))) + b"\x00"


@pytest.mark.adversarial
@pytest.mark.parametrize("what", ["missing", "directory"])
def test_decode_of_a_file_it_cannot_read_is_one_line(tmp_path, what):
    """Issue 11 item 13: a traceback before."""
    path = tmp_path / "cap.bin"
    if what == "directory":
        path.mkdir()
    p = run("decode", str(path))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr and str(path) in p.stderr


@pytest.mark.adversarial
@pytest.mark.parametrize("item", [
    [1, [0], "n1", 1, [], b"\0" * 8],          # an unhashable kind
    [1, 0, ["n1"], 1, [], b"\0" * 8],          # a node that is not text
    [1, 0, "n1", "1", [], b"\0" * 8],          # a seq that is not a number
    {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6},   # six of something else
    [1, 2, "n1", 1, {"fw": __import__("decimal").Decimal("1.5"), 1: {2, 3}}, b"\0" * 8],
])
def test_decode_of_a_frame_with_wrong_types_is_one_line(tmp_path, item):
    """Issue 11 item 13: a frame whose fields have the wrong types gave a traceback; now its
    line says what is wrong and the exit code says a frame did not decode."""
    cap = tmp_path / "cap.bin"
    cap.write_bytes(raw_frame(item))
    p = run("decode", str(cap))
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    if isinstance(item, list) and item[1] == 2:    # a well-formed hello: its odd body printed
        assert p.returncode == 0 and out["kind"] == "hello"
    else:
        assert p.returncode == 1 and out["error"] == "schema"
