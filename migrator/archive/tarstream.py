"""The tar stream as capture sees it: the delete-list member, and a walker over GNU tar's output.

The walker refuses what restore would refuse and drops device nodes and FIFOs, so no snapshot is
unrestorable; it also feeds phase 1's block digests (patch.py). Formats: docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from migrator.archive.policy import Refused, member_parts, symlink_refusal
from migrator.archive.tarparse import ACL_PREFIX, BLOCK, BLOCKDEV, CHARDEV, FIFO, REGULAR, REGULAR_ALIASES, SYMLINK
from migrator.archive.tarparse import number as _number
from migrator.archive.tarparse import pax_records as _pax_records
from migrator.errors import ArchiveError

DELETED_MEMBER = ".migrator-deleted"
DELETED_MARK = "MIGRATOR.deleted-list"  # pax vendor keyword (POSIX allows VENDOR.keyword)
DELETED_MARK_VALUE = "1"
# Typeflags of members restore refuses, which capture therefore leaves out: char dev, block dev, FIFO.
DROPPED_TYPES = {CHARDEV: "character device", BLOCKDEV: "block device", FIFO: "FIFO"}
# Typeflags that describe the next member instead of being one: pax extended/global, GNU long names.
META_TYPES = {b"x", b"g", b"L", b"K"}
REGULAR_TYPES = {REGULAR, *REGULAR_ALIASES}
# pax records that make a member more than its bytes (sparse map, xattrs, ACLs): `on_data` skips those.
NOT_PLAIN = (b"GNU.sparse.", b"SCHILY.")
# A pax header block over this size is not something GNU tar writes for one file (xattrs are capped at
# 64 KiB by the kernel); refusing it keeps a walker bug from buffering the whole stream.
MAX_META = 16 * 1024 * 1024


class DataSink(Protocol):
    def update(self, data) -> None: ...
    def close(self) -> None: ...


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def special_header(name: str, size: int, pax: dict[str, str]) -> bytes:
    """The pax + ustar header of a special member (an instruction to restore, marked by its MIGRATOR.*
    pax keywords) of `size` data bytes; capture writes these before GNU tar's stream."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(time.time())
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def deleted_member(paths: Iterable[str]) -> bytes:
    """Header and data blocks of the delete list, to be written before GNU tar's stream."""
    data = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
    header = special_header(DELETED_MEMBER, len(data), {DELETED_MARK: DELETED_MARK_VALUE})
    return header + data + b"\0" * (padded(len(data)) - len(data))


