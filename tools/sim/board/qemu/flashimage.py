# Writes files into the QEMU board's flash image before it boots; run by the host's MicroPython
# unix port, whose littlefs is the board's (vfs.VfsLfs2 with the same block size and count as
# tools/sim/qemu_image/_boot.py). Existing files are replaced, others kept, as mpremote cp does.
# argv: image block-count then pairs of board-path host-path; a host-path of "-" removes the
# board's file if it is there.
import os
import sys

import vfs

BLOCK = 4096


class ImageFile:
    def __init__(self, path, blocks):
        self.f = open(path, "r+b")
        self.blocks = blocks

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        return 0  # init, sync, erase: nothing to do on memory


def main(image, blocks, pairs):
    dev = ImageFile(image, blocks)
    try:
        fs = vfs.VfsLfs2(dev)
    except OSError:
        vfs.VfsLfs2.mkfs(dev)
        fs = vfs.VfsLfs2(dev)
    vfs.mount(fs, "/flash")
    buf = bytearray(BLOCK)
    for i in range(0, len(pairs), 2):
        dst = "/flash/" + pairs[i].strip("/")
        if pairs[i + 1] == "-":
            try:
                os.remove(dst)
            except OSError:
                pass
            continue
        parts = dst.split("/")
        for k in range(3, len(parts)):
            try:
                os.mkdir("/".join(parts[:k]))
            except OSError:
                pass
        with open(pairs[i + 1], "rb") as src, open(dst, "wb") as out:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                out.write(memoryview(buf)[:n])
    vfs.umount("/flash")
    dev.f.close()


main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
