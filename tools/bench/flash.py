"""`sensorcity flash`: MicroPython onto a board through esptool's API (detect the chip, check it
against the board file, erase, write at the board's offset, verify), then the node application
over the raw REPL through mpremote's API (compiled for the board's architecture, each file
sha256-checked on the device, node.json and a generated board.py), then the node's hello."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

from ...errors import FatalError
from ...paths import firmware_dir
from . import boards, port as ports
from ..mpy import compile_dir

# sys.implementation._mpy >> 10: MicroPython's native architecture numbers, as mpy-cross names them
ARCHS = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc")
SKIP = {"__init__.py", "board.mpy", "board.py"}  # board.py is generated per board


class Progress:
    """A rich progress bar per step, or nothing (quiet=True, for tests and scripts)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._bar = None
        self._task = None

    @contextmanager
    def step(self, label: str, total: float | None = None):
        if self.quiet:
            yield self
            return
        from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress,
                                   TextColumn, TimeRemainingColumn)
        with RichProgress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(),
                          TimeRemainingColumn(), transient=False) as bar:
            self._bar, self._task = bar, bar.add_task(label, total=total)
            try:
                yield self
                total = bar.tasks[0].total or 1
                bar.update(self._task, completed=total, total=total)
            finally:
                self._bar = self._task = None

    def update(self, done: float, total: float | None = None, label: str | None = None):
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total,
                             **({"description": label} if label else {}))

    def say(self, line: str):
        if not self.quiet:
            print(line)


# --- MicroPython onto the chip (esptool) -----------------------------------------------------

def _esptool_logger(progress: Progress):
    from esptool.logger import TemplateLogger

    class Logger(TemplateLogger):
        """esptool's messages kept for an error line; its progress drawn by our bar."""

        def __init__(self):
            self.lines: list[str] = []

        def print(self, *args, **kwargs):
            self.lines.append(" ".join(map(str, args)))

        def note(self, message):
            self.lines.append(message)

        def warning(self, message):
            self.lines.append(message)

        def error(self, message):
            self.lines.append(message)

        def stage(self, finish=False):
            pass

        def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
            progress.update(cur_iter, total_iters)

        def set_verbosity(self, verbosity):
            pass
    return Logger()


@contextmanager
def _esptool_log(progress: Progress):
    from esp_pylib.logger import EspLog
    from esptool.logger import log
    saved = EspLog.instance
    logger = _esptool_logger(progress)
    log.set_logger(logger)
    try:
        yield logger
    finally:
        EspLog.instance = saved


def chip_id(esptool_name: str) -> str:
    """esptool's CHIP_NAME ('ESP32-S3') -> the board file's chip ('esp32s3')."""
    return esptool_name.lower().replace("-", "")


def flash_firmware(port: str, board_id: str, firmware: Path, progress: Progress | None = None,
                   baud: int = 460800, connect_mode: str = "default-reset") -> dict:
    """Write a MicroPython image at the board's offset and verify it; returns what was done."""
    from esptool import cmds
    from esptool.util import FatalError as EsptoolError
    from serial import SerialException
    progress = progress or Progress()
    board = boards.load(board_id)
    try:
        image = Path(firmware).read_bytes()
    except OSError as exc:
        raise FatalError(f"cannot read firmware {firmware}: {exc.strerror}") from exc
    offset = boards.image_offset(board)
    room = boards.flash_bytes(board) - offset
    if len(image) > room:
        raise FatalError(f"image too large for the flash: {len(image)} bytes at {offset:#x}, "
                         f"{board_id} has {board['flash_size']} ({room} bytes free there)")
    ports.check(port)
    with _esptool_log(progress) as log:
        esp = None
        try:
            try:
                esp = cmds.detect_chip(port, baud=115200, connect_mode=connect_mode,
                                       connect_attempts=3)
            except EsptoolError as exc:
                raise FatalError(f"no ESP32 bootloader answers on {port}: hold BOOT, tap EN (or "
                                 f"RST), release BOOT, and try again") from exc
            found = chip_id(esp.CHIP_NAME)
            if found != board["chip"]:
                raise FatalError(f"wrong chip on {port}: it is an {esp.CHIP_NAME}, board "
                                 f"{board_id} has an {board['chip']}; pick the right --board")
            mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            esp = cmds.run_stub(esp)
            if baud != 115200 and not port.startswith(ports.URL_SCHEMES):
                esp.change_baud(baud)
            cmds.attach_flash(esp)
            detected = cmds.detect_flash_size(esp)
            if detected and detected in boards._SIZES and \
                    boards._SIZES[detected] - offset < len(image):
                raise FatalError(f"image too large for the flash: the chip has {detected}, the "
                                 f"image needs {len(image) + offset} bytes")
            with progress.step("erasing flash"):
                cmds.erase_flash(esp)
            with progress.step(f"writing at {offset:#x}", total=len(image)):
                cmds.write_flash(esp, [(offset, image)], flash_size="keep")
            with progress.step("verifying"):
                cmds.verify_flash(esp, [(offset, image)])
            cmds.reset_chip(esp, "hard-reset")
        except FatalError:
            raise
        except EsptoolError as exc:
            raise FatalError(f"esptool on {port}: {exc}") from exc
        except (SerialException, OSError) as exc:
            raise ports.translate(port, exc) from exc
        finally:
            if esp is not None:
                try:
                    esp._port.close()
                except Exception:  # noqa: BLE001 (already gone is fine)
                    pass
    return {"chip": esp.CHIP_NAME, "mac": mac, "flash_size": detected, "offset": offset,
            "bytes": len(image), "sha256": hashlib.sha256(image).hexdigest(),
            "log": log.lines[-5:]}


