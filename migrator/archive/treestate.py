"""Change detection: a metadata scan of a data directory, and the diff of two scans.

A change always moves a ctime, which userspace cannot set, so the diff cannot miss one (with the racy
entry rule for the coarse clock). The rules, the diff's semantics and the file format:
docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import zstandard

from migrator.archive.policy import Refused, member_parts
from migrator.errors import ArchiveError, IntegrityError

# Slack for the coarse file-time clock (see module docstring). Costs only re-archiving files changed in
# the last 2 s before the scan; being too small would lose changes.
RACY_SLACK_NS = 2_000_000_000
FORMAT = "migrator-treestate"
VERSION = 4  # 2 added block digests (sha256), 3 made them xxh3-128, 4 64 KiB blocks; 1 (no digests) is still read
# Block digests are kept per BLOCK_SIZE block (patch.py explains the choice), DIGEST_SIZE bytes each.
BLOCK_SIZE = 64 * 1024
DIGEST_SIZE = 16
# Placeholder type for a path phase 1 archived but its scan did not see: never equal to a real entry.
UNKNOWN = "?"
TYPES = frozenset("dflo?")
WRITE_BATCH = 4096  # lines encoded per write
# Limits on a tree state read from a store (untrusted): ~20 million paths (a 200 GB volume of 10 KiB
# files), lines no longer than a path and a symlink target can be, and the decompressed stream bounded.
MAX_ENTRIES = 20_000_000
MAX_LINE = 64 * 1024
MAX_TREE_BYTES = 8 * 1024 * 1024 * 1024
_INT_LOW, _INT_HIGH = -(1 << 63), 1 << 64


class Entry(NamedTuple):
    type: str  # d, f, l, o (other: fifo, device, socket), ? (archived but not scanned)
    ino: int
    dev: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    nlink: int
    target: str | None  # symlink target


_UNSEEN = Entry(UNKNOWN, -1, -1, -1, -1, -1, -1, -1, -1, -1, None)


def _entry(st: os.stat_result, target: str | None, _isreg=stat.S_ISREG, _isdir=stat.S_ISDIR, _islnk=stat.S_ISLNK,
           _imode=stat.S_IMODE, _new=tuple.__new__) -> Entry:
    # Runs once per path, also while writers are stopped: plain tests, no generator (15% of a scan), and
    # the tuple built directly (Entry(...) goes through a Python-level __new__: a third of this function).
    mode = st.st_mode
    kind = "f" if _isreg(mode) else "d" if _isdir(mode) else "l" if _islnk(mode) else "o"
    return _new(Entry, (kind, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                        _imode(mode), st.st_uid, st.st_gid, st.st_nlink, target))


class TreeState:
    """Per relative path ("." is the root; "/"-separated) the metadata that any change moves."""

    def __init__(self, entries: dict[str, Entry], started_ns: int, root: str = "",
                 blocks: dict[str, tuple[int, bytes]] | None = None, owner: str = ""):
        self.entries = entries
        # what this state is the tree of, when sealed into a snapshot: "<vsn>/<snapshot id>/<volume>"
        self.owner = owner
        self.started_ns = started_ns  # wall clock just before the first lstat
        self.root = root
        # path -> (size as archived, concatenated block digests of the archived bytes); see patch.py
        self.blocks: dict[str, tuple[int, bytes]] = blocks if blocks is not None else {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: str) -> bool:
        return path in self.entries

    def __getitem__(self, path: str) -> Entry:
        return self.entries[path]

    def note_archived(self, path: str) -> None:
        """Phase 1 archived `path`; if the scan did not see it, remember it so phase 2 handles it."""
        if path not in self.entries:
            self.entries[path] = _UNSEEN

    def note_blocks(self, path: str, size: int, digests: bytes) -> None:
        """Phase 1 archived `size` bytes of `path` whose blocks hash to `digests`."""
        self.blocks[path] = (size, digests)

    def racy(self, entry: Entry) -> bool:
        return entry.ctime_ns >= self.started_ns - RACY_SLACK_NS

    def carry_blocks(self, before: TreeState, changed: list[str]) -> None:
        """Take `before`'s block digests for every file this state holds unchanged since `before` (not in
        `changed`): restore holds the same bytes there as it did after `before`'s capture."""
        skip = set(changed)
        for p, rec in before.blocks.items():
            if p not in skip and p not in self.blocks and getattr(self.entries.get(p), "type", None) == "f":
                self.blocks[p] = rec

    def write(self, fh) -> None:
        """Serialise as zstd-compressed JSON lines into the binary file object `fh`. Lines are encoded and
        written in batches: a backup seals one of these per volume (~3 us a path)."""
        encode = json.JSONEncoder(separators=(",", ":")).encode
        header = {"format": FORMAT, "version": VERSION, "root": self.root, "started_ns": self.started_ns,
                  "count": len(self.entries), "blocks": len(self.blocks), "block_size": BLOCK_SIZE,
                  "owner": self.owner}
        with zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) as zw:
            zw.write(json.dumps(header).encode() + b"\n")
            for rows in (self.entries.items(), ((p, (size, digests.hex())) for p, (size, digests) in self.blocks.items())):
                batch: list[str] = []
                for p, fields in rows:
                    batch.append(encode([p, *fields]))
                    if len(batch) == WRITE_BATCH:
                        zw.write(("\n".join(batch) + "\n").encode("utf-8", "surrogateescape"))
                        batch = []
                if batch:
                    zw.write(("\n".join(batch) + "\n").encode("utf-8", "surrogateescape"))

    def save(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename) as zstd-compressed JSON lines."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            self.write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, untrusted: bool = False) -> TreeState:
        """Read a saved state. `untrusted` (a snapshot's tree state from a store): every line checked,
        sizes capped; anything off is an IntegrityError, never a wrong state."""
        try:
            with open(path, "rb") as fh:
                reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
                if untrusted:
                    return _load_checked(reader, path)
                lines = io.TextIOWrapper(reader, encoding="utf-8")
                header = json.loads(lines.readline())
                if header.get("format") != FORMAT or header.get("version") not in (1, VERSION):
                    raise ValueError(f"not a {FORMAT} v{VERSION} file")
                count = header.get("count")
                entries, blocks = {}, {}
                for line in lines:
                    if len(entries) == count:
                        p, size, digests = json.loads(line)
                        blocks[p] = (size, bytes.fromhex(digests))
                    else:
                        p, *fields = json.loads(line)
                        entries[p] = Entry(*fields)
        except (OSError, ValueError, TypeError, zstandard.ZstdError) as exc:
            if untrusted:
                raise IntegrityError(f"tree state {path} is unreadable: {exc}") from None
            raise ArchiveError(f"cannot read the phase-1 scan {path}: {exc}",
                               hint="run the backup again; phase 1 writes a fresh scan") from None
        if len(entries) != count or len(blocks) != header.get("blocks", 0):
            raise ArchiveError(f"the phase-1 scan {path} is truncated", hint="run the backup again")
        return cls(entries, header["started_ns"], header.get("root", ""), blocks)


