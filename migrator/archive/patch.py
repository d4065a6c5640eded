"""Block patches: phase-1 block digests, patch members for changed big files, applying them on restore.

A changed big file costs its changed blocks, not its size. Digests are of the bytes that went into the
archive, not of the file on disk: exactly what restore holds. Member format and eligibility:
docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from migrator.archive.policy import Refused, member_parts
from migrator.archive.tarstream import DataSink, padded, special_header
from migrator.archive.treestate import BLOCK_SIZE, DIGEST_SIZE, TreeState
from migrator.errors import ArchiveError, IntegrityError

# BLOCK_SIZE (treestate.py) is 64 KiB: a database writes pages of 8 KiB (PostgreSQL) or 16 KiB (InnoDB)
# scattered over its files, and an incremental snapshot sends every block a page write touched. With
# 1 MiB blocks, 1 % of a database file rewritten in scattered pages touched most of its blocks; 64 KiB
# blocks send ~16x less for the same writes. The digest state is 256 bytes per MiB (51 MB for a 200 GB
# volume, stored with each snapshot): small next to any delta worth taking.
# Files below 2 MiB are sent whole when they change: the per-file bookkeeping (a state line, a Python
# read with writers stopped) is not worth it.
MIN_SIZE = 2 * 1024 * 1024
# xxh3-128: a block digest only tells whether a block changed between phase 1 and phase 2 on this
# machine; it never authenticates data (objects carry sha256, checked on restore). 128 bits make an
# accidental match 2**-128 per block; only the service writing the data could craft one, and only against
# its own snapshot. Speed is what matters here: a changed big file is re-read and hashed while its
# writers are stopped, and xxh3 is memory-bound (~100 GB/s on 1 MiB blocks, sha256 with SHA-NI 2.0).
DIGEST = xxhash.xxh3_128
# Beyond half the file changed, the whole file costs about the same to send and is simpler to apply.
MAX_CHANGED = 0.5
READ_CHUNK = 1024 * 1024  # a whole number of blocks
# A file is hashed in parallel slices of at least this many blocks each (fewer: one thread does it).
PARALLEL_MIN_BLOCKS = 128

PATCH_MEMBER = ".migrator-patch"
PATCH_MARK = "MIGRATOR.patch"  # pax vendor keyword; value = format version
PATCH_VERSION = "1"
PATH_KEY = "MIGRATOR.patch.path"  # the patched file, relative to the archive root
SIZE_KEY = "MIGRATOR.patch.size"  # its size after the patch
BASE_KEY = "MIGRATOR.patch.base-size"  # its size as phase 1 archived it: restore checks it is what is there
MODE_KEY, UID_KEY, GID_KEY = "MIGRATOR.patch.mode", "MIGRATOR.patch.uid", "MIGRATOR.patch.gid"
MTIME_KEY = "MIGRATOR.patch.mtime-ns"
EXTENT = struct.Struct(">QQ")
# File sizes and offsets restore accepts: what a signed 64-bit off_t holds.
MAX_FILE = (1 << 63) - 1
_HOSTILE_HINT = "the archive was refused before anything reached the data directory; pick another snapshot"


# -- phase 1: digests of what was archived ------------------------------------------------------------------


class BlockDigester:
    """Fed a member's data in order (any chunking); on close hands `size` and the concatenated block
    digests to `done`."""

    def __init__(self, size: int, done: Callable[[int, bytes], None]):
        self.size = size
        self.done = done
        self.digests = bytearray()
        self._hash = DIGEST()
        self._filled = 0

    def update(self, data) -> None:
        view = memoryview(data)
        while view:
            part = view[:BLOCK_SIZE - self._filled]
            self._hash.update(part)
            self._filled += len(part)
            view = view[len(part):]
            if self._filled == BLOCK_SIZE:
                self.digests += self._hash.digest()
                self._hash = DIGEST()
                self._filled = 0

    def close(self) -> None:
        if self._filled:
            self.digests += self._hash.digest()
        self.done(self.size, bytes(self.digests))


def recorder(state: TreeState) -> Callable[[str, int], DataSink | None]:
    """The walker's `on_data` for phase 1: digests of every member big enough, kept in `state.blocks`."""

    def on_data(path: str, size: int) -> DataSink | None:
        if size < MIN_SIZE:
            return None
        return BlockDigester(size, lambda n, digests: state.note_blocks(path, n, digests))

    return on_data


# -- phase 2: which changed files become patches ----------------------------------------------------------


