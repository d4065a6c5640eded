"""A strict, forward-only parser of the tar streams restore accepts: POSIX pax, as GNU tar writes it.

The stream is untrusted: anything beyond what capture writes is refused, not guessed at (UnsupportedTar,
CorruptTar). Not tarfile, for speed and zero-copy data. Accepted subset: docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator

BLOCK = 512
USTAR = b"ustar\x0000"  # POSIX magic + version: what GNU tar --format=posix and tarfile write
REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
PAX = b"x"
ACL_PREFIX = b"SCHILY.acl."  # pax keywords of GNU tar --acls (access and default ACL)
# Old-style regular file ('\0') and contiguous file ('7') are regular files to every extractor.
REGULAR_ALIASES = {b"\0": REGULAR, b"7": REGULAR}
_MEMBER_TYPES = {REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO}
_META_NAMES = {b"g": "a global pax header", b"L": "a GNU long name", b"K": "a GNU long link name",
               b"S": "an old GNU sparse member", b"D": "a GNU dump directory", b"M": "a multi-volume member",
               b"V": "a volume label", b"x": "two pax headers for one member"}
# One pax header holds a member's names, times, xattrs and ACLs (the kernel caps one xattr at 64 KiB);
# more than this is not a member GNU tar wrote, and refusing it bounds what we buffer.
MAX_PAX = 16 * 1024 * 1024
# A sparse map is buffered in full (it must be re-emitted before the data). 4 MiB of map text is
# ~200 000 extents; beyond that it is not a file capture wrote, and memory stays bounded.
MAX_SPARSE_MAP = 4 * 1024 * 1024
_ZERO_BLOCK = bytes(BLOCK)
# A pax time as GNU tar and tarfile write it: seconds, optionally a fraction (at most nanoseconds).
_PAX_TIME = re.compile(rb"-?[0-9]{1,19}(\.[0-9]{1,9})?\Z")
_SPARSE_KEYS = (b"GNU.sparse.major", b"GNU.sparse.minor", b"GNU.sparse.name", b"GNU.sparse.realsize")


class CorruptTar(Exception):
    """The tar framing is broken: the stream is damaged (or was never a tar stream)."""


class UnsupportedTar(Exception):
    """A well-formed header restore does not accept. `name` is the member's name when it is known."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def number(field: bytes) -> int:
    """A numeric ustar field: octal digits (NUL/space terminated), or GNU base-256 for large values."""
    try:  # the common case, digits then NUL/space padding, in one call
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        pass
    if field[:1] and field[0] & 0x80:  # GNU base-256 for values that do not fit the octal field
        value = int.from_bytes(field[1:], "big")
        return -((1 << (8 * len(field[1:]))) - value) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    return int(digits, 8) if digits else 0


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header ("LEN key=value\\n", LEN counting the whole record).

    Stops at a NUL where a record would start (padding); raises ValueError on a malformed record."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        stop = pos + length
        if length <= 0 or stop > end or data[stop - 1] != 0x0A:
            raise ValueError("bad pax record length")
        key, eq, value = data[space + 1:stop - 1].partition(b"=")
        if not eq or not key:
            raise ValueError("pax record without a keyword")
        records[key] = value
        pos = stop
    return records


def bytesum(data: bytes) -> int:
    """sum(data) for up to 256 bytes, 50x faster than sum(): adler32's low half is 1 + the byte sum
    mod 65521, and 256 bytes sum to at most 65280, so it is exact there."""
    return (zlib.adler32(data) & 0xFFFF) - 1


