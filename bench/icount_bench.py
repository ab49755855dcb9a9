"""Instructions per audio sample, P1 byte and loop edge on the QEMU board (issue 14 item 2):
`make bench` (bench/run.py calls run()); alone: `.venv/bin/python bench/run.py icount`.

The firmware's own modules (mpy-cross -march=armv7m, as the board runs them) run on the
Cortex-M3 board (tools/sim/qemu.QemuBoard) under `qemu -icount shift=0`: QEMU's virtual clock then
advances exactly 1 ns per guest instruction, whatever the host's load, and the board script
(bench/icount_board.py) reads it from a 25 MHz hardware timer, 40 instructions a count. Every
figure is the difference of two windows of work (K and 2K reads, or seconds of edges), so the
fixed costs of the measurement cancel. The counts are Cortex-M3 (Thumb-2) instructions, not
cycles, and not Xtensa LX6 instructions: a count on a comparable 32-bit in-order core
(docs/noise.md, "Instructions on a 32-bit core").
"""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

import numpy as np

from sensorcity.paths import firmware_dir
from sensorcity.tools.mpy import compile_dir
from sensorcity.tools.sim.qemu import QemuBoard, write_flash

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QEMU_ARGS = ("-monitor", "null", "-icount", "shift=0")
CORE_HZ = 240e6  # an ESP32's core clock
RATES = (16000, 32000, 48000)
NBLK = 16  # distinct 1 KiB reads the noise windows cycle through
PLAIN_BLOCKS = 23  # reads a window of the plain-Python meter (19 times slower) takes
# A P1 port at DSMR 5's 115200 baud 8N1 carries at most 11,520 bytes a second (the worst case);
# a DSMR 5 meter sends one telegram a second.
P1_LINE_BYTES_PER_S = 115200 / 10
# A busy arterial: 4 lanes, each at 1 vehicle a second (3600 vehicles/h/lane, above the ~1900 of
# a lane's saturation flow: an upper bound), each vehicle 4 edges (loops A and B, on and off).
ARTERIAL_LANES = 4
ARTERIAL_EDGES_PER_S = ARTERIAL_LANES * 1.0 * 4
MODULES = ("noise", "aweight", "levels", "p1", "energy", "loops")
# shared/ lies beside the checkout (CI's clone too); /work/shared is the workplace's copy
DSMR = next((p for p in (ROOT.parent / "shared" / "data" / "dsmr" / "dsmr_v5_iskra_mt382.txt",
                         Path("/work/shared/data/dsmr/dsmr_v5_iskra_mt382.txt")) if p.exists()),
            Path("/work/shared/data/dsmr/dsmr_v5_iskra_mt382.txt"))


def plain_noise_source() -> str:
    """firmware/noise.py with its viper per-sample function as plain Python: the same code, the
    alternative a user would write without viper. ptr16 becomes a copy of the state's halves."""
    src = (firmware_dir() / "noise.py").read_text()
    src, n = re.subn(r"@micropython\.viper\n", "", src)
    assert n == 1, "noise.py: expected one viper function"
    ptr16 = '\n\ndef ptr16(a):\n    return array("H", bytes(a))\n'
    return src.replace("\nimport aweight\n", "\nimport aweight\n" + ptr16, 1)


def board_files(tmp: Path, pink=None) -> dict:
    """The board's files: firmware modules, the plain-Python meter, the board script, inputs."""
    fw = compile_dir(firmware_dir(), march="armv7m")
    files = {f"{m}.mpy": fw / f"{m}.mpy" for m in MODULES}
    plain = tmp / "plain"
    plain.mkdir(exist_ok=True)
    (plain / "noise_plain.py").write_text(plain_noise_source())
    files["noise_plain.mpy"] = compile_dir(plain, march="armv7m") / "noise_plain.mpy"
    board = tmp / "board"
    board.mkdir(exist_ok=True)
    (board / "icount_board.py").write_text((HERE / "icount_board.py").read_text())
    files["icount_board.mpy"] = compile_dir(board, march="armv7m") / "icount_board.mpy"
    if pink is not None:
        for rate in RATES:
            p = tmp / f"pink{rate}.raw"
            p.write_bytes(pink(NBLK * 256 / rate, rate, -40.0))
            files[f"pink{rate}.raw"] = p
    edges = tmp / "edges.bin"
    edges.write_bytes(arterial_edges(70.0).tobytes())
    files["edges.bin"] = edges
    files["tel.txt"] = DSMR
    return files


def arterial_edges(seconds: float, seed: int = 1) -> np.ndarray:
    """(t_us, lane, loop, state) rows, int32, in time order: ARTERIAL_LANES lanes of cars, vans
    and lorries at 30-70 km/h over 2 m loops 4 m apart, each lane's vehicles 1 s apart on average
    (at least 0.3 s between one leaving loop B and the next reaching loop A)."""
    rng = random.Random(seed)
    rows = []
    for lane in range(1, ARTERIAL_LANES + 1):
        t = rng.uniform(0, 1)
        while t < seconds:
            speed = rng.uniform(30, 70) / 3.6
            occ = (rng.choice([4.2, 4.5, 4.8, 4.8, 8.0, 16.5]) + 2.0) / speed
            dt = 4.0 / speed
            for loop, on, off in ((0, t, t + occ), (1, t + dt, t + dt + occ)):
                rows += [(round(on * 1e6), lane, loop, 1), (round(off * 1e6), lane, loop, 0)]
            t += max(rng.expovariate(1.0), dt + occ + 0.3)
    rows.sort()
    return np.array(rows, dtype="<i4")


