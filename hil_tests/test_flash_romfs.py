"""`sensorcity flash app --romfs` on the QEMU board over its UART0 pty, with the real mpremote:
the node's modules go into the board's romfs partition (vfs.rom_ioctl, tools/sim/qemu_image/
vfs_rom_ioctl.c), MicroPython mounts it at /rom at boot, the node boots from it and says hello, and
its modules' bytecode stays off the heap: gc.mem_alloc() after importing an energy node's modules
is measured after a plain `flash app` and after `--romfs` on the same board. A board without a
romfs partition (the unix-port bench board) gets one line saying so."""

import json
import subprocess

import pytest

from rigs.targets import SENSORCITY
from sensorcity.tools.bench import flash
from rigs.benchboard import BenchBoard
from sensorcity.tools.mpy import compile_dir
from sensorcity.tools.sim.qemu import BOARD_DIR, QemuBoard, write_flash

# what main.py loads on an energy node (sensors.energy imports energy and p1)
IMPORT = ("import gc\ngc.collect()\nimport asyncio, hw, node, sensors, energy, p1\ngc.collect()\n"
          "print(gc.mem_alloc(), node.__file__)")
KIB = 1024


def _provision(tmp_path, node_id):
    reg, cfg = tmp_path / "nodes.json", tmp_path / f"{node_id}.json"
    subprocess.run([SENSORCITY, "provision", "--node-id", node_id, "--sensor", "energy",
                    "--registry", reg, "--out", cfg, "--interval", "5"], check=True,
                   capture_output=True)
    node = json.loads(cfg.read_text())
    node["link"] = {"serial": True}  # the QEMU board's console is its link, as QemuNode has it
    cfg.write_text(json.dumps(node))
    return cfg


def _heap_after_import(board):
    """A fresh interpreter (soft reset in the raw REPL: _boot.py and boot.py run, main.py does
    not), then the node's imports: (gc.mem_alloc(), node.__file__)."""
    board.serial.write(b"\x04")
    board.read_until(b"raw REPL; CTRL-B to exit\r\n>", timeout=15)
    board.discard_input()
    alloc, where = board.exec(IMPORT).split()
    return int(alloc), where


def _run(*args):
    return subprocess.run([SENSORCITY, *map(str, args)], capture_output=True, text=True,
                          timeout=180)


@pytest.mark.qemu
@pytest.mark.unixport  # the unix port writes the flash image (tools/sim/qemu.write_flash)
def test_flash_app_romfs_boots_the_node_from_rom_with_its_bytecode_off_the_heap(tmp_path):
    cfg = _provision(tmp_path, "rom-1")
    # the board's own `machine` (ESP32 API over the AN385), in /lib as a board's firmware has it
    image = write_flash(tmp_path / "flash.img", {
        "lib/machine.mpy": compile_dir(BOARD_DIR, march="armv7m") / "machine.mpy"})
    with QemuBoard(flash=image) as board:
        # a plain `flash app` first: the modules on littlefs, loaded onto the heap
        plain = flash.flash_app(board.port, cfg, flash.Progress(quiet=True), reset=False)
        assert "node.mpy" in plain["written"] and plain["romfs"] is None
        plain_alloc, plain_file = _heap_after_import(board)
        assert not plain_file.startswith("/rom"), plain_file
        # then --romfs: deployed by mpremote's romfs deploy, the earlier .mpy files removed
        p = _run("flash", "app", "--romfs", "--port", board.port, "--config", cfg, "--quiet")
        assert p.returncode == 0, p.stderr
        modules = sorted(n for n in plain["written"] if n.endswith(".mpy"))
        assert f"romfs: {len(modules)} modules" in p.stdout and "deployed" in p.stdout, p.stdout
        assert f"{len(modules)} left-over files removed" in p.stdout, p.stdout
        # machine.reset(): the board restarts in place and main.py runs the node from /rom
        board.serial.close()
        board.serial = None
        hello = flash.wait_hello(board.port, cfg, timeout=60)
        assert hello["kind"] == "energy" and hello["boot"] == 1, hello
    # the node holds its console (Ctrl-C off): boot once without main.py to measure
    write_flash(image, {"main.py": "-"})
    with QemuBoard(flash=image) as board:
        on_fs = board.exec("import os\nprint(' '.join(sorted(os.listdir('/'))))").split()
        assert not [n for n in on_fs if n.endswith(".mpy")], on_fs
        rom_alloc, rom_file = _heap_after_import(board)
    assert rom_file == "/rom/node.mpy", rom_file
    print(f"gc.mem_alloc() after an energy node's imports: {plain_alloc} B plain, "
          f"{rom_alloc} B from the romfs")
    assert plain_alloc - rom_alloc >= 10 * KIB, (plain_alloc, rom_alloc)


@pytest.mark.unixport
def test_flash_app_romfs_on_a_board_without_a_romfs_partition_is_one_line(tmp_path):
    cfg = _provision(tmp_path, "rom-2")
    with BenchBoard(tmp_path / "flash.img") as board:  # the unix port: no vfs.rom_ioctl
        p = _run("flash", "app", "--romfs", "--port", board.port, "--config", cfg, "--quiet")
        assert p.returncode == 2, p.stdout + p.stderr
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and "no romfs partition" in err[0], p.stderr
        assert "plain `flash app`" in err[0] and "Traceback" not in p.stderr
        # nothing was copied: the board is as it was
        again = flash.flash_app(board.port, cfg, flash.Progress(quiet=True), reset=False)
        assert "node.mpy" in again["written"]
