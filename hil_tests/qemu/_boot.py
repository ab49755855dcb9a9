# sensorcity: mount a littlefs filesystem at / as an ESP32 does, on the board's PSRAM
# (0x21000000, outside the GC heap), 2 MiB as an ESP32-DevKitC's filesystem partition. QEMU
# gives the PSRAM a host file when asked (-object memory-backend-file,share=on with -machine
# memory-backend=...), which makes it the board's flash chip: it survives machine.reset() (QEMU
# exits and is started again) and can be written on the host before boot (tools/qemu.py). Without
# that it is plain RAM: it survives a soft reset (Ctrl-D) but not a restart of QEMU.
# A ROMFS image 2 MiB into the same chip (tools/qemu.write_rom), as in an ESP32's romfs
# partition, is mounted at /rom, with /rom and /rom/lib at the end of sys.path as MicroPython
# does on ports that mount it themselves: .mpy files there run in place, their bytecode stays in
# flash instead of the heap.
import sys
import uctypes
import vfs

_BLOCK = 4096
_BASE = 0x21000000
_COUNT = 512  # 2 MiB
_ROM = 0x21200000
_ROM_SIZE = 0x100000  # 1 MiB


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
    rom = uctypes.bytearray_at(_ROM, _ROM_SIZE)
    if rom[0] == 0xD2 and rom[1] == 0xCD and rom[2] == 0x31:  # a ROMFS header
        vfs.mount(vfs.VfsRom(rom), "/rom")
        sys.path.append("/rom")
        sys.path.append("/rom/lib")


_mount()
del _mount, RAMBlockDev, sys, uctypes, vfs
