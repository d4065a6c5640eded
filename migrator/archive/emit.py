"""The members restore accepted, re-written as a pax stream for `tar --extract`: built from checked fields only.

Owns the bytes GNU tar's extractor reads. Every member gets a pax extended header that carries its path
(and link target) verbatim, so ustar's name fields are never split or truncated in ways two parsers
could read differently; numbers that do not fit ustar fields go to pax as well. Carried over from the
original member: xattrs and ACLs (SCHILY.*) and exact atime/mtime strings; nothing else. Sparse files are
written as GNU sparse 1.0 (map, then data chunks), so holes stay holes. Hand-built rather than
tarfile.TarInfo.tobuf, which dominated restore time on trees of many small files.
"""

from __future__ import annotations

import re

from migrator.archive.tarstream import BLOCK, padded

REGULAR, HARDLINK, SYMLINK, DIRECTORY = b"0", b"1", b"2", b"5"
PAX_KEEP_PREFIXES = ("SCHILY.xattr.", "SCHILY.acl.")
PAX_TIME_KEYS = ("mtime", "atime")
_PAX_TIME = re.compile(r"-?[0-9]{1,19}(\.[0-9]{1,9})?\Z")
# Largest values the ustar octal fields hold (uid/gid: 7 digits, size/mtime: 11 digits).
_MAX_ID = 8**7 - 1
_MAX_BIG = 8**11 - 1
_PAX_HEADER_MODE = 0o644
_ZERO_END = bytes(2 * BLOCK)


def carried_pax(pax: dict[str, str]) -> dict[str, str]:
    """The pax records of an archived member that restore passes on to GNU tar."""
    kept = {k: v for k, v in pax.items() if k.startswith(PAX_KEEP_PREFIXES)}
    for key in PAX_TIME_KEYS:
        value = pax.get(key)
        if value is not None and _PAX_TIME.match(value):
            kept[key] = value  # exact nanoseconds (a float would round them)
    return kept


def _record(key: bytes, value: bytes) -> bytes:
    payload = b" " + key + b"=" + value + b"\n"
    digits = len(str(len(payload)))
    while len(str(len(payload) + digits)) > digits:  # the length counts its own digits
        digits += 1
    return str(len(payload) + digits).encode() + payload


def _octal(value: int, width: int, limit: int) -> bytes:
    return b"%0*o\0" % (width - 1, value) if 0 <= value <= limit else b"0" * (width - 1) + b"\0"


def _header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
            linkname: bytes = b"") -> bytes:
    h = bytearray(BLOCK)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = b"%07o\0" % (mode & 0o7777)
    h[108:116] = _octal(uid, 8, _MAX_ID)
    h[116:124] = _octal(gid, 8, _MAX_ID)
    h[124:136] = _octal(size, 12, _MAX_BIG)
    h[136:148] = _octal(mtime, 12, _MAX_BIG)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:257] = linkname[:100].ljust(100, b"\0")
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class PaxEmitter:
    """Writes members to GNU tar's stdin (a buffered pipe)."""

    def __init__(self, pipe):
        self.pipe = pipe

    def header(self, *, name: str, typeflag: bytes, mode: int, uid: int, gid: int, mtime: float, size: int = 0,
               linkname: str = "", pax: dict[str, str] | None = None) -> None:
        path = _enc(name)
        records = [_record(b"path", path)]
        if linkname:
            records.append(_record(b"linkpath", _enc(linkname)))
        if size > _MAX_BIG:
            records.append(_record(b"size", b"%d" % size))
        if uid > _MAX_ID:
            records.append(_record(b"uid", b"%d" % uid))
        if gid > _MAX_ID:
            records.append(_record(b"gid", b"%d" % gid))
        whole = int(mtime)
        pax = pax or {}
        if "mtime" not in pax and (mtime != whole or not 0 <= whole <= _MAX_BIG):
            records.append(_record(b"mtime", repr(mtime).encode() if mtime != whole else b"%d" % whole))
        records.extend(_record(_enc(k), _enc(v)) for k, v in pax.items())
        body = b"".join(records)
        ext = _header(b"PaxHeaders/" + path.rsplit(b"/", 1)[-1][:80], _PAX_HEADER_MODE, 0, 0, len(body),
                      max(whole, 0), b"x")
        main = _header(path, mode, uid, gid, size, whole, typeflag, _enc(linkname))
        self.pipe.write(b"".join((ext, body, bytes(padded(len(body)) - len(body)), main)))

    def data(self, raw, offset: int, length: int, chunk: int, on_short) -> None:
        """Copy `length` bytes of a member from `raw` (tarfile's member reader) starting at `offset`."""
        raw.seek(offset)
        while length:
            piece = raw.read(min(length, chunk))
            if not piece:
                raise on_short()
            self.pipe.write(piece)
            length -= len(piece)

    def pad(self, length: int) -> None:
        if length % BLOCK:
            self.pipe.write(bytes(BLOCK - length % BLOCK))

    def close(self) -> None:
        self.pipe.write(_ZERO_END)  # end-of-archive marker
        self.pipe.close()


def sparse_map(chunks: list[tuple[int, int]]) -> bytes:
    """GNU sparse 1.0 map block(s): entry count, then offset/length pairs, one number a line, padded."""
    text = f"{len(chunks)}\n".encode() + b"".join(b"%d\n%d\n" % (o, n) for o, n in chunks)
    return text + bytes(padded(len(text)) - len(text))
