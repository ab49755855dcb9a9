"""`sensorcity replay` end to end, with the hold-out's heap (--heap 64k): the real firmware on the
emulated board, the real link codec, the gateway's checks; against independent references: the
analytic IEC 61672-1 A-weighting, dsmr-parser, and hand-computed traffic."""

import json
import math
import re
import subprocess
import wave

import numpy as np
import pytest

from rigs.targets import SENSORCITY
from test_p1 import DATA, oracle, spec_for, split, with_crc


def replay(*args):
    p = subprocess.run([SENSORCITY, "replay", *map(str, args), "--heap", "64k"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines()]
    for r in out:
        assert set(r) == {"n", "u", "v", "t"}
        assert r["n"].startswith("urn:dev:")
    return out, p.stderr


def by_time(records, quantity):
    return {r["t"]: r["v"] for r in records if r["n"].rsplit(":", 1)[1] == quantity}


# --- noise ---------------------------------------------------------------------------------------

def a_weight_db(f):
    """IEC 61672-1 (E.6), analytic."""
    f1, f2, f3, f4 = 20.598997, 107.65265, 737.86223, 12194.217
    ra = (f4 ** 2 * f ** 4) / ((f ** 2 + f1 ** 2) * math.sqrt((f ** 2 + f2 ** 2) * (f ** 2 + f3 ** 2))
                               * (f ** 2 + f4 ** 2))
    return 20 * math.log10(ra) + 2.0


def write_wav(path, x, rate, bits):
    full = 2 ** (bits - 1)
    ints = np.clip(np.round(x * full), -full, full - 1).astype("<i4")
    raw = ints.tobytes()
    if bits == 16:
        raw = ints.astype("<i2").tobytes()
    elif bits == 24:
        raw = np.frombuffer(raw, np.uint8).reshape(-1, 4)[:, :3].tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(raw)


def tone(f, spl, seconds, rate=48000, sens=-26.0):
    """A tone as a microphone of sensitivity `sens` (dBFS re a full-scale sine at 94 dB SPL)
    delivers it."""
    t = np.arange(int(seconds * rate)) / rate
    return 10 ** ((spl - 94.0 + sens) / 20) * np.sin(2 * np.pi * f * t)


@pytest.mark.unixport
@pytest.mark.parametrize("f,spl,bits,tol", [(1000, 94, 24, 0.2), (125, 80, 16, 0.5),
                                            (31.5, 90, 24, 0.75), (8000, 60, 32, 1.0),
                                            (12500, 70, 24, 1.5), (1000, 40, 24, 0.2)])
def test_noise_tones_match_the_analytic_a_weighting(tmp_path, f, spl, bits, tol):
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(f, spl, 2.5), 48000, bits)
    out, _ = replay("noise", "--wav", wav, "--interval", "1", "--mic", "ideal")
    laeq = by_time(out, "LAeq")
    assert sorted(laeq) == [0, 1, 2]  # the last, partial half second is flushed
    expected = spl + a_weight_db(f)
    assert abs(laeq[1] - expected) <= tol, (laeq, expected)


@pytest.mark.unixport
def test_noise_level_steps_give_ln_levels(tmp_path):
    # 6 s at 70 dB then 4 s at 50 dB (1 kHz) in one 10 s interval: LA10 and LA50 are the loud
    # level, LA90 the quiet one, LAFmax/LAFmin the two levels, LAeq the energy mean.
    x = np.concatenate([tone(1000, 70, 6), tone(1000, 50, 4)])
    wav = tmp_path / "steps.wav"
    write_wav(wav, x, 48000, 24)
    out, _ = replay("noise", "--wav", wav, "--interval", "10", "--mic", "ideal")
    v = {r["n"].rsplit(":", 1)[1]: r["v"] for r in out if r["t"] == 0}
    laeq = 10 * math.log10((6 * 10 ** 7 + 4 * 10 ** 5) / 10)
    assert abs(v["LAeq"] - laeq) < 0.2, v
    assert abs(v["LAFmax"] - 70) < 0.2 and abs(v["LAFmin"] - 50) < 0.2, v
    assert abs(v["LA10"] - 70) < 0.2 and abs(v["LA50"] - 70) < 0.2 and abs(v["LA90"] - 50) < 0.2


def riff(fmt_tag, bits, rate, payload, extensible=False):
    """A WAV written by hand: WAVE_FORMAT_EXTENSIBLE as most tools write 24-bit audio."""
    import struct
    align = bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else fmt_tag, 1, rate, rate * align, align,
                      bits)
    if extensible:
        guid = struct.pack("<H", fmt_tag) + bytes.fromhex("000000001000800000aa00389b71")
        fmt += struct.pack("<HHI", 22, bits, 4) + guid
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I",
                                                                                len(payload))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + len(payload)) + b"WAVE" + chunks + payload


@pytest.mark.unixport
@pytest.mark.parametrize("kind", ["pcm24-extensible", "float32"])
def test_noise_reads_extensible_and_float_wavs(tmp_path, kind):
    x = tone(1000, 94, 1.5)
    if kind == "float32":
        data = riff(3, 32, 48000, x.astype("<f4").tobytes())
    else:
        ints = np.round(x * 2 ** 23).astype("<i4").tobytes()
        data = riff(1, 24, 48000, np.frombuffer(ints, np.uint8).reshape(-1, 4)[:, :3].tobytes(),
                    extensible=True)
    wav = tmp_path / "x.wav"
    wav.write_bytes(data)
    out, _ = replay("noise", "--wav", wav, "--interval", "1", "--mic", "ideal")
    assert abs(by_time(out, "LAeq")[0] - 94.0) < 0.2