class CaptureWalker:
    """Feed it GNU tar's output in order; `feed` returns the segments to pass on (in order).

    Per member it looks at little: the ustar magic (a cheap guard against losing sync), typeflag and
    size; pax records are parsed only when they may matter (a `size`/`path` keyword is present) and
    names only when someone needs them (on_member, a symlink, a dropped member). Header checksums are
    verified before any decision that changes the stream or fails the capture.
    """

    _HEADER, _META, _DATA, _TAIL = range(4)

    def __init__(self, on_member: Callable[[str], None] | None = None,
                 on_data: Callable[[str, int], DataSink | None] | None = None):
        self.on_member = on_member
        self.on_data = on_data  # (path, size) -> a sink for the member's data, or None
        self._sink: DataSink | None = None
        self._sink_left = 0
        self.files = 0
        self.acls = 0  # members carrying POSIX ACLs: restore asks tar for --acls only when there are any
        self.skipped: list[str] = []
        self._state = self._HEADER
        self._unit = bytearray()  # a header block or meta data split across chunks
        self._need = BLOCK
        self._meta_type = b""
        self._meta_size = 0
        self._pax = b""  # raw records of the pending pax extended header(s)
        self._longname: bytes | None = None
        self._longlink: bytes | None = None
        self._data_left = 0
        self._dropping = False
        self._in_group = False  # inside the headers of a member not yet decided (kept or dropped)
        self._carry: list[bytes] = []  # bytes of that member from earlier chunks

    def feed(self, chunk: bytes) -> list[bytes | memoryview]:
        n = len(chunk)
        out: list[bytes | memoryview] = []
        run = 0  # start of this chunk's bytes not yet handed out (kept) or skipped (dropped)
        group_start = 0 if self._in_group else -1
        i = 0
        while i < n:
            state = self._state
            if state == self._DATA:
                k = min(self._data_left, n - i)
                if self._sink is not None:
                    self._to_sink(chunk, i, k)
                if self._dropping:
                    if run < i:
                        out.append(memoryview(chunk)[run:i])
                    run = i + k
                i += k
                self._data_left -= k
                if self._data_left == 0:
                    self._state = self._HEADER
                    self._dropping = False
                continue
            if state == self._TAIL:
                break
            if not self._in_group:  # a member's first header starts here
                self._in_group = True
                group_start = i
            need = self._need
            if not self._unit and i + need <= n:  # fast path: the whole unit is in this chunk
                unit = chunk[i:i + need]
                i += need
            else:
                k = min(need - len(self._unit), n - i)
                self._unit += chunk[i:i + k]
                i += k
                if len(self._unit) < need:
                    continue
                unit, self._unit = bytes(self._unit), bytearray()
            if state == self._META:
                self._end_meta(unit)
                continue
            keep = self._end_header(unit)
            if keep is None:  # an extended header: the member it belongs to is still undecided
                continue
            if keep:
                out.extend(self._carry)
            else:
                if 0 <= group_start and run < group_start:
                    out.append(memoryview(chunk)[run:group_start])
                run = i
                self._dropping = self._state == self._DATA  # a dropped member's data (if any) goes too
            self._carry = []
            self._in_group = False
            group_start = -1
        if self._in_group:  # an undecided member continues in the next chunk: hold its bytes back
            start = max(group_start, 0)
            if run < start:
                out.append(memoryview(chunk)[run:start])
            self._carry.append(chunk[max(start, run):])
        elif run == 0:
            out.append(chunk)
        elif run < n:
            out.append(memoryview(chunk)[run:])
        return out

    def _to_sink(self, chunk: bytes, i: int, k: int) -> None:
        take = min(k, self._sink_left)  # the member's bytes, not its padding
        if take:
            self._sink.update(memoryview(chunk)[i:i + take])
            self._sink_left -= take
        if not self._sink_left:
            sink, self._sink = self._sink, None
            sink.close()

    def finish(self) -> None:
        if self._state != self._TAIL:
            raise ArchiveError("tar's output ended without an end-of-archive marker",
                               hint="tar was probably killed; retry the operation")

    def _end_meta(self, data: bytes) -> None:
        body = data[:self._meta_size]
        if self._meta_type == b"x":
            self._pax += body  # records are self-delimiting: several headers concatenate
        elif self._meta_type == b"L":
            self._longname = body.rstrip(b"\0")
        elif self._meta_type == b"K":
            self._longlink = body.rstrip(b"\0")
        self._state = self._HEADER
        self._need = BLOCK

    def _end_header(self, block: bytes) -> bool | None:
        """Parse one header block: None for an extended header (member still undecided), else whether the
        member is kept."""
        if block[257:262] != b"ustar":
            if block.count(0) == BLOCK:
                self._state = self._TAIL  # end-of-archive: the rest is zero padding
                return True
            raise ArchiveError("lost track of member boundaries in tar's output (no ustar header)")
        typeflag = block[156:157]
        try:  # GNU tar writes 11 octal digits and a NUL; anything else takes the general path
            size = int(block[124:135], 8)
        except ValueError:
            size = _number(block[124:136])
        if typeflag in META_TYPES:
            if size > MAX_META:
                raise ArchiveError(f"tar wrote a {size}-byte extended header; refusing to buffer it")
            self._meta_type = typeflag
            self._meta_size = size
            if size:
                self._state = self._META
                self._need = padded(size)
            return None
        pax, self._pax = self._pax, b""
        if ACL_PREFIX in pax:  # a name containing it only over-counts: restore then passes --acls
            self.acls += 1
        longname, longlink, self._longname, self._longlink = self._longname, self._longlink, None, None
        records = _pax_records(pax) if pax and (b"size=" in pax or b"path=" in pax or b"name=" in pax) else {}
        if b"size" in records:
            size = int(records[b"size"])
        data = padded(size) if size > 0 else 0
        if typeflag in DROPPED_TYPES:
            _verify_checksum(block)
            name = _name(block, records, longname)
            self.skipped.append(f"{name} ({DROPPED_TYPES[typeflag]})")
            self._enter_data(data)
            return False
        if typeflag == SYMLINK or self.on_member is not None or self.on_data is not None:
            name = _name(block, records, longname)
            try:
                parts = member_parts(name)
            except Refused as exc:
                _verify_checksum(block)
                raise ArchiveError(f"tar produced a member restore would refuse: {name!r}: {exc}") from None
            if typeflag == SYMLINK:
                raw = records.get(b"linkpath") or longlink or block[157:257].split(b"\0", 1)[0]
                reason = symlink_refusal(parts, raw.decode("utf-8", "surrogateescape"))
                if reason:
                    _verify_checksum(block)
                    raise ArchiveError(f"cannot archive the symlink {name!r}: {reason}; restore would refuse it",
                                       hint="make the link relative and inside the data directory, then retry")
            if self.on_member is not None:
                self.on_member("/".join(parts) if parts else ".")
            if (self.on_data is not None and size > 0 and typeflag in REGULAR_TYPES
                    and not any(mark in pax for mark in NOT_PLAIN)):
                self._sink = self.on_data("/".join(parts), size)
                self._sink_left = size
        self.files += 1
        self._enter_data(data)
        return True

    def _enter_data(self, data: int) -> None:
        if data:
            self._state = self._DATA
            self._data_left = data
        else:
            self._state = self._HEADER
        self._need = BLOCK


def _verify_checksum(block: bytes) -> None:
    if _number(block[148:156]) != sum(block) - sum(block[148:156]) + 8 * 0x20:
        raise ArchiveError("lost track of member boundaries in tar's output (bad header checksum)")


def _name(block: bytes, records: dict[bytes, bytes], longname: bytes | None) -> str:
    raw = records.get(b"GNU.sparse.name") or records.get(b"path") or longname
    if raw is None:
        raw = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            raw = prefix + b"/" + raw
    return raw.decode("utf-8", "surrogateescape")
