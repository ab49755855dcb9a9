"""Encrypted P1 (AES-128-GCM in DLMS general-global-cipher frames, as Luxembourg's Smarty and
Austrian meters send it) through `sensorcity replay energy --p1-key` on the unix port and the
QEMU board (whose MicroPython has no cryptolib: the firmware's viper AES runs there).

The frames are made here with the host's `cryptography` AES-GCM from the real telegrams in
shared/data/dsmr; dsmr-parser's own decryption (via dlms-cosem) must open them to the same
readings, so the frame format is dsmr-parser's, not ours. The firmware's records are checked
against dsmr-parser's reading of the plaintext.
"""

import json
import os
import subprocess
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from dsmr_parser.exceptions import DecryptionError
from dsmr_parser.parsers import TelegramParser

from mprun import MP_TESTS, run_micropython
from rigs.targets import SENSORCITY
from sensorcity.tools.sim.signals import Meter
from test_p1 import DATA, FILES, oracle, spec_for
from test_qemu_replay import replay
from test_replay import by_time

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
SMARTY_AUTH = bytes.fromhex("00112233445566778899aabbccddeeff")  # Luxmetering P1 spec 3.2.5
TITLE = b"SAG\x05\x00\x00\x12\x34"
TARGETS = [pytest.param("unix", marks=pytest.mark.unixport),
           pytest.param("qemu", marks=pytest.mark.qemu)]


def frame(telegram: bytes, counter: int, key=KEY, auth=SMARTY_AUTH, title=TITLE) -> bytes:
    """A general-global-cipher frame: 0xDB, title, 0x82 + length, 0x30, counter, C, 12-byte tag."""
    fc = counter.to_bytes(4, "big")
    sealed = AESGCM(key).encrypt(title + fc, telegram, b"\x30" + auth)
    body = b"\x30" + fc + sealed[:-16] + sealed[-16:-4]  # the tag truncated to 12 bytes
    return b"\xdb\x08" + title + b"\x82" + len(body).to_bytes(2, "big") + body


def encrypted_spec(spec):
    return dict(spec, general_global_cipher=True)


@pytest.mark.parametrize("name", FILES)
def test_dsmr_parser_opens_the_frames(name):
    text = (DATA / name).read_bytes()
    f = frame(text, 0x10000001)
    parser = TelegramParser(encrypted_spec(spec_for(name)))
    got = parser.parse(f.hex(), KEY.hex(), SMARTY_AUTH.hex())
    assert str(got) == str(TelegramParser(spec_for(name)).parse(text.decode("latin-1")))
    with pytest.raises(DecryptionError):
        parser.parse(f.hex(), "ff" * 16, SMARTY_AUTH.hex())


def run(target, path, *extra, interval=60):
    # 64 KiB on QEMU (32-bit objects, bytecode in the ROMFS: the ESP32's budget); the 64-bit unix
    # port, bytecode on its heap, needs more (docs/energy.md, Encrypted P1)
    return replay(target, "energy", "--p1", path, "--interval", str(interval), *extra,
                  heap="64k" if target == "qemu" else "96k")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FILES)
def test_real_telegrams_decrypted_match_dsmr_parser(tmp_path, target, name):
    text = (DATA / name).read_bytes()
    p1 = tmp_path / "enc.p1"
    p1.write_bytes(frame(text, 7))
    out, log = run(target, p1, "--p1-key", KEY.hex())
    got = {r["n"].rsplit(":", 1)[1]: r["v"] for r in out}
    assert got.pop("p1_crc_errors") == 0 and got.pop("p1_decrypt_errors") == 0
    want = oracle(text.decode("latin-1"), spec_for(name))
    assert got == {k: pytest.approx(v / 1000, abs=1e-9) for k, v in want.items()}
    assert "p1_frames=1" in log and "decrypt_errors=0" in log


