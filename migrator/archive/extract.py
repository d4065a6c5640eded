"""Extraction: verify one archive object and apply it to a staging directory, streaming.

Owns `extract_archive`. Raw bytes are hashed and counted as they stream in, decrypted by `age -d` when
the object is encrypted, decompressed by zstandard and parsed by Python's tarfile in one forward pass
(`_Plain`: a reader that never seeks back, so nothing is buffered beyond a chunk). Every member is
checked (`policy.MemberGuard`) and then re-emitted (`emit.PaxEmitter`), rebuilt from its checked fields
only (xattrs and ACLs, exact times, sparse maps kept), into `tar --extract`, which restores owners,
modes, times, hard links and xattrs faithfully. GNU tar never parses a byte we did not write ourselves,
so no difference between two tar parsers can smuggle a member past the checks.

A leading `.migrator-deleted` list (phase 2) is applied first: each path is removed inside dest only,
never through a symlink. Patch members (phase 2, patch.py) that follow it are applied by `patch.Patcher`
to the files phase 1 left in dest, before anything of the stream reaches tar. Any failure raises:
IntegrityError (exit 6) for what the object holds (hash or size mismatch, corruption, hostile member,
decompression bomb, wrong identity), ArchiveError when GNU tar itself fails. dest is a staging directory
the caller discards on error; partial writes are not undone, but nothing is ever written outside dest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from migrator.archive import emit, patch
from migrator.archive._proc import EXIT_GRACE_S, Child, Pump, close_all, grow_pipe
from migrator.archive.emit import PaxEmitter
from migrator.archive.policy import DIR, FILE, LINK, MemberGuard, Refused, member_parts
from migrator.archive.tarstream import BLOCK, DELETED_MARK, DELETED_MARK_VALUE, DELETED_MEMBER
from migrator.errors import ArchiveError, IntegrityError, UsageError

# Bytes per read at every stage: amortises per-call Python overhead; memory stays a few MiB.
READ_CHUNK = 1024 * 1024
# zstd window we accept (zstd's own default limit, 128 MiB): our captures use a few MiB; a bigger
# window is not ours and would only cost memory.
MAX_WINDOW = 1 << 27
# A delete list is read into memory; ~5 million paths fit. Larger is not something phase 2 writes.
DELETED_LIST_MAX = 256 * 1024 * 1024
_REFUSED_TYPES = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}
# What tarfile raises on a damaged stream (ValueError and friends come from its header parsing).
_PARSE_ERRORS = (tarfile.TarError, ValueError, EOFError, UnicodeError, OverflowError, KeyError, IndexError)
_HOSTILE_HINT = "the archive was refused before anything reached the data directory; pick another snapshot"


@dataclass(frozen=True)
class ExtractStats:
    sha256: str  # of the object as read, hex (equal to expected_sha256, or we raised)
    size: int  # bytes of the object as read
    uncompressed: int  # bytes of the tar stream
    files: int  # members extracted (the delete list not counted)
    deleted: int  # paths removed by the delete list
    patched: int = 0  # files patched in place (patch members, not counted in `files`)


class _Corrupt(IntegrityError):
    """The stream itself is broken (zstd, tar framing). With age in front, age's own failure explains it."""


def tar_extract_argv(dest: Path) -> list[str]:
    return ["tar", "--extract", "--file=-", "--numeric-owner", "--same-permissions", "--same-owner",
            "--xattrs", "--xattrs-include=*", "--acls", "--warning=no-unknown-keyword",
            "--directory", os.fspath(dest)]


class _Source:
    """The object as the store hands it over: every byte hashed and counted; a read error is kept."""

    def __init__(self, reader: BinaryIO):
        self.reader = reader
        self.hash = hashlib.sha256()
        self.count = 0
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.reader.read(n if n and n > 0 else READ_CHUNK)
        except BaseException as exc:
            self.error = exc
            raise
        if data:
            self.hash.update(data)
            self.count += len(data)
        return data


