# Store-and-forward ring in flash (littlefs): readings stay here until the gateway acks them.
# Frames are appended to segment files; `tail` names the oldest unacked frame. A full store
# drops its oldest segment (counted), so the newest readings are the ones kept.
import os
import struct

from micropython import const

SEG_BYTES = const(16384)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Store:
    def __init__(self, root="store.d", max_segments=64):
        self.root = root
        self.max_segments = max_segments
        self.dropped = 0
        if not _exists(root):
            os.mkdir(root)
        segs = sorted(int(n[1:]) for n in os.listdir(root) if n[0] == "s")
        self.segs = segs or [0]
        self.head_seg = self.segs[-1]
        self.head_off = self._size(self.head_seg)
        self.tail_seg, self.tail_off = self._read_tail()
        self.depth = self._count()

    def _path(self, seg):
        return "%s/s%08d" % (self.root, seg)

    def _size(self, seg):
        try:
            return os.stat(self._path(seg))[6]
        except OSError:
            return 0

    def _read_tail(self):
        try:
            with open(self.root + "/tail", "rb") as f:
                seg, off = struct.unpack("<II", f.read(8))
            if seg in self.segs:
                return seg, off
        except (OSError, ValueError):
            pass
        return self.segs[0], 0

    def _write_tail(self):
        tmp = self.root + "/tail.new"
        with open(tmp, "wb") as f:
            f.write(struct.pack("<II", self.tail_seg, self.tail_off))
        os.rename(tmp, self.root + "/tail")

    def _count(self):
        n = 0
        seg, off = self.tail_seg, self.tail_off
        while True:
            rec = self._read_at(seg, off)
            if rec is None:
                if seg >= self.head_seg:
                    return n
                seg, off = self._next_seg(seg), 0
                continue
            n += 1
            off += 2 + len(rec)

    def _next_seg(self, seg):
        for s in self.segs:
            if s > seg:
                return s
        return seg

    def _read_at(self, seg, off):
        try:
            with open(self._path(seg), "rb") as f:
                f.seek(off)
                hdr = f.read(2)
                if len(hdr) < 2:
                    return None
                n = struct.unpack("<H", hdr)[0]
                rec = f.read(n)
                return rec if len(rec) == n else None  # a torn write ends the segment
        except OSError:
            return None

    def append(self, frame):
        if self.head_off + 2 + len(frame) > SEG_BYTES:
            self.head_seg += 1
            self.head_off = 0
            self.segs.append(self.head_seg)
            while len(self.segs) > self.max_segments:
                self._drop_oldest()
        with open(self._path(self.head_seg), "ab") as f:
            f.write(struct.pack("<H", len(frame)))
            f.write(frame)
        self.head_off += 2 + len(frame)
        self.depth += 1

    def _drop_oldest(self):
        seg = self.segs.pop(0)
        lost = 0
        off = self.tail_off if seg == self.tail_seg else 0
        if seg >= self.tail_seg:
            while True:
                rec = self._read_at(seg, off)
                if rec is None:
                    break
                lost += 1
                off += 2 + len(rec)
        self.dropped += lost
        self.depth -= lost
        try:
            os.remove(self._path(seg))
        except OSError:
            pass
        if self.tail_seg <= seg:
            self.tail_seg, self.tail_off = self.segs[0], 0
            self._write_tail()

    def peek(self):
        """The oldest unacked frame, or None."""
        while True:
            rec = self._read_at(self.tail_seg, self.tail_off)
            if rec is not None:
                return rec
            if self.tail_seg >= self.head_seg:
                return None
            self._advance_segment()

    def _advance_segment(self):
        old = self.tail_seg
        self.tail_seg, self.tail_off = self._next_seg(old), 0
        if old != self.head_seg:
            self.segs.remove(old)
            try:
                os.remove(self._path(old))
            except OSError:
                pass
        self._write_tail()

    def pop(self):
        """The gateway acked the oldest frame: release it."""
        rec = self._read_at(self.tail_seg, self.tail_off)
        if rec is None:
            return
        self.tail_off += 2 + len(rec)
        self.depth -= 1
        if self.tail_seg != self.head_seg and self._read_at(self.tail_seg, self.tail_off) is None:
            self._advance_segment()
        else:
            self._write_tail()
