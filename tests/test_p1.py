"""The firmware's P1 reader (firmware/p1.py, energy.py) under the unix port, against dsmr-parser.

dsmr-parser (PyPI) parses each telegram with the specification of its meter; the record values
follow from its parse by the definitions in docs/energy.md. Streams are built here from the real
telegrams in /work/shared/data/dsmr/ and variants with other values (CRC recomputed by
dsmr-parser), with injected faults whose number is known: every injected fault must be rejected
exactly once, every other telegram accepted with the oracle's values.
"""
import json
import random
import re
from copy import deepcopy
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser

from conftest import run_micropython

# shared/ lies beside the checkout (CI's clone too); /work/shared is the workplace's copy
DATA = next((d for d in (Path(__file__).resolve().parents[2] / "shared" / "data" / "dsmr",
                         Path("/work/shared/data/dsmr")) if d.is_dir()),
            Path("../shared/data/dsmr"))
FILES = sorted(p.name for p in DATA.glob("*.txt"))

_AT_PLAIN = deepcopy(specs.SAGEMCOM_T210_D_R)
_AT_PLAIN["general_global_cipher"] = False  # the sample is the decrypted telegram
SPECS = {  # file name prefix -> dsmr-parser specification of that meter
    "at_": _AT_PLAIN, "be_": specs.BELGIUM_FLUVIUS, "dsmr_v2_2": specs.V2_2, "dsmr_v3": specs.V3,
    "dsmr_v4": specs.V4, "dsmr_v5": specs.V5, "hu_": specs.EON_HUNGARY, "ie_": specs.ISKRA_IE,
    "nl_": specs.V5,
}

# record name -> (dsmr-parser attribute, {unit: factor to thousandths of the record unit})
ENERGY = {"kWh": 1000, "Wh": 1}
ELECTRIC = {
    "energy_import_t1": ("ELECTRICITY_USED_TARIFF_1", ENERGY),
    "energy_import_t2": ("ELECTRICITY_USED_TARIFF_2", ENERGY),
    "energy_export_t1": ("ELECTRICITY_DELIVERED_TARIFF_1", ENERGY),
    "energy_export_t2": ("ELECTRICITY_DELIVERED_TARIFF_2", ENERGY),
    "power_import": ("CURRENT_ELECTRICITY_USAGE", {"kW": 1000000, "W": 1000}),
    "power_export": ("CURRENT_ELECTRICITY_DELIVERY", {"kW": 1000000, "W": 1000}),
    "voltage_l1": ("INSTANTANEOUS_VOLTAGE_L1", {"V": 1000}),
    "voltage_l2": ("INSTANTANEOUS_VOLTAGE_L2", {"V": 1000}),
    "voltage_l3": ("INSTANTANEOUS_VOLTAGE_L3", {"V": 1000}),
    "current_l1": ("INSTANTANEOUS_CURRENT_L1", {"A": 1000}),
    "current_l2": ("INSTANTANEOUS_CURRENT_L2", {"A": 1000}),
    "current_l3": ("INSTANTANEOUS_CURRENT_L3", {"A": 1000}),
}
COUNTERS = ("energy_import_t1", "energy_import_t2", "energy_export_t1", "energy_export_t2",
            "gas_volume")
UNITS = dict.fromkeys(COUNTERS[:4], "kWh") | {"gas_volume": "m3", "power_import": "W",
                                               "power_export": "W", "p1_crc_errors": "count"}
UNITS |= {f"voltage_l{k}": "V" for k in (1, 2, 3)} | {f"current_l{k}": "A" for k in (1, 2, 3)}


def spec_for(name):
    return next(s for prefix, s in SPECS.items() if name.startswith(prefix))


def oracle(text, spec):
    """dsmr-parser's reading of one telegram as {record name: value in thousandths of its unit}."""
    tg = TelegramParser(spec).parse(text)
    out = {}
    for name, (attr, units) in ELECTRIC.items():
        obj = getattr(tg, attr, None)
        if obj is not None and obj.unit in units:
            out[name] = Decimal(obj.value) * units[obj.unit]
    for t, total in (("import", "ELECTRICITY_IMPORTED_TOTAL"), ("export", "ELECTRICITY_EXPORTED_TOTAL")):
        obj = getattr(tg, total, None)
        if (obj is not None and obj.unit in ENERGY and f"energy_{t}_t1" not in out
                and f"energy_{t}_t2" not in out):
            out[f"energy_{t}_t1"] = Decimal(obj.value) * ENERGY[obj.unit]
    for dev in sorted(getattr(tg, "MBUS_DEVICES", []), key=lambda d: d.channel_id):
        kinds = [o for n, o in dev if n.endswith("DEVICE_TYPE")]
        readings = [o for n, o in dev if n.endswith("METER_READING")]
        if kinds and int(kinds[0].value) == 3 and readings and readings[-1].unit == "m3":
            out["gas_volume"] = Decimal(readings[-1].value) * 1000
            break
    assert all(v == int(v) for v in out.values()), out  # no meter here sends finer than 1/1000
    return {k: int(v) for k, v in out.items()}


