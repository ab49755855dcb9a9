# sensorcity: mount a littlefs filesystem at / as an ESP32 does, on RAM the emulated board has
# spare (SSRAM2/3 at 0x20000000, outside the GC heap). It survives a soft reset (Ctrl-D), so
# files copied in over the raw REPL are there when boot.py and main.py run; a hard start of
# QEMU begins with an empty filesystem.
import sys
import uctypes
import vfs

_BLOCK = 4096
_COUNT = 256  # 1 MiB


class RAMBlockDev:
    def __init__(self, mem, block_size):
        self.mem = memoryview(mem)
        self.block_size = block_size

    def readblocks(self, n, buf, off=0):
        a = n * self.block_size + off
        buf[:] = self.mem[a : a + len(buf)]

    def writeblocks(self, n, buf, off=None):
        a = n * self.block_size + (off or 0)
        self.mem[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return len(self.mem) // self.block_size
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase: littlefs rewrites whole blocks, nothing to do
            return 0


def _mount():
    bdev = RAMBlockDev(uctypes.bytearray_at(0x20000000, _BLOCK * _COUNT), _BLOCK)
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(fs, "/")
    sys.path.append("/lib")


_mount()
del _mount, RAMBlockDev, sys, uctypes, vfs
