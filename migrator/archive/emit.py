"""The members restore accepted, rewritten as a pax stream for `tar --extract` from checked fields only.

GNU tar never parses a byte we did not write, so no difference between two tar parsers can smuggle a
member past the checks. Hand-built from templates for speed; format: docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import os
import re

from migrator.archive.tarparse import ACL_PREFIX, BLOCK, DIRECTORY, HARDLINK, REGULAR, SYMLINK, bytesum  # noqa: F401 (emitted types)

PAX_KEEP_PREFIXES = (b"SCHILY.xattr.", ACL_PREFIX)
PAX_TIME_KEYS = (b"mtime", b"atime")
_PAX_TIME = re.compile(rb"-?[0-9]{1,19}(\.[0-9]{1,9})?\Z")
# Largest values the ustar octal fields hold (uid/gid: 7 digits, size/mtime: 11 digits).
_MAX_ID = 8**7 - 1
_MAX_BIG = 8**11 - 1
_ZEROS = bytes(BLOCK)
_ZERO_END = bytes(2 * BLOCK)
_MAGIC = b"ustar\x0000"
# The pax header block is the same for every member but for its size field: name (tarfile's), mode
# 0644, owner 0, mtime 0, typeflag 'x'.
_X_HEAD = b"././@PaxHeader".ljust(100, b"\0") + b"0000644\0" + b"0000000\0" + b"0000000\0"
_X_MTIME = b"00000000000\0"
_X_TAIL = b"x" + bytes(100) + _MAGIC + bytes(BLOCK - 265)
# Pieces below this are batched into one pipe write (one syscall, one wake-up of tar per batch).
BATCH = 256 * 1024
_X_SUM = sum(_X_HEAD) + sum(_X_MTIME) + 8 * 0x20 + sum(_X_TAIL)
_MAIN_TAIL_SUM = 8 * 0x20 + sum(_MAGIC)


def carried_pax(pax: dict[bytes, bytes]) -> tuple[dict[bytes, bytes], bool]:
    """The pax records of an archived member that restore passes on to GNU tar, and whether any of them
    is an ACL (one pass: this runs once per member)."""
    kept = {}
    acl = False
    for key, value in pax.items():
        if key.startswith(PAX_KEEP_PREFIXES):
            kept[key] = value
            acl = acl or key.startswith(ACL_PREFIX)
        elif key in PAX_TIME_KEYS and _PAX_TIME.match(value):
            kept[key] = value  # exact nanoseconds (a float would round them)
    return kept, acl


def _record(key: bytes, value: bytes) -> bytes:
    n = len(key) + len(value) + 3  # " ", "=", "\n"
    if 9 <= n <= 97:  # most records: a two-digit length, n + 2 <= 99
        return b"%d %s=%s\n" % (n + 2, key, value)
    digits = len(str(n))
    total = n + digits
    if len(str(total)) > digits:  # the length counts its own digits
        total += 1
    return b"%d %s=%s\n" % (total, key, value)


def _fits(value: int, limit: int) -> int:
    return value if 0 <= value <= limit else 0


def member_header(path: bytes, mode: int, uid: int, gid: int, size: int, mtime: float, typeflag: bytes,
                  linkpath: bytes = b"", pax: dict[bytes, bytes] | None = None) -> bytes:
    """The pax header, its records and the ustar header of one member, as one bytes object."""
    records = [_record(b"path", path)]
    if linkpath:
        records.append(_record(b"linkpath", linkpath))
    if size > _MAX_BIG:
        records.append(_record(b"size", b"%d" % size))
    if uid > _MAX_ID:
        records.append(_record(b"uid", b"%d" % uid))
    if gid > _MAX_ID:
        records.append(_record(b"gid", b"%d" % gid))
    whole = int(mtime)
    if pax:
        records.extend([_record(k, v) for k, v in pax.items()])
    if (not pax or b"mtime" not in pax) and (mtime != whole or not 0 <= whole <= _MAX_BIG):
        records.append(_record(b"mtime", repr(mtime).encode() if mtime != whole else b"%d" % whole))
    body = b"".join(records)
    size_field = b"%011o\0" % len(body)
    x_sum = _X_SUM + bytesum(size_field)
    head = (path[:100].ljust(100, b"\0")
            + b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, _fits(uid, _MAX_ID), _fits(gid, _MAX_ID),
                                                     _fits(size, _MAX_BIG), _fits(whole, _MAX_BIG)))
    link = linkpath[:100]
    main_sum = bytesum(head) + typeflag[0] + bytesum(link) + _MAIN_TAIL_SUM
    return b"".join((_X_HEAD, size_field, _X_MTIME, b"%06o\0 " % x_sum, _X_TAIL,
                     body, _ZEROS[:-len(body) % BLOCK],
                     head, b"%06o\0 " % main_sum, typeflag, link.ljust(100, b"\0"), _MAGIC, _ZEROS[:BLOCK - 265]))


class PaxEmitter:
    """Writes the stream to GNU tar's stdin: small pieces batched, large ones written as they are."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._fd = pipe.fileno()
        self._out: list = []
        self._size = 0

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def put(self, piece) -> None:
        """Append a piece (bytes-like) of the stream."""
        n = len(piece)
        if n >= BATCH:
            if self._out:
                self.flush()
            self._write(piece)
            return
        self._out.append(piece)
        self._size += n
        if self._size >= BATCH:
            self.flush()

    def header(self, *, name: str, typeflag: bytes, mode: int, uid: int, gid: int, mtime: float, size: int = 0,
               linkname: str = "", pax: dict[bytes, bytes] | None = None) -> None:
        self.put(member_header(_enc(name), mode, uid, gid, size, mtime, typeflag, _enc(linkname), pax))

    def pad(self, length: int) -> None:
        if length % BLOCK:
            self.put(_ZEROS[:BLOCK - length % BLOCK])

    def flush(self) -> None:
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out = []
            self._size = 0
            self._write(data)

    def close(self) -> None:
        self.put(_ZERO_END)  # end-of-archive marker
        self.flush()
        self.pipe.close()


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def sparse_map(chunks: list[tuple[int, int]]) -> bytes:
    """GNU sparse 1.0 map block(s): entry count, then offset/length pairs, one number a line, padded."""
    text = f"{len(chunks)}\n".encode() + b"".join(b"%d\n%d\n" % (o, n) for o, n in chunks)
    return text + bytes(-len(text) % BLOCK)