def expected_intervals(groups, readings, exact=True):
    """Combine per-telegram oracle readings into intervals of the given sizes, as defined:
    thousandths of the unit (means rounded half up) if exact, else the value in its unit."""
    it = iter(readings)
    for n in groups:
        tel = [next(it) for _ in range(n)]
        rec = {}
        for name in UNITS:
            vals = [t[name] for t in tel if name in t]
            if not vals or name == "p1_crc_errors":
                continue
            mean = Decimal(vals[-1]) if name in COUNTERS else Decimal(sum(vals)) / len(vals)
            rec[name] = int(mean.quantize(Decimal(1), ROUND_HALF_UP)) if exact else float(mean / 1000)
        yield rec


DRIVER = """
import sys, json
import p1, energy
path, max_len, seed, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = p1.P1Reader(max_len)
e = energy.EnergyInterval(r)
buf = bytearray(3000)
mv = memoryview(buf)
x = seed
def out(k):
    print(json.dumps({"n": k, "rec": e.take(mode == "exact")}))
pending = 0
with open(path, "rb") as f:
    while True:
        # chunk sizes from 1 byte (a slow UART poll) to more than a telegram; intervals of
        # one to four telegrams
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        size = (1 + x % 7, 1 + x % 600, 1 + x % 3000)[(x >> 16) % 3]
        got = f.readinto(mv[:size])
        if not got:
            break
        pending += r.feed(buf, got)
        if pending >= 1 + (x >> 20) % 4:
            out(pending)
            pending = 0
pending += r.close()
out(pending)
print(json.dumps({"telegrams": r.telegrams, "crc": r.crc_errors, "malformed": r.malformed,
                  "overflows": r.overflows, "truncated": r.truncated, "parity": r.parity_errors,
                  "fragments": r.fragments}))
"""


def run_reader(tmp_path, stream, seed=1, max_len=2048, mode="exact"):
    script = tmp_path / "p1_driver.py"
    script.write_text(DRIVER)
    data = tmp_path / "stream.bin"
    data.write_bytes(stream)
    lines = [json.loads(s) for s in
             run_micropython(script, data, max_len, seed, mode, heap="64K").stdout.splitlines()]
    return lines[:-1], lines[-1]


def records(entry):
    got = {}
    for name, unit, value in entry["rec"]:
        assert UNITS[name] == unit, (name, unit)
        got[name] = value
    return got


# -- building streams -------------------------------------------------------------------------

def with_crc(body, unpadded=False):
    """body runs from '/' to '!' inclusive; appends its CRC (computed by dsmr-parser) and CRLF."""
    crc = TelegramParser.crc16(body)
    return body + (f"{crc:X}" if unpadded else f"{crc:04X}") + "\r\n"


def split(text):
    """(body from '/' to '!', CRC text) of a telegram."""
    i = text.index("!")
    return text[: i + 1], text[i + 1:].strip()


_MEASURED = re.compile(
    r"^(1-0:(?:[12]\.8\.[0-4]|[12]\.7\.0|[357][12]\.7\.0)\(|0-\d:24\.2\.[13]\(\d+[SW]\)\(|\()"
    r"(\d+)(\.\d+)?(?=[*)])", re.M)


def variant(text, rng):
    """The same telegram with other measured values (same digits and decimals) and a fresh CRC."""
    body, crc = split(text)

    def digits(n):
        return "".join(rng.choice("0123456789") for _ in range(n))

    body = _MEASURED.sub(lambda m: m[1] + digits(len(m[2])) + ("." + digits(len(m[3]) - 1) if m[3] else ""),
                         body)
    if rng.random() < 0.15:  # a gas meter swapped for a water meter: gas must disappear or move
        body = body.replace(":24.1.0(003)", ":24.1.0(007)", 1)
    return with_crc(body, len(crc) < 4) if crc else body + "\r\n"


