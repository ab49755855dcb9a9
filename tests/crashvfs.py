"""A fault-injecting file layer for SQLite, as SQLite's own crash tests use (test_vfs.c's
"crash" VFS): the real files are written through, but what the medium holds is modelled as the
content at each file's last xSync; "cutting power" rewrites every file as the medium would have
it: the synced content plus some, none or all of the writes after it, in order, one of them
torn at a sector boundary.

It is a Python VFS of apsw. Debian's python3-apsw links the system libsqlite3, the library the
stdlib sqlite3 module uses, so a VFS it registers is one the real Spool can open through
(`Spool(..., vfs=NAME)`): the spool's own SQL, stdlib sqlite3, the real file format."""

from __future__ import annotations

import gc
import glob
import importlib.util
import os
import random
import sqlite3
import sys
import sysconfig

SECTOR = 512


def load_apsw():
    """apsw sharing the stdlib's libsqlite3, or None (with the reason) when there is none."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    pattern = f"/usr/lib/python3/dist-packages/apsw/__init__{suffix}"
    for path in glob.glob(pattern):
        spec = importlib.util.spec_from_file_location("apsw", path)
        apsw = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(apsw)
        sys.modules.setdefault("apsw", apsw)
        if apsw.sqlitelibversion() == sqlite3.sqlite_version:
            return apsw, None
        return None, f"apsw's SQLite {apsw.sqlitelibversion()} is not {sqlite3.sqlite_version}"
    return None, f"no {pattern} (Debian package python3-apsw)"


apsw, why_not = load_apsw()


class PowerCut(Exception):
    pass


class _Medium:
    """One file as the medium holds it: the synced bytes, and the operations since."""

    def __init__(self, path: str):
        try:
            with open(path, "rb") as f:
                self.synced = bytearray(f.read())
        except FileNotFoundError:
            self.synced = bytearray()
        self.pending: list[tuple] = []

    def sync(self) -> None:
        for op in self.pending:
            _apply(self.synced, op)
        self.pending = []


def _apply(image: bytearray, op: tuple) -> None:
    if op[0] == "t":
        del image[op[1]:]
        return
    _, off, data = op
    if len(image) < off:
        image.extend(bytes(off - len(image)))
    image[off:off + len(data)] = data


if apsw is not None:
    class CrashVFS(apsw.VFS):
        """Counts every write, truncate and sync; at the cut_at-th the power goes: that call
        and every one after it fails and reaches nothing."""

        def __init__(self, name: str, cut_at: int | None = None, seed: int = 0):
            self.name, self.cut_at, self.ops, self.dead = name, cut_at, 0, False
            self.rng = random.Random(seed)
            self.media: dict[str, _Medium] = {}
            self.open_files: set = set()  # a cut with a file still open would lie (see cut)
            super().__init__(name, "")

        def tick(self) -> None:
            if self.dead:
                raise apsw.IOError("the power is off")
            self.ops += 1
            if self.ops == self.cut_at:
                self.dead = True
                raise apsw.IOError("power cut")

        def xOpen(self, name, flags):
            return CrashFile(self, name, flags)

        def excepthook(self, *exc):  # the cut's IOError reaches SQLite as SQLITE_IOERR: quiet
            pass

        def xDelete(self, filename, syncdir):
            self.tick()
            self.media.pop(filename, None)
            return super().xDelete(filename, syncdir)

        def cut(self, mode: str) -> None:
            """Write every file as the medium has it after the cut. mode: 'none' (no write
            since the last sync survives), 'some' (a random subset, in order), 'torn' (a
            subset, and one of them only its first sectors). Every connection must be closed
            first: SQLite shares a file's locks and wal-index among a process's connections, so
            one left open would hand the next open its memory of the files, not the medium."""
            self.dead = True
            if self.open_files:
                gc.collect()  # a connection dropped with a traceback is closed by now
            if self.open_files:
                raise AssertionError(f"cut with files open: {sorted(self.open_files)}")
            for path, medium in self.media.items():
                image = bytearray(medium.synced)
                pending = medium.pending
                if mode != "none":
                    pending = [op for op in pending if self.rng.random() < 0.5]
                if mode == "torn" and pending:
                    k = self.rng.randrange(len(pending))
                    if pending[k][0] == "w" and len(pending[k][2]) > SECTOR:
                        _, off, data = pending[k]
                        keep = self.rng.randrange(1, len(data) // SECTOR) * SECTOR
                        pending[k] = ("w", off, data[:keep])
                for op in pending:
                    _apply(image, op)
                with open(path, "wb") as f:
                    f.write(image)
                shm = f"{path}-shm"  # rebuilt by the next open, as after a reboot
                if path.endswith("-wal") and os.path.exists(path[:-4] + "-shm"):
                    os.unlink(path[:-4] + "-shm")
                elif os.path.exists(shm):
                    os.unlink(shm)

    class CrashFile(apsw.VFSFile):
        def __init__(self, vfs: CrashVFS, name, flags):
            self.vfs = vfs
            path = name.filename() if isinstance(name, apsw.URIFilename) else name
            self.medium = None
            if path:
                self.medium = vfs.media.get(path) or vfs.media.setdefault(path, _Medium(path))
            super().__init__("", name, flags)
            self.key = path or f"temp {id(self)}"
            vfs.open_files.add(self.key)

        def xClose(self):
            self.vfs.open_files.discard(self.key)
            return super().xClose()

        def excepthook(self, *exc):
            pass

        def xWrite(self, data, offset):
            self.vfs.tick()
            super().xWrite(data, offset)
            if self.medium is not None:
                self.medium.pending.append(("w", offset, bytes(data)))

        def xTruncate(self, size):
            self.vfs.tick()
            super().xTruncate(size)
            if self.medium is not None:
                self.medium.pending.append(("t", size))

        def xSync(self, flags):
            self.vfs.tick()  # the real fsync is not needed: the medium is modelled
            if self.medium is not None:
                self.medium.sync()
