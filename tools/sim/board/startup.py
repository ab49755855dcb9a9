# The emulated board's start-up, run by the MicroPython unix port: mount the flash image
# (littlefs, as on the ESP32), make it the working directory, then boot.py and main.py as a
# board would run them.
import json
import os
import sys

import vfs

_CFG = json.loads(os.getenv("SENSORCITY_EMU"))
BLOCK = 4096
_ERASED = b"\xff" * BLOCK  # allocated once: erases happen while the firmware runs


class FlashImage:
    """A block device over an image file: the emulated SPI flash."""

    def __init__(self, path, blocks):
        self.f = open(path, "r+b")
        self.blocks = blocks

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        self.f.seek(n * BLOCK + (off or 0))
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        if op == 6:  # erase
            self.f.seek(arg * BLOCK)
            self.f.write(_ERASED)
            return 0
        return 0


def mount():
    dev = FlashImage(_CFG["flash"], _CFG["flash_blocks"])
    try:
        vfs.mount(vfs.VfsLfs2(dev), "/flash")
    except OSError:
        vfs.VfsLfs2.mkfs(dev)
        vfs.mount(vfs.VfsLfs2(dev), "/flash")
    os.chdir("/flash")


def install_config():
    node = _CFG.get("node")
    if node is None:
        return
    text = json.dumps(node)
    try:
        with open("node.json") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open("node.json", "w") as f:
        f.write(text)


mount()
install_config()
# Firmware files: from the flash image when the app was flashed there, else from firmware/.
sys.path[:] = ["/flash", _CFG["emulator"]] + ([_CFG["firmware"]] if _CFG.get("firmware") else []) + [".frozen"]
if _CFG.get("run", True):
    import boot  # noqa: F401
    import main  # noqa: F401
