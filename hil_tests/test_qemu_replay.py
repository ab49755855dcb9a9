"""`sensorcity replay --target qemu`: the same firmware files and replay driver on the 32-bit QEMU
board print the same records as on the 64-bit unix port, for every kind of input: the point of
the tier is that fixed-point DSP and aggregation hold on 32-bit ints. Energy is also checked
against dsmr-parser, traffic against hand-computed truth, noise against the analytic A-weighting
(the references of test_replay.py)."""

import json
import subprocess

import numpy as np
import pytest

from rigs.targets import SENSORCITY
from sensorcity.tools.sim.signals import Meter
from test_p1 import DATA, oracle, spec_for
from test_replay import a_weight_db, by_time, tone, vehicle, write_wav

pytestmark = [pytest.mark.qemu, pytest.mark.unixport]  # each input runs on both targets


def replay(target, *args, heap="64k"):
    p = subprocess.run([SENSORCITY, "replay", *map(str, args), "--heap", heap,
                        "--target", target], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()], p.stderr


def at_board_precision(records):
    # a board's float is single precision (the unix port's double): 52.284 arrives as the
    # float32 nearest it, 52.284000396728516; ints and decimal fractions must match exactly
    return [dict(r, v=np.float32(r["v"])) if isinstance(r["v"], float) else r for r in records]


def both(*args, heap="64k"):
    """Records on the unix port and on QEMU; they must be equal, value for value."""
    unix, _ = replay("unix", *args, heap=heap)
    qemu, log = replay("qemu", *args, heap=heap)
    assert unix, "no records"
    assert at_board_precision(qemu) == at_board_precision(unix)
    return qemu, log


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.txt")))
def test_energy_real_telegrams(name):
    out, _ = both("energy", "--p1", DATA / name, "--interval", "60")
    want = oracle((DATA / name).read_bytes().decode("latin-1"), spec_for(name))
    got = {r["n"].rsplit(":", 1)[1]: r["v"] for r in out}
    assert got.pop("p1_crc_errors") == 0
    assert got == {k: pytest.approx(v / 1000, abs=1e-9) for k, v in want.items()}


def test_energy_stream_of_telegrams(tmp_path):
    # 45 DSMR 5 telegrams of a varying load, one a second by the meter's period, in 10 s
    # intervals: the mean power of each interval is its telegrams' mean (dsmr-parser's values)
    meter = Meter(seed=7)
    telegrams = [meter.second() for _ in range(45)]
    p1 = tmp_path / "stream.p1"
    p1.write_bytes(b"".join(telegrams))
    out, log = both("energy", "--p1", p1, "--interval", "10")
    power = [float(oracle(t.decode("latin-1"), spec_for("dsmr_v5"))["power_import"]) / 1000
             for t in telegrams]
    got = by_time(out, "power_import")
    assert sorted(got) == [0, 10, 20, 30, 40]
    for t0, v in got.items():
        assert v == pytest.approx(np.mean(power[t0:t0 + 10]), abs=1e-3), t0
    assert "telegrams=45" in log and "crc_errors=0" in log


def test_traffic_across_the_microsecond_wrap(tmp_path):
    # 25 minutes of two lanes in 5-minute intervals: the board's edge times wrap at 2^30 us
    # (17.9 min) in the middle, where 64-bit ints would not notice a mistake.
    rng = np.random.default_rng(5)
    vs = [(1 + k % 2, t0, kmh, length) for k, (t0, kmh, length) in enumerate(zip(
        np.arange(10.0, 1500.0, 37.0), rng.uniform(30, 80, 41), rng.choice([4.5, 8.0, 16.5], 41)))]
    edges = sorted(e for v in vs for e in vehicle(*v))
    csv = tmp_path / "edges.csv"
    csv.write_text("t,lane,loop,state\n" + "".join(f"{t:.6f},{l},{lp},{s}\n"
                                                    for t, l, lp, s in edges))
    out, _ = both("traffic", "--edges", csv, "--interval", "300")
    for lane in (1, 2):
        counts = by_time(out, f"lane{lane}/count")
        assert counts == {t: sum(1 for ln, t0, _, _ in vs if ln == lane and t <= t0 < t + 300)
                          for t in range(0, 1500, 300)}
        speeds = by_time(out, f"lane{lane}/speed_mean")
        for t, v in speeds.items():
            mine = [kmh for ln, t0, kmh, _ in vs if ln == lane and t <= t0 < t + 300]
            assert v == pytest.approx(np.mean(mine), abs=0.01)


@pytest.mark.parametrize("f,spl", [(1000, 94), (31.5, 90), (8000, 45)])
def test_noise_tones(tmp_path, f, spl):
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(f, spl, 2.0), 48000, 24)
    # in 64k on both: on QEMU the modules are in the flash's ROMFS (with them on the heap it
    # failed with MemoryError at 64k and 96k)
    out, _ = both("noise", "--wav", wav, "--interval", "1", "--mic", "ideal", heap="64k")
    laeq = by_time(out, "LAeq")
    assert abs(laeq[1] - (spl + a_weight_db(f))) <= 0.75, laeq