def checksum_ok(block: bytes) -> bool:
    """The ustar header checksum: unsigned byte sum with the checksum field counted as spaces (the block
    summed in two 256-byte halves, each within `bytesum`'s exact range)."""
    try:
        stored = number(block[148:156])
    except ValueError:
        return False
    return stored == bytesum(block[:256]) + bytesum(block[256:]) - bytesum(block[148:156]) + 8 * 0x20


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Member:
    """One member as the stream describes it. `name`/`linkname` are as archived (the caller checks them);
    `type` is a ustar typeflag (regular-file aliases folded into REGULAR); `size` is the file's size and
    `stored` the bytes of data that follow in the stream (they differ for a sparse file, whose `sparse`
    lists (offset, length) extents in stream order); `pax` holds every pax record, raw."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "mtime", "size", "stored", "linkname", "pax", "sparse")

    def __init__(self, name: str, type_: bytes, mode: int, uid: int, gid: int, mtime: float, size: int,
                 stored: int, linkname: str, pax: dict[bytes, bytes], sparse: list[tuple[int, int]] | None):
        self.name = name
        self.type = type_
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.size = size
        self.stored = stored
        self.linkname = linkname
        self.pax = pax
        self.sparse = sparse


class TarParser:
    """Members of a tar stream, in order. `read_chunk()` returns the next piece of the stream (b"" at
    its end). After `next()` returned a member, its data may be taken with `pieces`/`read` (or left:
    the next `next()` skips whatever was not taken, and the padding)."""

    def __init__(self, read_chunk: Callable[[], bytes]):
        self._read_chunk = read_chunk
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._left = 0  # data bytes of the current member not taken yet
        self._pad = 0  # padding after them
        self.done = False

    # -- raw stream ------------------------------------------------------------------------------------

    def _fill(self) -> bool:
        chunk = self._read_chunk()
        if not chunk:
            return False
        self._buf = chunk
        self._view = memoryview(chunk)
        self._pos = 0
        return True

    def _take(self, n: int, what: str) -> bytes:
        """Exactly n bytes (copied), else CorruptTar."""
        pos = self._pos
        if pos + n <= len(self._buf):
            self._pos = pos + n
            return self._buf[pos:pos + n]
        parts = [self._buf[pos:]]
        got = len(parts[0])
        while got < n:
            if not self._fill():
                if got == 0 and what == "header":
                    raise CorruptTar("the tar stream ends without its end-of-archive marker")
                raise CorruptTar(f"the tar stream ends inside a {what}")
            k = min(n - got, len(self._buf))
            parts.append(self._buf[:k])
            self._pos = k
            got += k
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            avail = len(self._buf) - self._pos
            if avail >= n:
                self._pos += n
                return
            n -= avail
            self._pos = len(self._buf)
            if not self._fill():
                raise CorruptTar("the tar stream ends inside a member")

    def pieces(self, n: int) -> Iterator[memoryview]:
        """The next n data bytes of the current member, as memoryview pieces of the stream's chunks."""
        if n > self._left:
            raise CorruptTar("a member's data is read beyond its size")
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise CorruptTar("the tar stream ends inside a member")
                avail = len(self._buf)
            k = avail if avail < n else n
            pos = self._pos
            self._pos = pos + k
            self._left -= k
            n -= k
            yield self._view[pos:pos + k]

    def read(self, n: int) -> bytes:
        """The next n data bytes of the current member, copied into one bytes object."""
        if n > self._left:
            raise CorruptTar("a member's data is read beyond its size")
        self._left -= n
        return self._take(n, "member")

    # -- headers ---------------------------------------------------------------------------------------

    def _header(self) -> bytes | None:
        block = self._take(BLOCK, "header")
        if block[257:265] != USTAR:
            if block == _ZERO_BLOCK:
                return None
            raise CorruptTar("the tar stream has a damaged header (not a ustar header)")
        if not checksum_ok(block):
            raise CorruptTar("the tar stream has a damaged header (bad checksum)")
        return block

    def next(self) -> Member | None:
        """The next member, or None after the end-of-archive marker (the rest of the stream checked)."""
        if self.done:
            return None
        if self._left or self._pad:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0
        block = self._header()
        if block is None:
            self._finish()
            return None
        typeflag = block[156:157]
        pax: dict[bytes, bytes] = {}
        try:
            if typeflag == PAX:
                size = number(block[124:136])
                if not 0 <= size <= MAX_PAX:
                    raise UnsupportedTar(f"a pax header of {size} bytes")
                data = self._take(size, "pax header")
                self._skip(-size % BLOCK)
                try:
                    pax = pax_records(data)
                except ValueError as exc:
                    raise CorruptTar(f"the tar stream has a damaged pax header: {exc}") from None
                block = self._header()
                if block is None:
                    raise CorruptTar("the tar stream has a pax header without its member")
                typeflag = block[156:157]
            return self._member(block, typeflag, pax)
        except ValueError as exc:  # a numeric field that is not a number
            raise CorruptTar(f"the tar stream has a damaged header: {exc}") from None

    def _member(self, block: bytes, typeflag: bytes, pax: dict[bytes, bytes]) -> Member:
        raw = pax.get(b"path")
        if raw is None:
            raw = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                raw = prefix + b"/" + raw
        name = _text(raw)
        if typeflag == b"\0" and name.endswith("/"):
            typeflag = DIRECTORY  # pre-POSIX directory (as tarfile reads it)
        typeflag = REGULAR_ALIASES.get(typeflag, typeflag)
        if typeflag not in _MEMBER_TYPES:
            what = _META_NAMES.get(typeflag, f"member type {typeflag!r}")
            raise UnsupportedTar(f"{what} is not supported", name)
        size = int(pax[b"size"]) if b"size" in pax else number(block[124:136])
        uid = int(pax[b"uid"]) if b"uid" in pax else number(block[108:116])
        gid = int(pax[b"gid"]) if b"gid" in pax else number(block[116:124])
        mtime_raw = pax.get(b"mtime")
        if mtime_raw is None:
            mtime: float = number(block[136:148])
        elif _PAX_TIME.match(mtime_raw):
            mtime = float(mtime_raw)
        else:
            raise CorruptTar(f"member {_text(raw)!r} has a damaged pax mtime {mtime_raw[:40]!r}")
        link = pax.get(b"linkpath")
        if link is None:
            link = block[157:257].split(b"\0", 1)[0]
        if size < 0:
            raise CorruptTar(f"member {name!r} has a negative size")
        stored, sparse = size, None
        if typeflag != REGULAR and size:
            raise UnsupportedTar(f"a {typeflag.decode()!r} member with {size} bytes of data", name)
        if b"GNU.sparse.major" in pax or b"GNU.sparse.name" in pax or b"GNU.sparse.size" in pax \
                or b"GNU.sparse.map" in pax:
            name, size, sparse = self._sparse_10(name, typeflag, pax, stored)
            stored = sum(n for _, n in sparse)
        else:
            self._left, self._pad = size, -size % BLOCK
        return Member(name, typeflag, number(block[100:108]), uid, gid, mtime, size, stored, _text(link), pax,
                      sparse)

    def _sparse_10(self, name: str, typeflag: bytes, pax: dict[bytes, bytes],
                   stored: int) -> tuple[str, int, list[tuple[int, int]]]:
        """GNU sparse 1.0: the real name and size from pax, the map read off the start of the data."""
        if typeflag != REGULAR or any(k not in pax for k in _SPARSE_KEYS) \
                or (pax[b"GNU.sparse.major"], pax[b"GNU.sparse.minor"]) != (b"1", b"0"):
            raise UnsupportedTar("a sparse format other than GNU 1.0 is not supported", name)
        real_name = _text(pax[b"GNU.sparse.name"])
        realsize = int(pax[b"GNU.sparse.realsize"])
        self._left, self._pad = stored, -stored % BLOCK
        numbers: list[int] = []
        partial = b""
        want, taken = 1, 0
        while len(numbers) < want:  # the map: count, then offset/length pairs, one number a line
            if taken >= MAX_SPARSE_MAP:
                raise UnsupportedTar(f"a sparse map larger than {MAX_SPARSE_MAP} bytes", real_name)
            if self._left < BLOCK:
                raise CorruptTar(f"the sparse map of {real_name!r} runs past its data")
            lines = (partial + self.read(BLOCK)).split(b"\n")
            taken += BLOCK
            partial = lines.pop()  # an unfinished number (or the map's zero padding)
            for x in lines:
                if len(numbers) >= want:
                    break  # the rest of the block is padding
                numbers.append(int(x))
                if len(numbers) == 1:
                    want = 1 + 2 * numbers[0]
        count = numbers[0]
        if count < 0 or any(x < 0 for x in numbers[1:want]):
            raise CorruptTar(f"the sparse map of {real_name!r} has a negative number")
        extents = list(zip(numbers[1:want:2], numbers[2:want:2], strict=True))
        if sum(n for _, n in extents) != self._left:
            raise UnsupportedTar("its sparse map does not match its data", real_name)
        self._pad = -stored % BLOCK
        return real_name, realsize, extents

    def _finish(self) -> None:
        """After the first zero block: only zeros may follow, and at least one more zero block."""
        zeros = BLOCK
        tail = self._view[self._pos:]
        while True:
            if tail.tobytes().count(0) != len(tail):
                raise CorruptTar("the tar stream has a damaged header or data after its end")
            zeros += len(tail)
            if not self._fill():
                break
            tail = self._view
        self._pos = len(self._buf)
        if zeros < 2 * BLOCK:
            raise CorruptTar("the tar stream ends without its end-of-archive marker")
        self.done = True