def test_noise_rejects_a_rate_the_node_cannot_sample(tmp_path):
    wav = tmp_path / "cd.wav"
    write_wav(wav, tone(1000, 94, 0.5, rate=44100), 44100, 16)
    p = subprocess.run([SENSORCITY, "replay", "noise", "--wav", str(wav)], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "44100 Hz" in p.stderr and len(p.stderr.splitlines()) == 1


# --- energy --------------------------------------------------------------------------------------

@pytest.mark.unixport
@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.txt")))
def test_energy_real_telegrams_match_dsmr_parser(name):
    text = (DATA / name).read_bytes().decode("latin-1")
    want = oracle(text, spec_for(name))
    out, _ = replay("energy", "--p1", DATA / name, "--interval", "60")
    got = {r["n"].rsplit(":", 1)[1]: r["v"] for r in out}
    assert got.pop("p1_crc_errors") == 0
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v / 1000, abs=1e-9), k


@pytest.mark.unixport
def test_energy_stream_intervals_on_the_meter_clock(tmp_path):
    # Five DSMR 5 telegrams 20 s apart by their own clock, one with a flipped bit: 60 s intervals
    # [0, 60) holds telegrams at 0, 20, 40 (the one at 40 broken), [60, 120) those at 60 and 80.
    base = (DATA / "dsmr_v5_iskra_mt382.txt").read_bytes().decode("latin-1")
    body, _ = split(base)
    stamp = re.search(r"0-0:1\.0\.0\((\d{12})W\)", body).group(1)
    stream, powers = "", []
    for k in range(5):
        kw = 0.5 + k
        b = body.replace(stamp, f"1701021920{k * 20:02d}" if k < 3 else f"1701021921{(k - 3) * 20:02d}")
        b = re.sub(r"1-0:1\.7\.0\([\d.]+\*kW\)", f"1-0:1.7.0({kw:06.3f}*kW)", b)
        t = with_crc(b)
        if k == 2:
            t = t.replace("1-0:1.7.0(0", "1-0:1.7.0(1")  # a bit error: CRC fails
        else:
            powers.append(oracle(t, spec_for("dsmr_v5")))
        stream += t
    p1 = tmp_path / "stream.p1"
    p1.write_bytes(stream.encode())
    out, log = replay("energy", "--p1", p1, "--interval", "60")
    power = by_time(out, "power_import")
    crc = by_time(out, "p1_crc_errors")
    assert power[0] == pytest.approx((powers[0]["power_import"] + powers[1]["power_import"]) / 2000)
    assert power[60] == pytest.approx((powers[2]["power_import"] + powers[3]["power_import"]) / 2000)
    assert crc == {0: 1, 60: 0}
    assert "telegrams=4" in log and "crc_errors=1" in log


# --- traffic -------------------------------------------------------------------------------------

def vehicle(lane, t0, kmh, length, spacing=4.0, loop=2.0):
    v = kmh / 3.6
    occ = (length + loop) / v
    tb = t0 + spacing / v
    return [(t0, lane, "A", 1), (t0 + occ, lane, "A", 0), (tb, lane, "B", 1), (tb + occ, lane, "B", 0)]


@pytest.mark.unixport
def test_traffic_vehicles_of_known_speed_and_length(tmp_path):
    # interval 60 s: lane 1 gets three cars and a truck in [0, 60), a bus in [60, 120);
    # lane 2 stays empty and still reports its zero counts.
    vs = [(1, 5.0, 50.0, 4.5), (1, 20.0, 30.0, 4.0), (1, 31.0, 70.0, 5.0), (1, 45.0, 40.0, 16.0),
          (1, 70.0, 60.0, 11.0)]
    edges = sorted(e for v in vs for e in vehicle(*v))
    csv = tmp_path / "edges.csv"
    csv.write_text("t,lane,loop,state\n" + "".join(f"{t:.6f},{l},{lp},{s}\n"
                                                    for t, l, lp, s in edges)
                   + "100.0,2,A,1\n100.5,2,A,0\n")  # a lone A pulse on lane 2: unmatched
    out, _ = replay("traffic", "--edges", csv, "--interval", "60", "--loop-length", "2",
                    "--loop-spacing", "4")
    q = lambda name: by_time(out, name)  # noqa: E731
    assert q("lane1/count") == {0: 4, 60: 1}
    assert q("lane1/count_c1") == {0: 3, 60: 0}
    assert q("lane1/count_c2") == {0: 0, 60: 1}
    assert q("lane1/count_c3") == {0: 1, 60: 0}
    assert q("lane2/count") == {0: 0, 60: 0}
    speeds = [50.0, 30.0, 70.0, 40.0]
    assert q("lane1/speed_mean")[0] == pytest.approx(np.mean(speeds), abs=0.01)
    assert q("lane1/speed_v85")[0] == pytest.approx(np.percentile(speeds, 85), abs=0.01)
    occ0 = sum((ln + 2.0) / (kmh / 3.6) for _, t0, kmh, ln in vs[:4]) / 60 * 100
    assert q("lane1/occupancy")[0] == pytest.approx(occ0, abs=0.01)
    assert q("lane2/occupancy")[60] == pytest.approx(0.5 / 60 * 100, abs=0.01)