class _Plain:
    """The decompressed tar stream, as a forward-only "seekable" file for tarfile's plain 'r:' mode.

    tarfile's own stream mode ('r|') re-copies its whole read-ahead buffer on every small read, which
    made restore several times slower than `zstd -dc | tar -x`; here a header read costs one 512-byte
    slice. Backward seeks (which tarfile never needs on a well-formed stream) are refused. Counts what
    zstd produced (the bomb guard) and keeps the bytes of the last read for the end-of-archive check.
    """

    def __init__(self, zreader, limit: int | None, source: _Source, progress: Callable[[int], None] | None):
        self.zreader = zreader
        self.limit = limit
        self.source = source
        self.progress = progress
        self.count = 0  # bytes produced by zstd
        self.pos = 0  # bytes handed to (or skipped by) the consumer
        self.last = b""  # what the last read() returned
        self._buf = b""
        self._off = 0

    def _fill(self) -> bool:
        try:
            data = self.zreader.read(READ_CHUNK)
        except zstandard.ZstdError as exc:
            raise _Corrupt(f"the compressed stream is corrupt: {exc}") from None
        if self.progress is not None:
            self.progress(self.source.count)
        if not data:
            return False
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise IntegrityError(f"the archive expands beyond {self.limit} bytes; refusing it (decompression bomb?)",
                                 hint=_HOSTILE_HINT)
        self._buf, self._off = data, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = READ_CHUNK
        avail = len(self._buf) - self._off
        if avail >= n:
            out = self._buf[self._off:self._off + n]
            self._off += n
        else:
            parts = [self._buf[self._off:]] if avail else []
            got = avail
            self._buf, self._off = b"", 0
            while got < n and self._fill():
                take = min(n - got, len(self._buf))
                parts.append(self._buf if take == len(self._buf) else self._buf[:take])
                self._off = take
                got += take
            out = b"".join(parts)
        self.pos += len(out)
        self.last = out
        return out

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise _Corrupt("the tar stream asks to go backwards")
        while self.pos < pos:
            if not self.read(min(pos - self.pos, READ_CHUNK)):
                break
        return self.pos


def _is_delete_list(m: tarfile.TarInfo) -> bool:
    return m.name == DELETED_MEMBER and m.pax_headers.get(DELETED_MARK) == DELETED_MARK_VALUE


