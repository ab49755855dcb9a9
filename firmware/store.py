# Store-and-forward ring in flash (littlefs): readings stay here until the gateway acks them.
# Frames are appended to segment files, each record a header (magic, length, sequence number)
# and the wire frame; `tail` names the oldest unacked record and is replaced atomically (write a
# new file, rename). A full store drops its oldest segment (counted), so the newest readings are
# the ones kept. Power loss mid-append leaves at most a torn last record: it fails the header or
# the frame's closing 0x00, is skipped, and the next append opens a fresh segment after it.
# A flash that fills before the segment bound (ENOSPC) is full too: the oldest segment goes.
import os
import struct

from micropython import const

SEG_BYTES = const(16384)
MAGIC = const(0xA5)
HDR = const(7)  # magic u8, frame length u16, sequence number u32 (little-endian)
ENOSPC = const(28)
MAX_REC = const(1100)  # a link frame (<= 1024 decoded bytes, COBS adds 1 per 254) and its header


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
        self.dropped = 0  # frames lost to a full store
        self.torn = 0  # torn records skipped after a power cut
        self.buf = bytearray(MAX_REC)  # one read buffer: peek() returns a view into it
        self.mv = memoryview(self.buf)
        self.hdr = bytearray(HDR)
        self.seq = -1  # the sequence number of the frame peek() returned
        if not _exists(root):
            os.mkdir(root)
        segs = sorted(int(n[1:]) for n in os.listdir(root) if n[0] == "s")
        self.segs = segs or [0]
        self.head_seg = self.segs[-1]
        self.tail_seg, self.tail_off = self._read_tail()
        self.head_off = self._valid_end(self.head_seg)
        if self.head_off < self._size(self.head_seg):
            self.torn += 1  # appends after a torn record would be unreachable: start afresh
            self._new_segment()
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
            if self.segs and seg > self.segs[-1]:  # acked up to a segment not yet written
                return self.segs[-1], self._size(self.segs[-1])
        except (OSError, ValueError):
            pass
        return self.segs[0], 0

    def _write_tail(self):
        tmp = self.root + "/tail.new"
        with open(tmp, "wb") as f:
            f.write(struct.pack("<II", self.tail_seg, self.tail_off))
        os.rename(tmp, self.root + "/tail")

    def _valid_end(self, seg):
        off = 0
        while True:
            n = self._read_at(seg, off)
            if n < 0:
                return off
            off += HDR + n

    def _count(self):
        return sum(self._unacked(seg) for seg in self.segs)

    def _unacked(self, seg):
        """The number of records in seg not yet acked."""
        if seg < self.tail_seg:
            return 0
        n = 0
        off = self.tail_off if seg == self.tail_seg else 0
        while True:
            size = self._read_at(seg, off)
            if size < 0:
                return n
            n += 1
            off += HDR + size

    def _read_at(self, seg, off):
        """Read the record at (seg, off) into buf; its frame length, or -1 if none is whole."""
        try:
            with open(self._path(seg), "rb") as f:
                f.seek(off)
                if f.readinto(self.hdr) < HDR:
                    return -1
                magic, n, seq = struct.unpack("<BHI", self.hdr)
                if magic != MAGIC or n > MAX_REC or n == 0:
                    return -1
                got = f.readinto(self.mv[:n])
        except OSError:
            return -1
        if got < n or self.buf[n - 1] != 0:  # a frame ends with its 0x00 delimiter
            return -1
        self.seq = seq
        return n

    def _new_segment(self):
        self.head_seg += 1
        self.head_off = 0
        self.segs.append(self.head_seg)
        while len(self.segs) > self.max_segments:
            self._drop_oldest()

    def append(self, frame, seq):
        if self.head_off + HDR + len(frame) > SEG_BYTES:
            self._new_segment()
        while True:
            try:
                with open(self._path(self.head_seg), "ab") as f:
                    f.write(struct.pack("<BHI", MAGIC, len(frame), seq))
                    f.write(frame)
                break
            except OSError as exc:
                if exc.errno != ENOSPC:
                    raise
            # the flash filled before the segment bound: the oldest segment goes (its frames
            # counted in dropped) and the frame goes into a fresh one, past any torn bytes
            if len(self.segs) == 1 and self.head_off == 0:
                self.dropped += 1  # not even an empty store holds it: the frame is lost
                try:
                    os.remove(self._path(self.head_seg))  # and no torn bytes stay before
                except OSError:  # the next append
                    pass
                return
            self._new_segment()
            self._drop_oldest()
        self.head_off += HDR + len(frame)
        self.depth += 1

    def _drop_oldest(self):
        seg = self.segs.pop(0)
        lost = self._unacked(seg)
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
        """The oldest unacked frame (a view, valid until the next store call; its sequence number
        in .seq), or None."""
        while True:
            n = self._read_at(self.tail_seg, self.tail_off)
            if n >= 0:
                return self.mv[:n]
            if self.tail_seg >= self.head_seg:
                return None
            self._advance_segment()

    def peek_after(self, seg, off):
        """The record at (seg, off), or the first one of a later segment: a view (valid until
        the next store call; its sequence number in .seq) or None. The sender's cursor for
        frames in flight: (self.at_seg, self.at_off) is where the record after it starts."""
        while True:
            n = self._read_at(seg, off)
            if n >= 0:
                self.at_seg, self.at_off = seg, off + HDR + n
                return self.mv[:n]
            nxt = self._next_seg(seg)
            if nxt == seg:
                return None
            seg, off = nxt, 0

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

    def _next_seg(self, seg):
        for s in self.segs:
            if s > seg:
                return s
        return seg

    def pop(self):
        """The gateway acked the oldest frame: release it."""
        n = self._read_at(self.tail_seg, self.tail_off)
        if n < 0:
            return
        self.tail_off += HDR + n
        self.depth -= 1
        if self.tail_seg != self.head_seg and self._read_at(self.tail_seg, self.tail_off) < 0:
            self._advance_segment()
        else:
            self._write_tail()
