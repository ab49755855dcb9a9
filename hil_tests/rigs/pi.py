"""A Raspberry Pi's architecture on this machine: an arm64 Debian root file system (mmdebstrap
from Debian's mirror, cached as a tarball), run in a chroot through qemu-user (binfmt_misc).
The chroot shares the host's network, so the gateway in it reaches a mosquitto on the host's
loopback and nodes on the host reach its listener.

    root = PiRoot(tmp_path / "pi")          # unpacked from the cached tarball
    root.run("dpkg", "-i", "/tmp/sensorcity.deb")
    proc = root.popen("/usr/bin/sensorcity", "gateway", "run", ...)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

SUITE, ARCH = "bookworm", "arm64"  # 64-bit Raspberry Pi OS is Debian bookworm for arm64
MIRROR = "http://deb.debian.org/debian"
INCLUDE = ("python3", "adduser")  # what the .deb depends on; minbase has the rest
BINFMT = Path("/proc/sys/fs/binfmt_misc")


class PiError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("SENSORCITY_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sensorcity"
    return Path(base) / "pi-rootfs"


def ensure_binfmt() -> None:
    """arm64 binaries run through qemu-user-static: binfmt_misc mounted, its aarch64 entry on
    (with the F flag, so the interpreter needs no copy inside the chroot)."""
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True,
                       capture_output=True)
    text = entry.read_text() if entry.exists() else ""
    if "enabled" not in text or "F" not in next((line for line in text.splitlines()
                                                 if line.startswith("flags:")), ""):
        raise PiError(f"binfmt_misc has no usable qemu-aarch64 entry:\n{text}")


def rootfs_tarball(log=None) -> Path:
    """The cached root file system, built once per suite and package list (minutes)."""
    key = hashlib.sha256(f"{SUITE} {ARCH} {' '.join(INCLUDE)}".encode()).hexdigest()[:12]
    tar = cache_dir() / f"{SUITE}-{ARCH}-{key}.tar"
    if tar.exists():
        return tar
    if not shutil.which("mmdebstrap"):
        raise PiError("mmdebstrap is missing: apt-get install mmdebstrap qemu-user-static "
                      "binfmt-support (make test-pi does)")
    tar.parent.mkdir(parents=True, exist_ok=True)
    part = tar.with_suffix(".part")
    start = time.monotonic()
    p = subprocess.run(["mmdebstrap", "--quiet", f"--arch={ARCH}", "--variant=minbase",
                        f"--include={','.join(INCLUDE)}", SUITE, str(part), MIRROR],
                       capture_output=True, text=True)
    if p.returncode:
        part.unlink(missing_ok=True)
        raise PiError(f"mmdebstrap failed:\n{p.stderr[-3000:]}")
    part.rename(tar)
    if log:
        log(f"pi rootfs built in {time.monotonic() - start:.0f} s: {tar}")
    return tar


class PiRoot:
    """An unpacked arm64 root; commands run in it by chroot in a private mount namespace (its
    /proc and /dev go away with the command)."""

    def __init__(self, path: Path, tarball: Path | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.path), "-xf", str(tarball or rootfs_tarball())],
                       check=True)

    def argv(self, *cmd) -> list[str]:
        script = ('mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && '
                  'exec chroot "$0" "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.path), *map(str, cmd)]

    def run(self, *cmd, timeout=600, check=True) -> subprocess.CompletedProcess:
        p = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and p.returncode:
            raise PiError(f"{cmd} in the Pi root: exit {p.returncode}\n{p.stdout[-2000:]}\n"
                          f"{p.stderr[-2000:]}")
        return p

    def popen(self, *cmd, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*cmd), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                      "LANG": "C.UTF-8"}, **kw)

    def put(self, src: Path, dst: str) -> str:
        """A host file into the root at dst; returns dst."""
        target = self.path / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        return dst

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