class _Extraction:
    def __init__(self, dest: Path, source: _Source, *, expected_sha256: str | None, expected_size: int | None,
                 identity_file: Path | None, encrypted: bool, max_uncompressed: int | None, progress):
        self.dest = dest
        self.expected_sha256 = expected_sha256
        self.expected_size = expected_size
        self.source = source
        self.identity_file = identity_file
        self.encrypted = encrypted
        self.max_uncompressed = max_uncompressed
        self.progress = progress
        self.children: list[Child] = []
        self.threads: list[Pump] = []
        self.age: Child | None = None
        self.tar: Child | None = None
        self.guard = MemberGuard(dest)
        self.patcher = patch.Patcher(dest)
        self.files = 0
        self.deleted = 0
        self.uncompressed = 0

    # -- pipeline ------------------------------------------------------------------------------------

    def run(self) -> None:
        stream = self.source
        if self.encrypted:
            self.age = Child(["age", "--decrypt", "--identity", os.fspath(self.identity_file)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.children.append(self.age)
            grow_pipe(self.age.stdout)
            feeder = Pump("age-feed", lambda: _copy_into(self.source, self.age.stdin))
            self.threads.append(feeder)
            feeder.start()
            stream = self.age.stdout
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        zreader = dctx.stream_reader(stream, read_size=READ_CHUNK, closefd=False)
        plain = _Plain(zreader, self.max_uncompressed, self.source, self.progress)
        self.tar = Child(tar_extract_argv(self.dest), stdin=subprocess.PIPE)
        self.children.append(self.tar)
        grow_pipe(self.tar.stdin)
        emitter = PaxEmitter(self.tar.stdin)
        self._members(plain, emitter)
        emitter.close()
        self.uncompressed = plain.count
        # The rest of the object (zstd epilogue, age's last chunk) must be read for the hash.
        if self.age is not None:
            while self.age.stdout.read(READ_CHUNK):
                pass
            for t in self.threads:
                t.join()
                if t.error is not None:
                    raise t.error
            if self.age.wait() != 0:
                raise self._age_failure()
        else:
            while self.source.read(READ_CHUNK):
                pass
        tar_rc = self.tar.wait()
        self._check_object()
        if tar_rc != 0:
            raise ArchiveError(f"tar could not extract into {self.dest}: {self.tar.describe_failure()}",
                               hint="check free space and the staging directory's filesystem, then retry")
        self._check_symlinks()

    def _check_object(self) -> None:
        if self.source.error is not None:
            raise self.source.error
        if self.expected_size is not None and self.source.count != self.expected_size:
            raise IntegrityError(f"the object is {self.source.count} bytes, the manifest says {self.expected_size}")
        digest = self.source.hash.hexdigest()
        if self.expected_sha256 is not None and digest != self.expected_sha256.lower():
            raise IntegrityError(f"sha256 mismatch: the object hashes to {digest}, the manifest says "
                                 f"{self.expected_sha256}")

    def _age_failure(self) -> IntegrityError:
        return IntegrityError(f"cannot decrypt the archive with {self.identity_file}: {self.age.describe_failure()}",
                              hint="pass the age identity matching one of the snapshot's recipients")

    def root_cause(self, exc: BaseException) -> BaseException:
        """What to report when `exc` interrupted the pipeline: the store's own error, age's, tar's, or exc."""
        if self.source.error is not None:
            return self.source.error
        if isinstance(exc, _PARSE_ERRORS):
            exc = _Corrupt(f"the tar stream is corrupt: {exc}")
        if self.age is not None and isinstance(exc, (_Corrupt, BrokenPipeError)):
            try:  # a stream that broke behind age: age exits by itself and says why
                if self.age.wait(EXIT_GRACE_S) != 0:
                    return self._age_failure()
            except subprocess.TimeoutExpired:
                pass
        if self.tar is not None and isinstance(exc, BrokenPipeError):
            try:
                self.tar.wait(EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            return ArchiveError(f"tar could not extract into {self.dest}: {self.tar.describe_failure()}",
                                hint="check free space and the staging directory's filesystem, then retry")
        return exc

    # -- members -------------------------------------------------------------------------------------

    def _members(self, plain: _Plain, emitter: PaxEmitter) -> None:
        tf = tarfile.open(fileobj=plain, mode="r:", encoding="utf-8", errors="surrogateescape")
        first = True
        while (m := tf.next()) is not None:
            tf.members.clear()  # tarfile keeps every TarInfo it parsed; we never look back, so memory stays flat
            if _is_delete_list(m):
                if not first:
                    raise IntegrityError("a delete list that is not the archive's first member", hint=_HOSTILE_HINT)
                self._apply_delete_list(tf, m)
            elif patch.is_patch(m.name, m.pax_headers):
                self.patcher.apply(m.pax_headers, m.size, tf.extractfile(m).raw.read)
            else:
                self.patcher.member_seen(m.name)
                self._member(tf, m, emitter)
                self.files += 1
            first = False
        # tarfile stops at the first block that is not a header: it must be the (zero) end-of-archive
        # marker, not a damaged header, and only zeros may follow.
        consumed = plain.pos - tf.offset
        if not 0 <= consumed <= len(plain.last):
            raise _Corrupt("the tar stream ends in the middle of a member")
        tail = plain.last[len(plain.last) - consumed:]
        zeros = len(tail)
        clean = tail.count(0) == len(tail)
        while clean and (chunk := plain.read(READ_CHUNK)):
            zeros += len(chunk)
            clean = chunk.count(0) == len(chunk)
        if not clean:
            raise _Corrupt("the tar stream has a damaged header or data after its end")
        if zeros < 2 * BLOCK:
            raise _Corrupt("the tar stream ends without its end-of-archive marker")

    def _refuse(self, m: tarfile.TarInfo, reason: str) -> IntegrityError:
        return IntegrityError(f"refusing archive member {m.name!r}: {reason}", hint=_HOSTILE_HINT)

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, emitter: PaxEmitter) -> None:
        if m.type in _REFUSED_TYPES:
            raise self._refuse(m, f"{_REFUSED_TYPES[m.type]}s are never restored")
        try:
            parts = member_parts(m.name)
            name = "/".join(parts) if parts else "./"
            if m.uid < 0 or m.gid < 0:
                raise Refused("negative owner")
            if m.isdir():
                self.guard.check(parts, DIR)
                emitter.header(**_fields(m, name, emit.DIRECTORY))
            elif m.issym():
                self.guard.check(parts, LINK, symlink_target=m.linkname)
                emitter.header(**_fields(m, name, emit.SYMLINK), linkname=m.linkname)
            elif m.islnk():
                try:
                    link_parts = member_parts(m.linkname)
                except Refused as exc:
                    raise Refused(f"hard link target {m.linkname!r}: {exc}") from None
                self.guard.check(parts, FILE, link_parts=link_parts)
                emitter.header(**_fields(m, name, emit.HARDLINK), linkname="/".join(link_parts))
            elif m.isreg():
                self.guard.check(parts, FILE)
                raw = tf.extractfile(m).raw  # no read-ahead: sparse chunks are read strictly forward
                if m.issparse():
                    self._sparse(m, parts, name, raw, emitter)
                else:
                    emitter.header(**_fields(m, name, emit.REGULAR), size=m.size)
                    emitter.data(raw, 0, m.size, READ_CHUNK, _short)
                    emitter.pad(m.size)
            else:
                raise Refused(f"unsupported member type {m.type!r}")
        except Refused as exc:
            raise self._refuse(m, str(exc)) from None

    def _sparse(self, m: tarfile.TarInfo, parts: tuple[str, ...], name: str, raw, emitter: PaxEmitter) -> None:
        """Re-emit as GNU sparse 1.0 (map, then data chunks), so holes stay holes on disk."""
        end = 0
        for offset, length in m.sparse:
            if offset < end or length < 0 or offset + length > m.size:
                raise Refused("its sparse map is out of order or out of bounds")
            end = offset + length
        mapping = emit.sparse_map(m.sparse)
        stored = sum(n for _, n in m.sparse)
        fields = _fields(m, "/".join([*parts[:-1], "GNUSparseFile.0", parts[-1]]), emit.REGULAR)
        fields["pax"].update({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                              "GNU.sparse.realsize": str(m.size)})
        emitter.header(**fields, size=len(mapping) + stored)
        emitter.pipe.write(mapping)
        for offset, length in m.sparse:
            if length:
                emitter.data(raw, offset, length, READ_CHUNK, _short)
        emitter.pad(stored)

    def _apply_delete_list(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if m.size > DELETED_LIST_MAX:
            raise self._refuse(m, f"a delete list of {m.size} bytes is larger than {DELETED_LIST_MAX}")
        data = tf.extractfile(m).raw.read(m.size)
        if len(data) != m.size:
            raise _Corrupt("the tar stream ends inside the delete list")
        paths = [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]
        checked = []
        for path in paths:  # all checked before the first removal
            try:
                parts = member_parts(path)
            except Refused as exc:
                raise IntegrityError(f"refusing delete-list entry {path!r}: {exc}", hint=_HOSTILE_HINT) from None
            if not parts:
                raise IntegrityError("the delete list names the archive root", hint=_HOSTILE_HINT)
            checked.append(parts)
        for parts in checked:
            self.deleted += self._remove(parts)

    def _remove(self, parts: tuple[str, ...]) -> int:
        path = os.fspath(self.dest)
        for comp in parts[:-1]:
            path = os.path.join(path, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return 0
            if stat.S_ISLNK(st.st_mode):
                raise IntegrityError(f"delete-list entry {'/'.join(parts)!r} passes through a symlink",
                                     hint=_HOSTILE_HINT)
            if not stat.S_ISDIR(st.st_mode):
                return 0
        target = os.path.join(path, parts[-1])
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return 0
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)  # fd-based on Linux: never follows a symlink inside
        else:
            os.unlink(target)
        return 1

    def _check_symlinks(self) -> None:
        """Defence in depth: every symlink this stream created resolves inside dest on disk."""
        base = os.path.realpath(self.dest)
        for key in self.guard.symlinks:
            real = os.path.realpath(os.path.join(self.dest, key))
            if real != base and not real.startswith(base + os.sep):
                raise IntegrityError(f"symlink {key!r} resolves outside the restore directory", hint=_HOSTILE_HINT)


def _fields(m: tarfile.TarInfo, name: str, typeflag: bytes) -> dict:
    """The checked member's fields that the rebuilt header carries (owner numeric, names dropped)."""
    return {"name": name, "typeflag": typeflag, "mode": m.mode, "uid": m.uid, "gid": m.gid, "mtime": m.mtime,
            "pax": emit.carried_pax(m.pax_headers)}


def _short() -> _Corrupt:
    return _Corrupt("the tar stream ends inside a member")


def _copy_into(source: _Source, pipe) -> None:
    try:
        while chunk := source.read(READ_CHUNK):
            pipe.write(chunk)
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def extract_archive(reader: BinaryIO, dest: Path, *, expected_sha256: str | None, expected_size: int | None = None,
                    identity_file: Path | None = None, encrypted: bool = False,
                    progress: Callable[[int], None] | None = None,
                    max_uncompressed: int | None = None) -> ExtractStats:
    """Verify the object read from `reader` and apply it to `dest` (a staging directory, created if missing).

    `progress` is called with the object bytes read so far. `max_uncompressed` caps the tar stream size.
    `expected_sha256=None` is for a stream whose digest the sender only knows at its end (move): the
    caller must compare the returned `sha256` with the sender's before trusting `dest`.
    """
    if encrypted and identity_file is None:
        raise UsageError("this snapshot is encrypted: an age identity file is needed to restore it",
                         hint="pass --identity FILE (the age or ssh key matching the plan's recipients)")
    dest = Path(dest)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = _Source(reader)
    run = _Extraction(dest, source, expected_sha256=expected_sha256, expected_size=expected_size,
                      identity_file=identity_file, encrypted=encrypted, max_uncompressed=max_uncompressed,
                      progress=progress)
    try:
        run.run()
    except BaseException as exc:
        if run.tar is not None and run.tar.proc.poll() is None:
            run.tar.proc.kill()  # first of all: nothing more reaches dest
        cause = run.root_cause(exc)
        if cause is exc:
            raise
        raise cause from exc
    finally:
        close_all(run.children, run.threads)
    return ExtractStats(sha256=source.hash.hexdigest(), size=source.count, uncompressed=run.uncompressed,
                        files=run.files, deleted=run.deleted, patched=run.patcher.applied)
