"""tests/mp/test_loops.py (the traffic loops' MicroPython unit tests) on the 32-bit Cortex-M3
(mps2-an385) qemu port, through its REPL's paste mode: 31-bit small ints and single-precision
floats, as on an ESP32 (docs/traffic.md, "On a 32-bit target")."""
import pytest

pytestmark = pytest.mark.qemu


def qemu_paste_script():
    """tests/mp/test_loops.py with firmware/loops.py inlined, for a board's REPL paste mode (the
    stock qemu port has no file system and no time module)."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    src = (root / "firmware" / "loops.py").read_text()
    runner = (root / "tests" / "mp" / "mptest.py").read_text()
    test = (root / "tests" / "mp" / "test_loops.py").read_text()
    test = test.replace("import loops\n", "").replace("import mptest\nmptest.run(globals())",
                                                      "run(globals())")
    stub = ("import sys\nclass _time:\n    @staticmethod\n    def ticks_us():\n"
            "        return 123456789\nif 'time' not in sys.modules:\n    sys.modules['time'] = _time\n")
    glue = ("\nclass loops:\n    pass\nfor _n in ('EdgeRing', 'Loops', 'ticks', 'ticks_diff', "
            "'parse_edge', 'v85'):\n    setattr(loops, _n, globals()[_n])\n")
    return stub + src + glue + runner + test


def qemu(elf):
    """Run the MicroPython unit tests on the 32-bit Cortex-M3 (mps2-an385) qemu port; its output."""
    import re
    import subprocess
    import time
    code = "\r\x05" + qemu_paste_script() + "\x04"
    proc = subprocess.Popen(["qemu-system-arm", "-machine", "mps2-an385", "-nographic", "-monitor",
                             "null", "-semihosting", "-kernel", str(elf)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        seen = ""
        while not seen.endswith(">>> "):  # input before the REPL is up is lost
            c = proc.stdout.read(1)
            if not c:
                raise RuntimeError("qemu ended before its prompt: " + seen)
            seen += c
        for i in range(0, len(code), 256):  # the UART has no flow control: no faster than it reads
            proc.stdin.write(code[i:i + 256])
            proc.stdin.flush()
            time.sleep(0.05)
        out = []
        for line in proc.stdout:
            out.append(line)
            if re.match(r"\d+ passed, \d+ failed", line):
                break
    finally:
        proc.kill()
        proc.wait()
    text = "".join(out)
    return text[text.rindex("run(globals())"):] if "run(globals())" in text else text


def test_unit_tests_on_the_32_bit_qemu_port():
    # 31-bit small ints and single-precision floats, as on an ESP32
    import re
    import subprocess
    from conftest import ROOT
    build = subprocess.run(["sh", str(ROOT / "tools" / "sim" / "qemu_image" / "build.sh")],
                           capture_output=True, text=True, check=True)
    out = qemu(build.stdout.strip().splitlines()[-1])
    tests = re.findall(r"^def test_", (ROOT / "tests" / "mp" / "test_loops.py").read_text(), re.M)
    assert "%d passed, 0 failed" % len(tests) in out, out


if __name__ == "__main__":
    import sys
    print(qemu(sys.argv[1]))