# --- the node application over the raw REPL (mpremote) ---------------------------------------

def _connect_repl(port: str, wait: float):
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport
    ports.check(port)
    deadline = time.monotonic() + wait
    while True:
        try:
            t = SerialTransport(port, baudrate=115200)
        except TransportError as exc:
            raise FatalError(f"{port} is busy: another program holds it; close it") from exc
        try:
            t.enter_raw_repl(soft_reset=False, timeout_overall=3)
            return t
        except TransportError as exc:
            t.close()
            if time.monotonic() > deadline:
                raise FatalError(
                    f"no MicroPython REPL on {port}: flash MicroPython first (`sensorcity flash "
                    f"firmware`), or the node's firmware holds the port (`sensorcity flash` "
                    f"erases and starts over)") from exc
            time.sleep(0.5)


def device_info(t) -> dict:
    t.exec("import sys, os")
    return {"platform": t.eval("sys.platform"),
            "arch": ARCHS[t.eval("getattr(sys.implementation, '_mpy', 0) >> 10 & 15")],
            "machine": t.eval("getattr(sys.implementation, '_machine', '')"),
            "files": {name for name, *_ in t.eval("list(os.ilistdir())")}}


def app_files(cfg: dict, board: dict, march: str) -> dict[str, bytes]:
    """name -> bytes of everything the node needs in its flash root."""
    built = compile_dir(firmware_dir(), march)
    files = {p.name: p.read_bytes() for p in sorted(built.iterdir())
             if p.suffix in (".py", ".mpy") and p.name not in SKIP}
    files["board.py"] = boards.generate(board).encode()
    files["node.json"] = json.dumps(cfg).encode()
    return files


NO_ROMFS = ("{port}: this MicroPython has no romfs partition (`mpremote romfs query` finds "
            "none): flash a MicroPython build with one (MICROPY_VFS_ROM and a \"romfs\" "
            "partition), or use plain `flash app`")


def romfs_image(modules: dict[str, bytes]) -> bytes:
    """A ROMFS image of the modules (name -> .mpy bytes) at its root, built with mpremote's own
    writer (`mpremote romfs build`); the board mounts it at /rom, which is on sys.path."""
    from mpremote.romfs import VfsRomWriter
    rom = VfsRomWriter()
    for name in sorted(modules):
        rom.mkfile(name, modules[name])
    return rom.finalise()


class _DeployOutput(io.TextIOBase):
    """mpremote's romfs deploy prints its progress: kept for an error line, drawn by our bar."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total, self.text = progress, total, ""

    def write(self, s: str) -> int:
        self.text += s
        for m in re.finditer(r"Writing at offset (\d+)", s):
            self.progress.update(int(m[1]), self.total)
        return len(s)


def _romfs_partition(t, port: str) -> int:
    """The size of the board's first romfs partition; FatalError when it has none."""
    t.exec("import vfs")
    if not t.eval("hasattr(vfs,'rom_ioctl') and vfs.rom_ioctl(1)>0"):
        raise FatalError(NO_ROMFS.format(port=port))
    t.exec("_rom=vfs.rom_ioctl(2,0)")
    if t.eval("isinstance(_rom,int)"):
        raise FatalError(NO_ROMFS.format(port=port))
    return t.eval("_rom.ioctl(4,0)*_rom.ioctl(5,0) if hasattr(_rom,'ioctl') else len(_rom)")


def _romfs_digest(t, size: int) -> bytes:
    t.exec("import hashlib")
    return t.eval(f"hashlib.sha256(memoryview(_rom)[:{size}]).digest()")


