"""Rows out of a damaged spool file, page by page, without SQLite's help (it keeps no page
checksums, so a failing card's garbage reaches it as SQLITE_CORRUPT, or as a schema it cannot
read at all). Debian's sqlite3 shell has no `.recover` (built without sqlite_dbpage), so this
reads the file format itself (https://www.sqlite.org/fileformat2.html): every b-tree leaf page of
the file, each page taken in its newest committed version from the -wal, every cell parsed as a
record. Rows are told apart by their shape (docs/durability.md, "Salvage"); a page or cell that
does not parse is skipped and counted, never fatal."""

from __future__ import annotations

import struct
from pathlib import Path

HEADER = b"SQLite format 3\x00"
WAL_MAGIC = (0x377F0682, 0x377F0683)
TABLE_LEAF, INDEX_LEAF = 0x0D, 0x0A


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    v = 0
    for k in range(9):
        b = buf[i + k]
        if k == 8:
            return (v << 8) | b, i + 9
        v = (v << 7) | (b & 0x7F)
        if b < 0x80:
            return v, i + k + 1
    raise ValueError("varint")


def _record(buf: bytes) -> list:
    """One record (header of serial types, then the values); ValueError if it does not parse."""
    size, i = _varint(buf, 0)
    if not 0 < size <= len(buf):
        raise ValueError("record header")
    types = []
    while i < size:
        t, i = _varint(buf, i)
        types.append(t)
    out, j = [], size
    for t in types:
        if t in (0, 8, 9):
            out.append((None, 0, 1)[t and t - 7])
            continue
        if t in (10, 11):
            raise ValueError("reserved serial type")
        n = (0, 1, 2, 3, 4, 6, 8, 8)[t] if t < 12 else (t - 12) // 2
        if j + n > len(buf):
            raise ValueError("record body")
        raw = buf[j:j + n]
        j += n
        if t == 7:
            out.append(struct.unpack(">d", raw)[0])
        elif t < 12:
            out.append(int.from_bytes(raw, "big", signed=True))
        elif t % 2:
            out.append(raw.decode())  # UnicodeDecodeError is a ValueError
        else:
            out.append(bytes(raw))
    return out


def _cells(page: bytes, base: int, usable: int):
    """(rowid or None, record) of each cell of a leaf page held wholly on it; overflowing cells
    (a pack over ~4 KB, which the spool does not store) and garbage are skipped."""
    kind = page[base]
    count = int.from_bytes(page[base + 3:base + 5], "big")
    local_max = usable - 35 if kind == TABLE_LEAF else (usable - 12) * 64 // 255 - 23
    for k in range(count):
        try:
            at = int.from_bytes(page[base + 8 + 2 * k:base + 10 + 2 * k], "big")
            size, i = _varint(page, at)
            rowid = None
            if kind == TABLE_LEAF:
                rowid, i = _varint(page, i)
            if size > local_max or i + size > usable:
                raise ValueError("cell")
            yield rowid, _record(page[i:i + size])
        except (ValueError, IndexError):
            continue


def _wal_pages(wal: Path, page_size: int) -> dict[int, bytes]:
    """The newest version of each page in the -wal's committed frames of its current salt."""
    try:
        data = wal.read_bytes()
    except OSError:
        return {}
    if len(data) < 32 or struct.unpack(">I", data[:4])[0] not in WAL_MAGIC or \
            struct.unpack(">I", data[8:12])[0] != page_size:
        return {}
    salt, out, pending, at = data[16:24], {}, {}, 32
    while at + 24 + page_size <= len(data):
        pgno, commit = struct.unpack(">II", data[at:at + 8])
        if data[at + 8:at + 16] != salt:
            break
        pending[pgno] = data[at + 24:at + 24 + page_size]
        if commit:
            out.update(pending)
            pending = {}
        at += 24 + page_size
    return out


def records(path: Path, page_size: int):
    """Every record on a leaf page of the file and its -wal, as (rowid or None, values), page by
    page (memory: the -wal's pages and one page). Free pages (listed by an intact header's
    freelist) are left out: their rows were released. A cell that does not parse is skipped."""
    with open(path, "rb") as f:
        head = f.read(100)
        if head[:16] == HEADER:  # else the page size the spool was made with
            size = int.from_bytes(head[16:18], "big")
            page_size = 65536 if size == 1 else size if size >= 512 else page_size
        wal = _wal_pages(Path(f"{path}-wal"), page_size)

        def page(n: int) -> bytes:
            if n in wal:
                return wal[n]
            f.seek((n - 1) * page_size)
            return f.read(page_size)

        first = page(1)
        usable = page_size - (first[20] if first[:16] == HEADER else 0)
        free = _freelist(page, first)
        count = max([f.seek(0, 2) // page_size, *wal])
        for n in range(1, count + 1):
            if n in free:
                continue
            data = page(n)
            base = 100 if n == 1 else 0
            if len(data) < page_size or data[base] not in (TABLE_LEAF, INDEX_LEAF):
                continue
            for rowid, rec in _cells(data, base, usable):
                if rec is not None:
                    yield rowid, rec


def _freelist(page, head: bytes) -> set[int]:
    if head[:16] != HEADER:
        return set()
    trunk, total = struct.unpack(">II", head[32:40])
    free: set[int] = set()
    while trunk and trunk not in free and len(free) <= total:
        data = page(trunk)
        if len(data) < 8:
            break
        free.add(trunk)
        nxt, count = struct.unpack(">II", data[:8])
        if count > (len(data) - 8) // 4:
            break
        free.update(struct.unpack(f">{count}I", data[8:8 + 4 * count]))
        trunk = nxt
    return free