@pytest.mark.adversarial
@pytest.mark.parametrize("target", TARGETS)
def test_a_stream_with_line_faults_and_a_forged_frame(tmp_path, target):
    # 30 DSMR 5 telegrams a second apart in 10 s intervals. Frame 4 has a ciphertext bit
    # flipped, frame 12 is sealed with another key (a forgery), frame 21 a flipped tag bit;
    # line noise with a false frame start precedes frame 8, and the stream ends inside a 31st
    # frame. Each of those four frames is one decrypt error; the rest are opened.
    meter = Meter(seed=3)
    telegrams = [meter.second() for _ in range(30)]
    rng = __import__("random").Random(4)
    stream = b""
    bad = {4, 12, 21}
    for k, t in enumerate(telegrams):
        f = bytearray(frame(t, 100 + k, key=os.urandom(16) if k == 12 else KEY))
        if k == 4:
            f[18 + 40] ^= 0x08
        if k == 21:
            f[-3] ^= 0x01
        if k == 8:
            stream += bytes(rng.randrange(256) for _ in range(37)) + b"\xdb\x08" + os.urandom(5)
        stream += bytes(f)
    stream += frame(telegrams[0], 200)[:60]
    p1 = tmp_path / "faults.p1"
    p1.write_bytes(stream)
    out, log = run(target, p1, "--p1-key", KEY.hex(), interval=10)
    errors = by_time(out, "p1_decrypt_errors")
    # the false start is one (0xDB 0x08 then no general-global-cipher header), the cut-off
    # frame at the end one more
    assert sum(errors.values()) == len(bad) + 2, errors
    assert sum(by_time(out, "p1_crc_errors").values()) == 0
    assert f"telegrams={30 - len(bad)}" in log and f"p1_frames={30 - len(bad)}" in log
    good = [k for k in range(30) if k not in bad]
    power = {k: oracle(telegrams[k].decode("latin-1"), spec_for("dsmr_v5"))["power_import"]
             for k in good}
    # without a clock in these telegrams, replay's clock is the meter's period (1 s for DSMR 5)
    # counted over the valid telegrams: interval i holds valid telegrams 10 i .. 10 i + 9
    got = by_time(out, "power_import")
    for i, t0 in enumerate(sorted(got)):
        mine = [power[k] for k in good[10 * i:10 * i + 10]]
        assert got[t0] == pytest.approx(sum(mine) / len(mine) / 1000, abs=1e-3), t0


@pytest.mark.adversarial
@pytest.mark.unixport
def test_a_wrong_key_opens_nothing(tmp_path):
    p1 = tmp_path / "enc.p1"
    p1.write_bytes(b"".join(frame((DATA / n).read_bytes(), k) for k, n in enumerate(FILES)))
    out, log = run("unix", p1, "--p1-key", "ff" * 16)
    got = {r["n"].rsplit(":", 1)[1]: r["v"] for r in out}
    assert got == {"p1_crc_errors": 0, "p1_decrypt_errors": len(FILES)}
    # the right key, but another authentication key than the meter's: the tag fails too
    out, _ = run("unix", p1, "--p1-key", KEY.hex(), "--p1-auth-key", "aa" * 16)
    assert {r["n"].rsplit(":", 1)[1]: r["v"] for r in out}["p1_decrypt_errors"] == len(FILES)


def test_a_key_that_is_not_32_hex_digits_is_one_line(tmp_path):
    p1 = tmp_path / "enc.p1"
    p1.write_bytes(b"")
    for bad in ("00112233", "zz" * 16):
        p = subprocess.run([SENSORCITY, "replay", "energy", "--p1", p1, "--p1-key", bad],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "--p1-key" in p.stderr and "32 hex digits" in p.stderr


def number(text):
    m, _, e = text.partition(" ")
    return Decimal(m).scaleb(int(e or 0))


@pytest.mark.unixport
def test_the_nodes_energy_pipeline_reads_an_encrypted_meter(tmp_path):
    # sensors.energy as the node runs it, the keys in its config: 6 frames, one an interval,
    # the fourth forged, read in 300-byte chunks. Each interval reports its telegram's values,
    # the forged one's interval p1_decrypt_errors 1 and no reading; intervals close on the
    # node's clock checks, so the test waits on them, not on the wall clock.
    meter = Meter(seed=9)
    telegrams = [meter.second() for _ in range(6)]
    frames = [frame(t, k, key=KEY if k != 3 else bytes(16)) for k, t in enumerate(telegrams)]
    p1 = tmp_path / "enc.p1"
    p1.write_bytes(b"".join(frames))
    cfg = {"sensor": "energy", "p1_key": KEY.hex()}
    out = run_micropython(MP_TESTS / "energy_driver.py", p1, json.dumps(cfg), 300,
                          json.dumps([len(f) for f in frames]), heap="256K").stdout
    rows = {t: {n: number(v) for n, _, v in recs} for t, recs in map(json.loads, out.splitlines())}
    assert sorted(rows) == list(range(7)), out
    assert rows.pop(6) == {"p1_crc_errors": 0, "p1_decrypt_errors": 0}  # the line is quiet
    for k, t in enumerate(telegrams):
        got = rows[k]
        assert got.pop("p1_crc_errors") == 0
        assert got.pop("p1_decrypt_errors") == (k == 3)
        want = {} if k == 3 else oracle(t.decode("latin-1"), spec_for("dsmr_v5"))
        assert {n: v * 1000 for n, v in got.items()} == want, k