class IcountBoard:
    """The QEMU board under -icount shift=0 with the files of board_files() on its flash."""

    def __init__(self, tmp: Path, files: dict):
        self.image = write_flash(tmp / "icount-flash.img", files)
        self.board = None

    def __enter__(self):
        self.board = QemuBoard(flash=self.image, qemu_args=QEMU_ARGS).__enter__()
        return self

    def __exit__(self, *exc):
        self.board.close()

    def call(self, expr: str, timeout: float = 600) -> list[tuple[str, list]]:
        """Run icount_board.<expr> on the board: its lines, each (label, [numbers or words])."""
        out = self.board.exec(f"import icount_board as b\nb.{expr}\n", timeout=timeout)
        lines = []
        for line in out.splitlines():
            label, *rest = line.split()
            lines.append((label, [float(v) if re.fullmatch(r"-?[\d.]+", v) else v
                                  for v in rest]))
        return lines


def sig(v: float, digits: int = 3) -> float:
    """v to `digits` significant figures: a count read twice differs by a timer step (40
    instructions) in windows of millions, far below the third figure. Whole counts as ints."""
    r = float(f"{v:.{digits - 1}e}")
    return int(r) if abs(r) >= 10 ** (digits - 1) else r


def per_unit(lines, label: str) -> float:
    """Instructions per unit of work from the first two `label` windows (K and 2K): the
    difference cancels what each window costs whatever its length."""
    (c1, u1), (c2, u2) = [v for k, v in lines if k == label][:2]
    return (c2 - c1) / (u2 - u1)


def first(lines, label: str):
    return next(v for k, v in lines if k == label)


def noise(b: IcountBoard, rate: int, plain: bool = False, blocks: int = 0):
    """(instructions per sample of NoiseMeter.feed, per take(), the levels it read) over windows
    of `blocks` and twice as many 1 KiB reads; by default 2 s (whole 125 ms blocks), and
    PLAIN_BLOCKS for the plain-Python meter."""
    k = blocks or (PLAIN_BLOCKS if plain else rate * 8 // 1024)
    lines = b.call(f"noise({rate}, 'pink{rate}.raw', {NBLK}, ({k}, {2 * k}), {plain})")
    return per_unit(lines, "feed"), first(lines, "take")[0], first(lines, "levels")


def run(tmp: Path, pink) -> dict:
    """All figures, to three significant figures; pink(seconds, rate, level_dbfs) -> raw words
    (bench/run.pink_words)."""
    out: dict = {}
    with IcountBoard(tmp, board_files(tmp, pink)) as b:
        for rate in RATES:
            feed, take, _ = noise(b, rate)
            key = f"{rate // 1000}k"
            out[f"noise_instructions_per_sample_{key}"] = feed
            out[f"noise_take_instructions_{key}"] = take
            # a second of the pipeline at that rate, an interval closing each second (the
            # shortest interval: the most takes)
            out[f"noise_core_share_{key}"] = (feed * rate + take) / CORE_HZ
        plain, _, plain_levels = noise(b, 48000, plain=True)
        # the same reads through the viper meter read the same six levels: the same code
        if noise(b, 48000, blocks=PLAIN_BLOCKS)[2] != plain_levels:
            raise AssertionError("the plain-Python meter reads other levels than the viper one")
        out["noise_plain_python_instructions_per_sample_48k"] = plain
        out["noise_viper_vs_plain_python_48k_ratio"] = \
            out["noise_instructions_per_sample_48k"] / plain
        out["noise_core_share_48k_vs_16k_ratio"] = \
            out["noise_core_share_48k"] / out["noise_core_share_16k"]

        tel = DSMR.stat().st_size
        reads = {}
        for chunk in (512, 16):  # the pipeline's largest read, and a byte-trickle's
            lines = b.call(f"p1('tel.txt', 4, {chunk}, (8, 16))")
            reads[chunk] = per_unit(lines, "feed")
            if chunk == 512:
                p1_take = first(lines, "take")[0]
        out["p1_instructions_per_byte"] = reads[512]
        out["p1_instructions_per_byte_16_byte_reads"] = reads[16]
        out["p1_16_vs_512_byte_reads_ratio"] = reads[16] / reads[512]
        out["p1_take_instructions"] = p1_take
        out["p1_core_share_115200_baud"] = reads[512] * P1_LINE_BYTES_PER_S / CORE_HZ
        out["p1_core_share_telegram_per_s"] = (reads[512] * tel + p1_take) / CORE_HZ

        # the detector's and the ring's work per edge: the bench's own loop (reading the edges
        # from an array, as the pin IRQ reads its pin and ticks_us) run alone and taken off
        lines = b.call(f"loops('edges.bin', {ARTERIAL_LANES}, (1, 20, 40))")
        bare = b.call(f"loops('edges.bin', {ARTERIAL_LANES}, (1, 20, 40), True)")
        loop = per_unit(bare[2:], "edge")  # the 20 s and 40 s windows
        per_edge = per_unit(lines[2:], "edge") - loop
        take = first(lines, "take")[0]  # the interval of the 1 s window
        out["loops_instructions_per_edge"] = per_edge
        out["loops_bench_loop_instructions_per_edge"] = loop
        out["loops_take_instructions_1s_4_lanes"] = take
        out["loops_core_share_arterial"] = (per_edge * ARTERIAL_EDGES_PER_S + take) / CORE_HZ
    out = {k: sig(v) for k, v in out.items()}
    out["p1_telegram_bytes"] = tel
    out["loops_arterial_edges_per_s"] = ARTERIAL_EDGES_PER_S
    return out


if __name__ == "__main__":
    import json
    import sys
    sys.path.insert(0, str(HERE))
    from run import pink_words
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d), pink_words), indent=1))
