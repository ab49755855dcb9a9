"""`make bench`: the project's figures, each measured beside what a user would pick instead, in one
run, as ratios. Writes bench/results.json and docs/benchmarks.md.

Every figure is the median of RUNS runs, with its spread (min..max). Absolute times on a shared
machine move from run to run; the ratios are the claims.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "hil_tests"))  # the test rigs (rigs/): mosquitto, loadsim

from sensorcity.protocol import frames  # noqa: E402
from sensorcity.paths import firmware_dir, micropython_bin  # noqa: E402
from sensorcity.tools.sim.emulate import EMULATOR_DIR  # noqa: E402
from sensorcity.tools.mpy import compile_dir  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
RESULTS = ROOT / "bench" / "results.json"
REPORT = ROOT / "docs" / "benchmarks.md"
LABELS = {-2: "bn", -3: "bt", -4: "bu", -5: "bv", 0: "n", 1: "u", 2: "v", 6: "t"}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def mp_env():
    return dict(os.environ, MICROPYPATH=os.pathsep.join(
        [str(compile_dir(firmware_dir())), str(EMULATOR_DIR), str(ROOT / "tests" / "mp"),
         ".frozen"]))


# --- noise DSP ---------------------------------------------------------------------------------

def pink_words(seconds, rate=48000, level_dbfs=-50.0, seed=1):
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1 / rate)
    spec = np.zeros(len(f), dtype=complex)
    band = (f >= 20) & (f <= 20000)
    spec[band] = (rng.standard_normal(band.sum()) + 1j * rng.standard_normal(band.sum())) \
        / np.sqrt(f[band])
    x = np.fft.irfft(spec, n)
    x *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x ** 2))
    return (np.clip(np.round(x * 2 ** 23), -2 ** 23, 2 ** 23 - 1).astype(np.int64) * 256) \
        .astype("<i4").tobytes()


def bench_noise(tmp: Path) -> dict:
    """Seconds of 48 kHz audio the firmware's noise pipeline processes per second of CPU in the
    unix port (tests/mp/noise_driver.py --time times the meter's feed() only), and the heap the
    meter keeps. The alternative is the real time an ESP32 must keep: a factor of 1."""
    raw = tmp / "pink.raw"
    raw.write_bytes(pink_words(10.0))
    rtf, heap = [], []
    for _ in range(RUNS):
        p = subprocess.run([micropython_bin(), "-X", "heapsize=64k",
                            str(ROOT / "tests" / "mp" / "noise_driver.py"), str(raw), "48000",
                            "-26", "0", "ideal", "480000", "1024", "--time"],
                           capture_output=True, text=True, env=mp_env(), check=True)
        last = p.stdout.split()
        rtf.append(float(last[last.index("rtf") + 1]))
        heap.append(int(last[last.index("heap") + 1]))
    return {"noise_dsp_realtime_factor_48k": summary(rtf),
            "noise_dsp_heap_bytes": summary(heap)}


# --- bytes per reading -------------------------------------------------------------------------

def senml_json(pack) -> bytes:
    """The same pack as SenML-JSON (RFC 8428 section 5): same base name, base time, names,
    units and values, compact separators."""
    def plain(v):
        return v if isinstance(v, (int, float, str)) else float(v)
    return json.dumps([{LABELS[k]: plain(v) for k, v in r.items()} for r in pack],
                      separators=(",", ":")).encode()


def bench_bytes(tmp: Path) -> dict:
    """Link bytes per reading (the whole wire frame: COBS, CRC-32, tag, header, SenML-CBOR body)
    for a typical interval of each sensor kind, and the ratio to the same readings as SenML-JSON."""
    t = np.arange(48000 * 2) / 48000
    (tmp / "i2s.raw").write_bytes((0.05 * np.sin(2 * np.pi * 1000 * t) * 2 ** 31)
                                  .astype("<i4").tobytes())
    edges = ["t,lane,loop,state"]
    for k in range(10):  # ten vehicles on two lanes in a minute
        t0 = 3 + 5 * k
        edges += [f"{t0},{1 + k % 2},A,1", f"{t0 + 0.2},{1 + k % 2},B,1",
                  f"{t0 + 0.5},{1 + k % 2},A,0", f"{t0 + 0.7},{1 + k % 2},B,0"]
    (tmp / "edges.csv").write_text("\n".join(edges) + "\n")
    dsmr = ROOT.parent / "shared" / "data" / "dsmr" / "dsmr_v5_iskra_mt382.txt"
    if not dsmr.exists():
        dsmr = Path("/work/shared/data/dsmr/dsmr_v5_iskra_mt382.txt")
    key = secrets.token_bytes(32)
    out = {}
    for kind, path, interval, opts in (
            ("noise", tmp / "i2s.raw", 1, {"rate": 48000, "sensitivity": -26.0, "mic": "ideal"}),
            ("energy", dsmr, 60, {}),
            ("traffic", tmp / "edges.csv", 60,
             {"lanes": 2, "loop_length": 2.0, "loop_spacing": 4.0})):
        p = subprocess.run([micropython_bin(), "-X", "heapsize=128k",
                            str(EMULATOR_DIR / "replay.py"), kind, str(path), str(interval),
                            key.hex(), "asn-0042", "urn:dev:mac:0024befffe804ff1:",
                            json.dumps(opts)], capture_output=True, env=mp_env(), check=True)
        wire = frames.Deframer(1 << 16).feed(p.stdout)
        readings = json_bytes = 0
        for cobs in wire:
            body = frames.decode(cobs, lambda _n: key).body
            readings += len(body)
            json_bytes += len(senml_json(body))
        link = sum(len(c) + 1 for c in wire) / readings
        out[f"bytes_per_reading_{kind}"] = link
        out[f"bytes_per_reading_{kind}_senml_json"] = json_bytes / readings
        out[f"bytes_per_reading_{kind}_ratio_to_senml_json"] = link / (json_bytes / readings)
    return out


# --- report ------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def fmt(v):
    if isinstance(v, dict):
        return f"{v['median']:.4g} (spread {v['min']:.4g}..{v['max']:.4g}, {v['runs']} runs)"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def bench_gateway(tmp: Path) -> dict:
    import gateway_bench  # the gateway's figures
    return gateway_bench.run(tmp, RUNS)


def bench_loop(tmp: Path) -> dict:
    import loop_bench  # the event loop's stalls, before and after (issue 13)
    return loop_bench.run(tmp, RUNS)


def bench_icount(tmp: Path) -> dict:
    import icount_bench  # instructions per sample, byte and edge on the QEMU board (issue 14)
    return icount_bench.run(tmp, pink_words)


PARTS = {"noise": bench_noise, "bytes": bench_bytes, "gateway": bench_gateway,
         "loop": bench_loop, "icount": bench_icount}


def main(argv: list[str] | None = None) -> int:
    """All parts; or only the parts named (`python bench/run.py loop`), whose figures replace
    theirs in results.json beside the others of the last full run."""
    only = sys.argv[1:] if argv is None else argv
    if set(only) - set(PARTS):
        print(f"bench: unknown part {sorted(set(only) - set(PARTS))}; parts: {', '.join(PARTS)}",
              file=sys.stderr)
        return 2
    started = time.time()
    results: dict = json.loads(RESULTS.read_text()) if only and RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="sensorcity-bench-") as d:
        tmp = Path(d)
        for name, fn in PARTS.items():
            if only and name not in only:
                continue
            t0 = time.time()
            results.update(fn(tmp))
            print(f"bench {name}: {time.time() - t0:.0f} s", file=sys.stderr)
    results["_machine"] = machine()
    if not only or "_seconds" not in results:
        results["_seconds"] = round(time.time() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_report(results)
    print(f"bench: {len(results) - 2} figures ({', '.join(only) or 'all parts'} measured in "
          f"{time.time() - started:.0f} s) -> {RESULTS}")
    return 0


def write_report(results: dict) -> None:
    lines = ["# Benchmarks", "",
             "Measured by `make bench` (bench/run.py), which writes `bench/results.json` and this",
             "page. Every timed figure is the median of the runs shown, with its spread; figures",
             "are claims only as ratios, since absolute times on a shared machine move from run",
             "to run.", "", f"Machine of the last run: {results['_machine']}; the run took "
             f"{results['_seconds']} s.", "", "| key | value |", "|---|---|"]
    for k, v in sorted(results.items()):
        if not k.startswith("_"):
            lines.append(f"| `{k}` | {fmt(v)} |")
    lines += ["", (ROOT / "bench" / "notes.md").read_text() if (ROOT / "bench" / "notes.md")
              .exists() else ""]
    REPORT.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
