"""The spool's start-up check and its salvage on a large file (docs/durability.md, "A damaged
spool"): build a spool of ROWS noise frames from 200 nodes, checkpointed; in a fresh process
open it and run Spool.check(); then overwrite page 1 and, in a fresh process, open it (which
salvages). Prints the time and the peak RSS of each.

    .venv/bin/python bench/spool_salvage.py --rows 200000 --dir /tmp/salvage
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cbor2

from sensorcity.gateway.spool import PAGE, Spool


def build(d: Path, rows: int) -> None:
    shutil.rmtree(d, ignore_errors=True)
    sp, rng = Spool(d), random.Random(1)
    for b in range(rows // 200):
        sp.store([(f"urn:dev:mac:{i:04x}", b, 60.0 * b, cbor2.dumps(
            [{"n": f"urn:dev:mac:{i:04x}:{q}", "v": rng.random(), "t": 60.0 * b}
             for q in ("LAeq", "LAFmax", "LAFmin", "LA10", "LA50", "LA90")]), 6)
            for i in range(200)])
    sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sp.close()


def probe(d: Path, what: str) -> None:
    began = time.monotonic()
    sp = Spool(d)
    opened = time.monotonic()
    ok = sp.check() if what == "check" else None
    done = time.monotonic()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{what}: open {opened - began:.2f} s, check {done - opened:.2f} s (ok {ok}), "
          f"depth {sp.depth()}, peak RSS {rss:.1f} MB; {sp.damage() or 'no damage'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/spool-salvage"))
    ap.add_argument("--probe", choices=("check", "salvage"))
    args = ap.parse_args()
    if args.probe:
        return probe(args.dir, args.probe)
    build(args.dir, args.rows)
    size = (args.dir / "spool.sqlite3").stat().st_size
    print(f"{args.rows} frames, {size / 2**20:.0f} MiB")
    me = [sys.executable, __file__, "--dir", str(args.dir)]
    subprocess.run(me + ["--probe", "check"], check=True)
    with open(args.dir / "spool.sqlite3", "r+b") as f:
        f.write(random.randbytes(PAGE))
    subprocess.run(me + ["--probe", "salvage"], check=True)


if __name__ == "__main__":
    main()
