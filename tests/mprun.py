"""Running firmware code under the MicroPython unix port, for tests of both tiers."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MP_TESTS = ROOT / "tests" / "mp"
MICROPYTHON = str(Path(sys.executable).parent / "micropython")


def run_micropython(script, *args, heap="256K", path=(), stdin=None, timeout=300):
    """Run a script under the MicroPython unix port with firmware/ on its path.

    Returns the CompletedProcess; stdout is text. Raises on a non-zero exit with its output.
    """
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(p) for p in path] + [str(FIRMWARE), str(MP_TESTS), ".frozen"])
    proc = subprocess.run(
        [MICROPYTHON, "-X", f"heapsize={heap}", str(script), *map(str, args)],
        input=stdin, capture_output=True, env=env, timeout=timeout, cwd=str(ROOT),
        text=not isinstance(stdin, bytes),
    )
    if proc.returncode != 0:
        out = proc.stdout if isinstance(proc.stdout, str) else proc.stdout.decode(errors="replace")
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise AssertionError(f"micropython {script} exited {proc.returncode}\n{out}\n{err}")
    return proc