def _bad(path, why: str) -> IntegrityError:
    return IntegrityError(f"tree state {path} is malformed: {why}")


def _checked_path(p, where) -> str:
    if not isinstance(p, str):
        raise _bad(where, "a path is not a string")
    try:
        parts = member_parts(p)
    except Refused as exc:
        raise _bad(where, f"path {p[:80]!r}: {exc}") from None
    if p != ("/".join(parts) if parts else "."):
        raise _bad(where, f"path {p[:80]!r} is not in normal form")
    return p


def _is_int(v) -> bool:
    return type(v) is int and _INT_LOW <= v < _INT_HIGH


def _load_checked(reader, where) -> TreeState:
    """The untrusted reader: a bounded line reader over the decompressed stream, each line type-checked."""
    budget = [MAX_TREE_BYTES]

    def lines():
        pending = b""
        while True:
            chunk = reader.read(1024 * 1024)
            if not chunk:
                if pending:
                    yield pending
                return
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise _bad(where, f"it decompresses to more than {MAX_TREE_BYTES} bytes")
            pending += chunk
            *full, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE:
                raise _bad(where, f"a line is longer than {MAX_LINE} bytes")
            yield from full

    it = lines()
    try:
        header = json.loads(next(it))
    except (StopIteration, ValueError, RecursionError):  # RecursionError: a line of nested brackets
        raise _bad(where, "no header line") from None
    if (not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION
            or header.get("block_size") != BLOCK_SIZE):
        raise _bad(where, f"not a {FORMAT} v{VERSION} file with {BLOCK_SIZE}-byte blocks")
    count, nblocks, started = header.get("count"), header.get("blocks"), header.get("started_ns")
    if not (_is_int(count) and 0 <= count <= MAX_ENTRIES and _is_int(nblocks) and 0 <= nblocks <= count
            and _is_int(started) and isinstance(header.get("root", ""), str)
            and isinstance(header.get("owner", ""), str)):
        raise _bad(where, "its header is out of range")
    entries: dict[str, Entry] = {}
    blocks: dict[str, tuple[int, bytes]] = {}
    for raw in it:
        if len(raw) > MAX_LINE:
            raise _bad(where, f"a line is longer than {MAX_LINE} bytes")
        try:
            row = json.loads(raw)  # NaN and huge numbers fail the type and range checks below
        except (ValueError, RecursionError):
            raise _bad(where, "a line is not JSON") from None
        if not isinstance(row, list):
            raise _bad(where, "a line is not an array")
        if len(entries) < count:
            if len(row) != 12:
                raise _bad(where, "an entry does not have 12 fields")
            p = _checked_path(row[0], where)
            kind, target = row[1], row[11]
            if kind not in TYPES or not all(_is_int(v) for v in row[2:11]) or not (target is None or (
                    isinstance(target, str) and kind == "l")):
                raise _bad(where, f"the entry of {p[:80]!r} has a field of the wrong type or range")
            if p in entries:
                raise _bad(where, f"{p[:80]!r} is listed twice")
            entries[p] = Entry(*row[1:])
        else:
            if len(blocks) >= nblocks or len(row) != 3:
                raise _bad(where, "more block lists than its header says, or one of the wrong shape")
            p, size, digests = _checked_path(row[0], where), row[1], row[2]
            if not (_is_int(size) and size >= 0 and isinstance(digests, str)
                    and len(digests) == 2 * DIGEST_SIZE * -(-size // BLOCK_SIZE)):
                raise _bad(where, f"the block list of {p[:80]!r} does not fit its size")
            if getattr(entries.get(p), "type", None) != "f" or p in blocks:
                raise _bad(where, f"block list for {p[:80]!r}, which is not a listed file (or twice)")
            try:
                blocks[p] = (size, bytes.fromhex(digests))
            except ValueError:
                raise _bad(where, f"the block list of {p[:80]!r} is not hex") from None
    if len(entries) != count or len(blocks) != nblocks:
        raise _bad(where, "it is truncated")
    if "." not in entries or entries["."].type != "d":
        raise _bad(where, "it does not list its root directory")
    return TreeState(entries, started, header.get("root", ""), blocks, header.get("owner", ""))


# How a directory is opened for the walk: never through a symlink (one swapped in meanwhile is skipped).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory that vanished or stopped being one between its listing and its opening (phase 1 runs live).
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _walk(root: str) -> Iterator[tuple[str, os.stat_result, str | None]]:
    """(relative path, lstat, symlink target) for the root and everything below it on the same filesystem.

    Each directory is listed through a descriptor opened relative to its parent's, so every lstat and
    readlink is an `*at` call on one name (~15 % faster than resolving each whole path again) and no
    path is ever resolved through a symlink. Open descriptors: one per level of the directory being
    listed, closed on the way up (and when the walk is abandoned)."""
    # The root itself is followed, as capture's tar -C follows it (deploy refuses a symlinked data dir,
    # but one swapped for a link to another disk later must be scanned whole, not cut at the first level
    # because its entries' device differs from the link's). Nothing below the root is followed.
    top = os.stat(root)
    yield ".", top, None
    isdir, islnk, dev = stat.S_ISDIR, stat.S_ISLNK, top.st_dev
    # (fd, relative path, subdirectories not walked yet) of each directory on the way down to this one
    stack: list[tuple[int, str, list[str]]] = []
    fd, rel = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW), ""
    try:
        while True:
            subdirs: list[str] = []
            stack.append((fd, rel, subdirs))
            with os.scandir(fd) as it:
                for de in it:
                    name = de.name
                    relpath = f"{rel}/{name}" if rel else name
                    try:
                        st = de.stat(follow_symlinks=False)
                        target = os.readlink(name, dir_fd=fd) if islnk(st.st_mode) else None
                    except (FileNotFoundError, NotADirectoryError):
                        continue  # removed while we walk: the next scan sees it gone
                    yield relpath, st, target
                    # Same rule as tar --one-file-system: a mount point is recorded, not entered.
                    if isdir(st.st_mode) and st.st_dev == dev:
                        subdirs.append(name)
            fd = -1
            while fd < 0 and stack:  # the next directory to list: depth first
                parent, prel, pending = stack[-1]
                if not pending:
                    os.close(stack.pop()[0])
                    continue
                name = pending.pop()
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise
                    continue
                rel = f"{prel}/{name}" if prel else name
            if fd < 0:
                return
    finally:
        for entry in stack:  # every open descriptor is on the stack
            os.close(entry[0])


def scan(root: Path) -> TreeState:
    """lstat every path under `root` (never following symlinks below it, not crossing filesystems)."""
    root_s = os.fspath(root)
    started = time.time_ns()
    entries: dict[str, Entry] = {}
    try:
        for rel, st, target in _walk(root_s):
            entries[rel] = _entry(st, target)
    except OSError as exc:
        raise ArchiveError(f"cannot scan {exc.filename or root_s}: {exc.strerror or exc}",
                           hint="check the data directory's permissions and filesystem") from None
    return TreeState(entries, started, root_s)


def diff(before: TreeState, after: TreeState) -> tuple[list[str], list[str]]:
    """(changed or new paths incl. directories whose metadata changed, deleted paths) from phase 1 to 2."""
    changed: list[str] = []
    removed: list[str] = []
    old = before.entries
    for path, new in after.entries.items():
        prev = old.get(path)
        if prev is None:
            changed.append(path)
        elif prev != new or before.racy(prev):
            changed.append(path)
            if prev.type != new.type or prev.type == UNKNOWN:
                removed.append(path)  # restore must remove the old one first (and all under it)
    now = after.entries
    removed.extend(p for p in old if p not in now)
    # Restore replaces a changed file by unlink + create and deletes removed paths, which moves the
    # mtime of the directory holding them; archiving that directory's entry too restores its times.
    touched = set(changed)
    for path in [*changed, *removed]:
        parent = _parent(path)
        if parent is not None and parent not in touched and getattr(now.get(parent), "type", None) == "d":
            touched.add(parent)
            changed.append(parent)
    return sorted(changed, key=_tree_order), _minimal(removed)


def _parent(path: str) -> str | None:
    if path == ".":
        return None
    head, _, _ = path.rpartition("/")
    return head or "."


def _tree_order(path: str) -> tuple[str, ...]:
    return () if path == "." else tuple(path.split("/"))


def _minimal(paths: list[str]) -> list[str]:
    """Sorted, without any path that lies under another one in the list (removing a directory removes all)."""
    out: list[str] = []
    for path in sorted(set(paths), key=_tree_order):
        if out and path.startswith(out[-1] + "/"):
            continue
        out.append(path)
    return out


def compare(snapshot: TreeState, live: TreeState) -> tuple[list[str], list[str], list[str]]:
    """What restoring `snapshot` would do to the tree `live` describes: (added, removed, changed) paths,
    sorted parents-first; `removed` is minimal. Changed = another type, size, mtime, mode, owner or
    symlink target (a directory's size is the filesystem's business, not the data's)."""
    want, have = snapshot.entries, live.entries
    added, removed, changed = [], [], []
    for path, e in want.items():
        cur = have.get(path)
        if cur is None:
            added.append(path)
        elif e.type == UNKNOWN or e.type != cur.type or (e.mtime_ns, e.mode, e.uid, e.gid, e.target) != (
                cur.mtime_ns, cur.mode, cur.uid, cur.gid, cur.target) or (e.type != "d" and e.size != cur.size):
            changed.append(path)
    removed = [p for p in have if p not in want]
    return sorted(added, key=_tree_order), _minimal(removed), sorted(changed, key=_tree_order)
