"""A noise node, unmodified, on the QEMU board: its microphone's raw I2S words come from the host
over UART1 in the line's compact format (tools/qemu.mic_frames), the board's machine.I2S widens
them back (tools/sim/board/qemu/machine.py). References: the host's own widening of the same
frames, byte for byte, and the analytic level of the tone the host fed (docs/noise.md), not the
firmware's output."""

import json
import math
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import serial

from rigs.targets import SENSORCITY
from sensorcity.tools.sim import signals
from sensorcity.tools.mpy import compile_dir
from sensorcity.tools.sim.qemu import BOARD_DIR, MIC_FRAME, MIC_RATE, QemuBoard, QemuNode, mic_frames
from rigs.serialmock import VirtualCable
from test_serial_link import _subscribe, quantity_records

pytestmark = pytest.mark.qemu
ROOT = Path(__file__).resolve().parent.parent
# An ESP32's budget. main.py loads the noise code before the node's runtime fragments the heap
# (its native code needs a 4 kB hole); see docs/qemu.md and docs/node.md, Heap.
HEAP = "64k"
LEVEL = 71.3  # dB SPL of the tone the host feeds


def widened(line: bytes) -> bytes:
    """What machine.I2S must return for whole frames of the line: each byte << the frame's shift."""
    f = np.frombuffer(line, np.uint8).reshape(-1, MIC_FRAME + 2)
    words = f[:, 2:].view(np.int8).astype(np.int64) << f[:, 1:2].astype(np.int64)
    return words.astype("<i4").tobytes()


def test_i2s_on_the_board_returns_the_words_the_line_carries():
    raw = signals.tone_block(MIC_RATE, 1000.0, LEVEL - 94.0 - 26.0, MIC_RATE)
    line = mic_frames(raw)
    want = widened(line)
    # the line format costs the level nothing that matters: 8 bits of mantissa per frame
    r = np.frombuffer(raw, "<i4").astype(float)
    w = np.frombuffer(want, "<i4").astype(float)
    assert abs(10 * math.log10(np.mean(w ** 2) / np.mean(r ** 2))) < 0.05
    code = (
        "import machine, binascii\n"
        "m = machine.I2S(0, sck=machine.Pin(26), ws=machine.Pin(25), sd=machine.Pin(33),"
        " mode=machine.I2S.RX, bits=32, format=machine.I2S.MONO, rate=16000, ibuf=20000)\n"
        "buf = bytearray(4000)\n"
        "crc = 0\n"
        f"for i in range({len(want) // 4000}):\n"
        "    assert m.readinto(buf) == 4000\n"
        "    crc = binascii.crc32(buf, crc)\n"
        "print(crc, m.skipped())\n")
    with QemuBoard(heap=64 * 1024) as board:
        board.put_file("lib/machine.mpy", compile_dir(BOARD_DIR, march="armv7m") / "machine.mpy")

        def feed():
            with serial.Serial(board.sensor_port) as s:
                # a line joined mid-frame: the decoder skips to the first sync byte
                s.write(b"\x05\x17\x7f" + line)
        threading.Thread(target=feed, daemon=True).start()
        crc, skipped = map(int, board.exec(code, timeout=60).split())
    assert crc == zlib.crc32(want) and skipped == 3


class Tone:
    """A steady 1 kHz tone at `level` dB SPL as a microphone of `sens` dBFS delivers it."""

    def __init__(self, rate, level, sens):
        self.block = signals.tone_block(rate, 1000.0, level - 94.0 + sens, rate)

    def second(self):
        return self.block


def a_weight_db(f):
    # IEC 61672-1 analytic A-weighting, normalised to 0 dB at 1 kHz by its 2.00 dB constant
    f2 = f * f
    ra = (12194.0 ** 2 * f2 * f2) / ((f2 + 20.6 ** 2) * math.sqrt((f2 + 107.7 ** 2)
                                      * (f2 + 737.9 ** 2)) * (f2 + 12194.0 ** 2))
    return 20 * math.log10(ra) + 2.00


@pytest.mark.mosquitto
@pytest.mark.unixport  # the unix port writes the board's flash image
def test_noise_node_reports_the_tone_level_through_a_gateway(mosquitto, tmp_path):
    reg, cfg = tmp_path / "nodes.json", tmp_path / "n1.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", "n1", "--sensor", "noise",
                    "--registry", str(reg), "--out", str(cfg), "--interval", "2"], check=True,
                   capture_output=True)
    node_cfg = json.loads(cfg.read_text())
    board = json.loads((ROOT / "boards" / f"{node_cfg['board']}.json").read_text())
    sens = node_cfg.get("mic_sensitivity", board["mic_sensitivity_dbfs"])
    # the level the host feeds, as docs/noise.md defines it: a tone of peak 10**(dBFS/20) * 2**31
    # reads dBFS - sensitivity + 94 + calibration, A-weighted at 1 kHz
    tone = Tone(MIC_RATE, LEVEL, sens)
    peak = float(np.abs(np.frombuffer(tone.block, "<i4")).max())
    expected = (20 * math.log10(peak / 2 ** 31) - sens + 94.0
                + node_cfg.get("calibration_db", 0.0) + a_weight_db(1000.0))
    assert abs(expected - LEVEL) < 0.01
    batches = []
    sub = _subscribe(mosquitto, batches)
    cable = VirtualCable()
    node = QemuNode(cfg, cable.a, heap=HEAP, mic=tone, log=sys.stderr)
    gw = subprocess.Popen([SENSORCITY, "gateway", "run", "--serial", cable.b, "--broker",
                           f"mqtt://127.0.0.1:{mosquitto}", "--spool", str(tmp_path / "spool"),
                           "--nodes", str(reg), "--gateway-id", "gw-qemu-noise"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    node.start()
    threading.Thread(target=node.supervise, daemon=True).start()

    def records(quantity):
        return quantity_records(batches, quantity)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(records("LAeq")) < 5:
            time.sleep(0.5)
    finally:
        node.stop()
        gw.terminate()
        gw_err = gw.communicate(timeout=10)[1]
        sub.loop_stop()
        cable.close()
    laeq = records("LAeq")
    assert len(laeq) >= 5, (laeq, records("boot_count"), gw_err[-2000:])
    for t, v in laeq:
        assert abs(v - expected) <= 1.0, (t, v, expected)
    # a steady tone: its Fast level stays at the tone's (the A filter settles within the
    # first, unreported interval)
    for q in ("LAFmax", "LAFmin", "LA50"):
        for t, v in records(q):
            assert abs(v - expected) <= 1.0, (q, t, v, expected)
    # no crash on the way: one QEMU run, one boot count in every health record
    assert node.boots == 1 and len({v for _, v in records("boot_count")}) == 1