def padded(text, target):
    """The telegram grown to `target` bytes with text-message lines (kept by dsmr-parser)."""
    body, crc = split(text)
    extra = target - len(text)
    lines = []
    while extra > 0:
        n = max(2, min(200, extra - 16)) // 2 * 2
        lines.append("0-0:96.13.0(" + "41" * (n // 2) + ")\r\n")
        extra -= len(lines[-1])
    body = body[:-1] + "".join(lines) + "!"
    return with_crc(body, len(crc) < 4) if crc else body + "\r\n"


def garbage(rng, n, allow_bang):
    bad = {0x2F, 0xAF} | (set() if allow_bang else {0x21, 0xA1})
    return bytes(b for b in rng.randbytes(n) if b not in bad)


def with_parity(data):
    """7E1 as seen by a UART set to 8N1: bit 7 carries even parity."""
    return bytes(b | ((bin(b).count("1") & 1) << 7) for b in data)


def make_stream(base, rng, count, faults=True, parity=False):
    """A stream of `count` telegrams of one meter: returns (bytes, valid texts in order, faults)."""
    crc_less = not split(base)[1]
    out = [garbage(rng, rng.randrange(0, 40), True)]  # mid-telegram tail or noise at power-up
    valid, injected = [], 0
    for k in range(count):
        text = base if k == 0 else variant(base, rng)
        if k and rng.random() < 0.05:
            text = padded(text, rng.randrange(1500, 2000))
        raw = text.encode("latin-1")
        kind = "ok" if k == 0 or not faults else rng.choice(
            ["ok"] * 5 + ["flip", "trunc", "overflow"] + ([] if crc_less and not parity else ["flip"]))
        if kind == "flip" and crc_less and not parity:
            kind = "trunc"
        TALLY[f"telegrams {kind}"] = TALLY.get(f"telegrams {kind}", 0) + 1
        TALLY["7E1 parity streams"] = TALLY.get("7E1 parity streams", 0) + (k == 0 and parity)
        if kind == "ok":
            valid.append(text)
        elif kind == "overflow":
            raw = padded(text, rng.randrange(2060, 3000)).encode("latin-1")
            injected += 1
        elif kind == "trunc":
            first_line = raw.index(b"\n") + 1
            raw = raw[: rng.randrange(first_line, raw.index(b"!"))]
            injected += 1
        else:  # one bit of 8 flipped between '/' and the end of the CRC (or the line end after '!')
            end = raw.index(b"!") + 1 + (len(split(text)[1]) or 1)
            pos = rng.randrange(1, end)
            while True:
                bit = rng.randrange(8)
                if ((raw[pos] ^ (1 << bit)) & 0x7F) != 0x2F:
                    break
            raw = with_parity(raw) if parity else raw
            raw = raw[:pos] + bytes([raw[pos] ^ (1 << bit)]) + raw[pos + 1:]
            out.append(raw)
            out.append(garbage(rng, rng.randrange(0, 30), not crc_less))
            injected += 1
            continue
        out.append(with_parity(raw) if parity else raw)
        if rng.random() < 0.3:
            out.append(garbage(rng, rng.randrange(1, 60), not crc_less))
    stream = b"".join(out)
    return stream, valid, injected


def check_stream(tmp_path, stream, valid, injected, spec, seed, mode="exact"):
    intervals, counters = run_reader(tmp_path, stream, seed, mode=mode)
    groups = [e["n"] for e in intervals]
    assert sum(groups) == len(valid) == counters["telegrams"], (groups, counters)
    fields = 0
    readings = [oracle(t, spec) for t in valid]
    for entry, want in zip(intervals, expected_intervals(groups, readings, mode == "exact")):
        got = records(entry)
        rejected = got.pop("p1_crc_errors")
        assert rejected >= 0
        if mode == "exact":
            assert got == want
        else:
            assert got.keys() == want.keys()
            for name, v in want.items():
                assert got[name] == pytest.approx(v, rel=1e-12, abs=1e-12), name
        fields += len(got)
    total = sum(records(e)["p1_crc_errors"] for e in intervals)
    assert total == injected == counters["crc"] + counters["malformed"] + counters["overflows"], counters
    for k, v in (("streams", 1), ("bytes", len(stream)), ("telegrams accepted", len(valid)),
                 ("faults injected and rejected", injected), ("intervals", len(intervals)),
                 ("values compared", fields)):
        TALLY[k] = TALLY.get(k, 0) + v
    return fields


TALLY = {}  # figures for docs/energy.md: see figures()


# -- tests --------------------------------------------------------------------------------------

@pytest.mark.unixport
@pytest.mark.parametrize("name", FILES)
def test_each_real_telegram_matches_dsmr_parser(tmp_path, name):
    text = (DATA / name).read_bytes().decode("latin-1")
    want = oracle(text, spec_for(name))
    for mode in ("exact", "float"):
        intervals, counters = run_reader(tmp_path, text.encode("latin-1"), mode=mode)
        assert counters["telegrams"] == 1 and [e["n"] for e in intervals] == [1, 0], counters
        got = records(intervals[0])
        assert got.pop("p1_crc_errors") == 0
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k] == (v if mode == "exact" else pytest.approx(v / 1000, rel=1e-12)), k
    TALLY["real telegrams"] = TALLY.get("real telegrams", 0) + 1
    TALLY["real values compared"] = TALLY.get("real values compared", 0) + len(want)


def test_heat_meter_is_not_gas_and_water_meter_is_not_gas():
    # the oracle's own definition, pinned to what the files hold
    heat = (DATA / "nl_warmtelink_heat_unpadded_crc.txt").read_bytes().decode("latin-1")
    assert "gas_volume" not in oracle(heat, specs.V5)
    be = (DATA / "be_fluvius_emucs_v171.txt").read_bytes().decode("latin-1")
    assert oracle(be, specs.BELGIUM_FLUVIUS)["gas_volume"] == 112384  # channel 1, not water on 2


@pytest.mark.unixport
@pytest.mark.parametrize("name", FILES)
def test_streams_with_faults_match_dsmr_parser(tmp_path, name):
    base = (DATA / name).read_bytes().decode("latin-1")
    spec = spec_for(name)
    rng = random.Random(name)
    crc_less = not split(base)[1]
    for k, parity in enumerate([False, crc_less]):
        stream, valid, injected = make_stream(base, rng, 60, parity=parity)
        assert injected > 5
        check_stream(tmp_path, stream, valid, injected, spec, seed=k + 1)


@pytest.mark.unixport
@pytest.mark.parametrize("name", ["dsmr_v5_iskra_2mbus.txt", "dsmr_v2_2_iskra_mt382.txt"])
def test_clean_stream_in_float_mode(tmp_path, name):
    base = (DATA / name).read_bytes().decode("latin-1")
    stream, valid, injected = make_stream(base, random.Random(7), 40, faults=False)
    assert injected == 0
    check_stream(tmp_path, stream, valid, 0, spec_for(name), seed=3, mode="float")


@pytest.mark.unixport
@pytest.mark.parametrize("name", ["at_sagemcom_t210_d_r.txt", "hu_eon_v5.txt"])
def test_single_rate_meter_reports_its_register_as_tariff_1(tmp_path, name):
    body, _ = split((DATA / name).read_bytes().decode("latin-1"))
    body = re.sub(r"^1-0:[12]\.8\.[1-4]\(.*\r\n", "", body, flags=re.M)
    text = with_crc(body)
    want = oracle(text, spec_for(name))
    assert "energy_import_t1" in want and "energy_import_t2" not in want
    stream, valid, injected = make_stream(text, random.Random(name), 30)
    check_stream(tmp_path, stream, valid, injected, spec_for(name), seed=5)


def figures():
    """Runs every test here once and prints what was compared (the figures in docs/energy.md)."""
    import tempfile
    for name in FILES:
        with tempfile.TemporaryDirectory() as d:
            test_each_real_telegram_matches_dsmr_parser(Path(d), name)
            test_streams_with_faults_match_dsmr_parser(Path(d), name)
    for name in ("dsmr_v5_iskra_2mbus.txt", "dsmr_v2_2_iskra_mt382.txt"):
        with tempfile.TemporaryDirectory() as d:
            test_clean_stream_in_float_mode(Path(d), name)
    for name in ("at_sagemcom_t210_d_r.txt", "hu_eon_v5.txt"):
        with tempfile.TemporaryDirectory() as d:
            test_single_rate_meter_reports_its_register_as_tariff_1(Path(d), name)
    for k, v in TALLY.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    figures()
