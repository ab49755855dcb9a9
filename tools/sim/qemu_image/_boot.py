# sensorcity: mount a littlefs filesystem at / as an ESP32 does, on the board's PSRAM
# (0x21000000, outside the GC heap), 2 MiB as an ESP32-DevKitC's filesystem partition. QEMU
# gives the PSRAM a host file when asked (-object memory-backend-file,share=on with -machine
# memory-backend=...), which makes it the board's flash chip: it survives machine.reset() (QEMU
# exits and is started again) and can be written on the host before boot (tools/sim/qemu.py). Without
# that it is plain RAM: it survives a soft reset (Ctrl-D) but not a restart of QEMU.
# The 1 MiB after it is the board's romfs partition (vfs_rom_ioctl.c), as an ESP32 build with a
# "romfs" partition has one: a ROMFS image there (tools/qemu.write_rom, `mpremote romfs deploy`,
# `sensorcity flash app --romfs`) is mounted at /rom by MicroPython itself before this file runs,
# with /rom and /rom/lib on sys.path; .mpy files there run in place, their bytecode stays in flash
# instead of the heap. /lib follows them, as on an ESP32.
import sys
import uctypes
import vfs

_BLOCK = 4096
_BASE = 0x21000000
_COUNT = 512  # 2 MiB


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
    bdev = RAMBlockDev(uctypes.bytearray_at(_BASE, _BLOCK * _COUNT), _BLOCK)
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(fs, "/")
    sys.path.append("/lib")


_mount()
del _mount, RAMBlockDev, sys, uctypes, vfs