@dataclass
class Patch:
    path: str
    size: int  # new size
    base_size: int  # size phase 1 archived
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ino: int
    dev: int
    extents: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), sorted, merged
    base_digests: bytes = b""  # the base's block digests (of `base_size` bytes)

    @property
    def changed(self) -> int:
        return sum(n for _, n in self.extents)

    @property
    def data_size(self) -> int:
        return self.changed + EXTENT.size * len(self.extents)


def plan(root: Path, before: TreeState, after: TreeState, changed: list[str]) -> tuple[list[Patch], list[str]]:
    """Split phase 2's changed paths into patches and the paths tar archives whole (in their order)."""
    patches: list[Patch] = []
    whole: list[str] = []
    for path in changed:
        rec = before.blocks.get(path)
        p = _plan_one(root, path, before.entries.get(path), after.entries.get(path), rec) if rec else None
        if p is None:
            whole.append(path)
        else:
            patches.append(p)
    return patches, whole


def _plan_one(root: Path, path: str, prev, now, rec: tuple[int, bytes]) -> Patch | None:
    base_size, digests = rec
    if prev is None or now is None or prev.type != "f" or now.type != "f":
        return None
    # Another inode at the path may be patched only if the base's file had no other name: restore then
    # holds it alone, and writing into it cannot reach a hard link that still names the old content.
    if ((prev.ino, prev.dev) != (now.ino, now.dev) and prev.nlink != 1) or now.nlink != 1 or now.size < 1:
        return None
    if len(digests) != DIGEST_SIZE * -(-base_size // BLOCK_SIZE):
        return None
    try:
        fd = os.open(os.path.join(root, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # gone or not a file any more: tar will say what it is
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_dev) != (now.ino, now.dev) or st.st_nlink != 1
                or st.st_size != now.size or st.st_blocks * 512 < st.st_size or _has_xattrs(fd)):
            return None  # sparse (holes), xattrs/ACLs, hard links: tar keeps those exact
        extents = _changed_extents(fd, st.st_size, digests)
    finally:
        os.close(fd)
    if extents is None:
        return None
    return Patch(path=path, size=st.st_size, base_size=base_size, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                 gid=st.st_gid, mtime_ns=st.st_mtime_ns, ino=st.st_ino, dev=st.st_dev, extents=extents,
                 base_digests=digests)


def _has_xattrs(fd: int) -> bool:
    try:
        return bool(os.listxattr(fd))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        return True  # unknown: be safe, tar archives it whole


def _changed_blocks(fd: int, size: int, digests: bytes, first: int, stop: int) -> list[int] | None:
    """Indices in [first, stop) of the blocks whose digest differs or that are new; None on a short read.
    Reads READ_CHUNK at a time (a whole number of blocks); pread releases the GIL, so two of these read
    on two cores."""
    known = len(digests) // DIGEST_SIZE
    per_read = READ_CHUNK // BLOCK_SIZE
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    digest = xxhash.xxh3_128_digest
    changed = []
    for index in range(first, stop, per_read):
        last = min(stop, index + per_read)
        offset = index * BLOCK_SIZE
        want = min((last - index) * BLOCK_SIZE, size - offset)
        got = 0
        while got < want and (n := os.preadv(fd, [view[got:want]], offset + got)):
            got += n
        if got != want:
            return None
        for i in range(index, last):
            start = (i - index) * BLOCK_SIZE
            block = view[start:min(start + BLOCK_SIZE, want)]
            if i >= known or digest(block) != digests[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]:
                changed.append(i)
    return changed


def _changed_extents(fd: int, size: int, digests: bytes) -> list[tuple[int, int]] | None:
    """Blocks whose digest differs (or that are new), merged into extents; None when too much changed or
    the file did not read back as `size` bytes. The file is read and hashed in as many slices as there are
    CPUs, side by side: this runs while the writers are stopped."""
    count = -(-size // BLOCK_SIZE)
    slices = max(1, min(os.cpu_count() or 1, count // PARALLEL_MIN_BLOCKS))
    bounds = [count * k // slices for k in range(slices + 1)]
    results: list[list[int] | None] = [None] * slices

    def work(k: int) -> None:
        results[k] = _changed_blocks(fd, size, digests, bounds[k], bounds[k + 1])

    helpers = [threading.Thread(target=work, args=(k,), name=f"patch-hash-{k}", daemon=True)
               for k in range(1, slices)]
    for t in helpers:
        t.start()
    work(0)
    for t in helpers:
        t.join()
    if any(r is None for r in results) or os.pread(fd, 1, size):
        return None  # short read, or grew since the scan: the stat we record would not match
    extents: list[tuple[int, int]] = []
    changed = 0
    for index in (i for r in results for i in r):
        offset = index * BLOCK_SIZE
        length = min(BLOCK_SIZE, size - offset)
        changed += length
        if extents and extents[-1][0] + extents[-1][1] == offset:
            extents[-1] = (extents[-1][0], extents[-1][1] + length)
        else:
            extents.append((offset, length))
    if changed > size * MAX_CHANGED:
        return None
    return extents


def members(root: Path, patches: list[Patch], live: bool = False,
            on_blocks: Callable[[str, int, bytes], None] | None = None) -> Iterator[bytes]:
    """The patch members (header, extents, padding), streamed: memory stays one block whatever the sizes.

    With writers stopped (`live=False`) each file is re-opened and must still be the inode, size and
    mtime `plan` saw. `live=True` (an incremental's first pass, writers running): a file that changed,
    shrank or vanished meanwhile is sent as read, zero-filled where it ended; its ctime moved after the
    scan, so the next pass sends it again. `on_blocks(path, size, digests)` gets the block digests of the
    file as restore will hold it after this member: the base's digests with the sent blocks' replaced."""
    for p in patches:
        try:
            fd = os.open(os.path.join(root, p.path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if not live:
                raise ArchiveError(f"cannot read {p.path} again for its patch: {exc.strerror}",
                                   hint="something changed the data directory while its writers were stopped; "
                                        "retry") from None
            fd = -1
        try:
            if not live:
                st = os.fstat(fd)
                if (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) != (p.ino, p.dev, p.size, p.mtime_ns):
                    raise ArchiveError(f"{p.path} changed while its writers were stopped",
                                       hint="stop whatever else writes to the data directory, then retry")
            yield header(p)
            sent: dict[int, bytes] = {}
            for offset, length in p.extents:
                yield EXTENT.pack(offset, length)
                end = offset + length
                while offset < end:  # extents start on block boundaries: one block per step
                    want = min(BLOCK_SIZE, end - offset)
                    block = _read_block(fd, offset, want, p.path, live)
                    sent[offset // BLOCK_SIZE] = DIGEST(block).digest()
                    yield block
                    offset += want
            yield b"\0" * (padded(p.data_size) - p.data_size)
            if on_blocks is not None:
                on_blocks(p.path, p.size, _patched_digests(p, sent))
        finally:
            if fd >= 0:
                os.close(fd)


def _read_block(fd: int, offset: int, want: int, path: str, live: bool) -> bytes:
    """`want` bytes at `offset`; short only at the end of a file that shrank (zero-filled when live)."""
    parts, got = [], 0
    while got < want:
        chunk = os.pread(fd, want - got, offset + got) if fd >= 0 else b""
        if not chunk:
            if not live:
                raise ArchiveError(f"{path} shrank while its writers were stopped", hint="retry")
            parts.append(b"\0" * (want - got))
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _patched_digests(p: Patch, sent: dict[int, bytes]) -> bytes:
    count = -(-p.size // BLOCK_SIZE)
    base = p.base_digests
    return b"".join(sent.get(i) or base[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE] for i in range(count))


def header(p: Patch) -> bytes:
    return special_header(PATCH_MEMBER, p.data_size, {
        PATCH_MARK: PATCH_VERSION, PATH_KEY: p.path, SIZE_KEY: str(p.size), BASE_KEY: str(p.base_size),
        MODE_KEY: str(p.mode), UID_KEY: str(p.uid), GID_KEY: str(p.gid), MTIME_KEY: str(p.mtime_ns)})


# -- restore ------------------------------------------------------------------------------------------------


def _refuse(path: object, reason: str) -> IntegrityError:
    return IntegrityError(f"refusing patch member for {path!r}: {reason}", hint=_HOSTILE_HINT)


def _number(pax: Mapping[str, str], key: str, path: object, low: int, high: int) -> int:
    raw = pax.get(key)
    if raw is None or not raw.isascii() or not raw.lstrip("-").isdigit():
        raise _refuse(path, f"{key} is missing or not a number")
    value = int(raw)
    if not low <= value <= high:
        raise _refuse(path, f"{key}={value} is out of range")
    return value


class Patcher:
    """Applies the patch members of one stream to dest. They must all come before the first ordinary
    member (`member_seen`), and no later member may name a patched path."""

    def __init__(self, dest: Path):
        self.dest = os.fspath(dest)
        self.patched: set[str] = set()
        self.applied = 0
        self._closed = False

    def member_seen(self, name: str) -> None:
        """Call for every ordinary member, before it goes anywhere: refuses one that names a patched path."""
        self._closed = True
        if self.patched:
            try:
                key = "/".join(member_parts(name))
            except Refused:
                return  # the member check refuses it with its own reason
            if key in self.patched:
                raise IntegrityError(f"refusing archive member {name!r}: the same stream patched it",
                                     hint=_HOSTILE_HINT)

    def apply(self, pax: Mapping[str, str], size: int, read: Callable[[int], bytes]) -> None:
        """Apply one patch member: `pax` its pax records, `size` its data size, `read(n)` its data."""
        path = pax.get(PATH_KEY, "")
        if pax.get(PATCH_MARK) != PATCH_VERSION:
            raise _refuse(path, f"unknown patch format {pax.get(PATCH_MARK)!r}")
        if self._closed:
            raise _refuse(path, "it comes after an ordinary member")
        try:
            parts = member_parts(path)
        except Refused as exc:
            raise _refuse(path, str(exc)) from None
        if not parts:
            raise _refuse(path, "it names the archive root")
        key = "/".join(parts)
        if key in self.patched:
            raise _refuse(path, "the same path is patched twice")
        new_size = _number(pax, SIZE_KEY, path, 0, MAX_FILE)
        base_size = _number(pax, BASE_KEY, path, 0, MAX_FILE)
        mode = _number(pax, MODE_KEY, path, 0, 0o7777)
        uid = _number(pax, UID_KEY, path, 0, (1 << 32) - 2)
        gid = _number(pax, GID_KEY, path, 0, (1 << 32) - 2)
        mtime_ns = _number(pax, MTIME_KEY, path, -(1 << 63), (1 << 63) - 1)
        self.patched.add(key)
        fd = self._open(parts, path)
        try:
            st = os.fstat(fd)
            if st.st_size != base_size:
                raise _refuse(path, f"the file in the restore directory is {st.st_size} bytes, the patch is "
                                    f"for {base_size}: it does not continue this snapshot's phase 1")
            _write_extents(fd, size, read, new_size, path)
            os.ftruncate(fd, new_size)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
            os.utime(fd, ns=(st.st_atime_ns, mtime_ns))
        finally:
            os.close(fd)
        self.applied += 1

    def _open(self, parts: tuple[str, ...], path: str) -> int:
        """The existing regular file at `parts` inside dest, opened for writing without following any
        symlink on the way: every directory is opened relative to its parent with O_NOFOLLOW."""
        dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        dirfd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in parts[:-1]:
                try:
                    nfd = os.open(comp, dir_flags, dir_fd=dirfd)
                except OSError as exc:
                    raise _refuse(path, _why(exc, comp)) from None
                os.close(dirfd)
                dirfd = nfd
            try:
                st = os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False)
            except OSError as exc:
                raise _refuse(path, _why(exc, parts[-1])) from None
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(path, "its target is not a regular file")
            # A hard link here is harmless: dest is a fresh staging dir whose links all point inside it
            # (MemberGuard), and a name still sharing this inode that the source no longer links (capture
            # patches only files with one link) is deleted before, or replaced by tar after, this patch.
            try:
                fd = os.open(parts[-1], os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as exc:
                raise _refuse(path, _why(exc, parts[-1])) from None
            st2 = os.fstat(fd)
            if (st2.st_ino, st2.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(st2.st_mode):
                os.close(fd)
                raise _refuse(path, "its target changed while being opened")
            return fd
        finally:
            os.close(dirfd)


def _why(exc: OSError, comp: str) -> str:
    if exc.errno == errno.ENOENT:
        return f"{comp!r} does not exist in the restore directory"
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{comp!r} is a symlink or not a directory"
    return f"{comp!r}: {exc.strerror}"


def _read_exact(read: Callable[[int], bytes], n: int, path: str) -> bytes:
    data = read(n)
    if len(data) != n:
        raise _refuse(path, "its data ends early")
    return data


def _write_extents(fd: int, size: int, read: Callable[[int], bytes], new_size: int, path: str) -> None:
    """Stream the member's extents into the file: every bound checked before its bytes are written."""
    left = size
    end = 0
    while left:
        if left < EXTENT.size:
            raise _refuse(path, "its data ends inside an extent header")
        offset, length = EXTENT.unpack(_read_exact(read, EXTENT.size, path))
        left -= EXTENT.size
        if length == 0 or offset < end:
            raise _refuse(path, "its extents are empty, overlap or are out of order")
        if offset + length > new_size:
            raise _refuse(path, f"an extent ends at {offset + length}, beyond the file's size {new_size}")
        if length > left:
            raise _refuse(path, "an extent is longer than the member's data")
        end = offset + length
        left -= length
        while offset < end:
            chunk = memoryview(_read_exact(read, min(READ_CHUNK, end - offset), path))
            while chunk:
                written = os.pwrite(fd, chunk, offset)
                chunk = chunk[written:]
                offset += written