def deploy_romfs(t, port: str, image: bytes, progress: Progress) -> bool:
    """Write the ROMFS image to the board's romfs partition with mpremote's `romfs deploy`
    (it unmounts /rom, erases, writes; the board mounts the new one at its next boot), then check
    it by sha256 on the device. Returns False when the partition already held this image."""
    from argparse import Namespace
    from contextlib import redirect_stdout
    from tempfile import TemporaryDirectory
    from mpremote.commands import CommandError, do_romfs
    from mpremote.main import State
    room = _romfs_partition(t, port)
    if len(image) > room:
        raise FatalError(f"the app's ROMFS is {len(image)} bytes, the romfs partition on {port} "
                         f"has {room}: flash a MicroPython build with a larger one, or use plain "
                         f"`flash app`")
    digest = hashlib.sha256(image).digest()
    if _romfs_digest(t, len(image)) == digest:
        return False
    state = State()
    state.transport = t
    state._auto_soft_reset = False  # already in the raw REPL; the node must not start again
    out = _DeployOutput(progress, len(image))
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.romfs"
        path.write_bytes(image)
        args = Namespace(command=["deploy"], path=str(path), partition=0, mpy=False)
        try:
            with progress.step(f"romfs ({len(image)} bytes)", total=len(image)), \
                    redirect_stdout(out):
                do_romfs(state, args)
        except (CommandError, SystemExit) as exc:
            last = (out.text.strip().splitlines() or [str(exc)])[-1]
            raise FatalError(f"mpremote romfs deploy on {port}: {last}") from exc
    t.exec("_rom=vfs.rom_ioctl(2,0)")
    if _romfs_digest(t, len(image)) != digest:
        raise FatalError(f"sha256 of the romfs partition on {port} does not match the image: the "
                         f"serial line corrupts data (cable, hub); try again")
    return True


def flash_app(port: str, config: Path, progress: Progress | None = None, wait: float = 10.0,
              reset: bool = True, romfs: bool = False) -> dict:
    """Copy the node application and its config; each file is checked by sha256 on the device,
    and files already there with the right hash are left alone. romfs=True puts the compiled
    modules into the board's romfs partition instead (their bytecode then runs in place, off the
    heap) and only boot.py, main.py, board.py and node.json on its filesystem."""
    from mpremote.transport import TransportError
    progress = progress or Progress()
    try:
        cfg = json.loads(Path(config).read_text())
    except (OSError, ValueError) as exc:
        raise FatalError(f"cannot read node config {config}: {exc}") from exc
    board = boards.load(cfg.get("board", "esp32-devkitc"))
    chip = boards.CHIPS[board["chip"]]
    t = _connect_repl(port, wait)
    written, unchanged = [], []
    rom = None
    try:
        info = device_info(t)
        on_esp = info["platform"].startswith("esp32")
        if on_esp:
            # MicroPython's ESP32 builds name their chip in sys.implementation._machine
            is_s3 = "ESP32S3" in info["machine"].upper().replace("-", "")
            if is_s3 != (board["chip"] == "esp32s3"):
                raise FatalError(f"wrong chip on {port}: {info['machine']!r}, but the node's "
                                 f"board {board['id']} has an {board['chip']}")
            if info["arch"] != chip.march:
                raise FatalError(f"{port} runs MicroPython for {info['arch']}, the board needs "
                                 f"{chip.march}")
        march = info["arch"] or chip.march  # the emulated board reports its host's (x64)
        files = app_files(cfg, board, march)
        if romfs:
            modules = {n: files.pop(n) for n in list(files) if n.endswith(".mpy")}
            image = romfs_image(modules)
            deployed = deploy_romfs(t, port, image, progress)
            rom = {"modules": sorted(modules), "bytes": len(image), "deployed": deployed}
        # a left-over .py would shadow its new .mpy; after --romfs, an earlier app's .mpy would
        # shadow the ROMFS ('' comes before /rom on sys.path)
        stale = {n for n in info["files"] if n.endswith((".py", ".mpy")) and n not in files}
        total = sum(len(b) for b in files.values())
        with progress.step(f"copying app ({march})", total=total):
            done = 0
            for name, data in files.items():
                digest = hashlib.sha256(data).digest()
                if name in info["files"] and t.fs_hashfile(name, "sha256") == digest:
                    unchanged.append(name)
                else:
                    t.fs_writefile(name, data, chunk_size=1024)
                    if t.fs_hashfile(name, "sha256") != digest:
                        raise FatalError(f"sha256 of {name} on the device does not match: the "
                                         f"serial line corrupts data (cable, hub); try again")
                    written.append(name)
                done += len(data)
                progress.update(done, total)
            for name in sorted(stale):
                t.fs_rmfile(name)
        if reset:
            t.exec_raw_no_follow("import machine; machine.reset()")
    except TransportError as exc:
        raise FatalError(f"the REPL on {port} stopped answering: {exc}") from exc
    finally:
        try:
            t.close()
        except OSError:
            pass
    return {"arch": march, "written": written, "unchanged": unchanged, "removed": sorted(stale),
            "platform": info["platform"], "romfs": rom}


def wait_hello(port: str, config: Path, timeout: float = 30.0) -> dict:
    """The node's first verified hello on its link: it booted the application and knows its key."""
    from .monitor import Link
    cfg = json.loads(Path(config).read_text())
    with Link.open(port, {cfg["node_id"]: bytes.fromhex(cfg["key"])}) as link:
        for frame in link.frames(timeout):
            if frame.kind == 2:  # HELLO
                return frame.body
    raise FatalError(f"no hello from {cfg['node_id']} on {port} in {timeout:.0f} s: the app did "
                     f"not start (`sensorcity monitor --port {port} --config {config}` shows why)")
