"""Extraction: verify one archive object and apply it to a staging directory, streaming.

Bytes are hashed, decrypted, decompressed and parsed by our own strict reader in one pass; each member is
checked (policy) and re-emitted (emit) before GNU tar sees it. Nothing is written outside dest; dest is a
staging dir the caller discards on error. Special members: docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from migrator.archive import emit, patch, tarparse
from migrator.archive._proc import EXIT_GRACE_S, Child, close_all, grow_pipe
from migrator.archive.emit import PaxEmitter
from migrator.archive.policy import DIR, FILE, LINK, MemberGuard, Refused, member_parts
from migrator.archive.tarparse import CorruptTar, Member, TarParser, UnsupportedTar
from migrator.archive.tarstream import DELETED_MARK, DELETED_MARK_VALUE, DELETED_MEMBER
from migrator.errors import ArchiveError, IntegrityError, UsageError
from migrator.threads import Pump

# Bytes per read at every stage: amortises per-call Python overhead; memory stays a few MiB.
READ_CHUNK = 1024 * 1024
# zstd window we accept (zstd's own default limit, 128 MiB): our captures use a few MiB; a bigger
# window is not ours and would only cost memory.
MAX_WINDOW = 1 << 27
# What the decompressing thread produces per step: big enough that handing chunks (and the GIL) over
# between the two threads costs little (1 MiB steps cost ~0.1 s more CPU on a busy box), small enough
# for flat memory.
DECOMPRESS_CHUNK = 4 * 1024 * 1024
# Decompressed chunks that thread may run ahead of the parser: rides out a slow stretch on either side;
# with the one being parsed and the one being produced, ~16 MiB in flight at most.
PREFETCH_CHUNKS = 2
# How often a decompressing thread blocked on a full queue checks whether the extraction was abandoned.
STOP_POLL_S = 0.1
# A delete list is read into memory; ~5 million paths fit. Larger is not something phase 2 writes.
DELETED_LIST_MAX = 256 * 1024 * 1024
_REFUSED_TYPES = {tarparse.CHARDEV: "character device", tarparse.BLOCKDEV: "block device", tarparse.FIFO: "FIFO"}
_DELETED_MARK = DELETED_MARK.encode()
_DELETED_MARK_VALUE = DELETED_MARK_VALUE.encode()
_PATCH_MARK = patch.PATCH_MARK.encode()
# Blocks per record GNU tar reads and writes, 256 (128 KiB) instead of its default 20 (10 KiB): on the
# 1 GiB bench set tar's CPU 0.84 -> 0.62 s, the extraction 1.41 -> 1.27 s (medians of 11 interleaved
# runs; 64 and 256 KiB equal within noise). Larger records cost again (1 MiB, the pipe's size: tar
# 1.13 s, wall 1.76 s and noisy). Reading a pipe, tar gathers full records itself; the last may be short.
TAR_RECORD_BLOCKS = 256
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


def tar_extract_argv(dest: Path, acls: bool = True) -> list[str]:
    """GNU tar's extract command. `acls=False` for an archive without ACLs: with --acls, tar sets an ACL
    on every file it creates (a setxattr each, ~5 % of a restore of many small files)."""
    return ["tar", "--extract", "--file=-", f"--blocking-factor={TAR_RECORD_BLOCKS}", "--numeric-owner",
            "--same-permissions", "--same-owner", "--xattrs", "--xattrs-include=*", *(["--acls"] if acls else []),
            "--warning=no-unknown-keyword", "--directory", os.fspath(dest)]


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


class _Chunks:
    """The decompressed tar stream, chunk by chunk: counts what zstd produced (the bomb guard)."""

    def __init__(self, zreader, limit: int | None):
        self.zreader = zreader
        self.limit = limit
        self.count = 0  # bytes produced by zstd

    def read(self) -> bytes:
        try:
            data = self.zreader.read(DECOMPRESS_CHUNK)
        except zstandard.ZstdError as exc:
            raise _Corrupt(f"the compressed stream is corrupt: {exc}") from None
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise IntegrityError(f"the archive expands beyond {self.limit} bytes; refusing it (decompression bomb?)",
                                 hint=_HOSTILE_HINT)
        return data


class _Prefetch:
    """Runs `_Chunks.read` (reading, hashing and decompressing the object) in its own thread, at most
    PREFETCH_CHUNKS ahead of the parser. zstd and sha256 release the GIL on whole chunks, so they run on
    the second CPU while this thread parses and emits. Whatever the thread raises is handed over in
    order and raised by `read`; `progress` runs in the caller's thread."""

    def __init__(self, chunks: _Chunks, source: _Source, progress: Callable[[int], None] | None):
        self.chunks = chunks
        self.source = source
        self.progress = progress
        self._queue: queue.Queue = queue.Queue(PREFETCH_CHUNKS)
        self._stopped = threading.Event()
        self._eof = False
        self.thread = Pump("decompress", self._run)

    def _run(self) -> None:
        try:
            while True:
                data = self.chunks.read()
                if not self._put((data, self.source.count)) or not data:
                    return
        except BaseException as exc:  # raised again in the parsing thread, in stream order
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=STOP_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def read(self) -> bytes:
        if self._eof:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        data, count = item
        if self.progress is not None:
            self.progress(count)
        self._eof = not data
        return data

    def stop(self) -> None:
        """Let the thread end even if nobody reads any more (after an error)."""
        self._stopped.set()


class _Extraction:
    def __init__(self, dest: Path, source: _Source, *, expected_sha256: str | None, expected_size: int | None,
                 identity_file: Path | None, encrypted: bool, max_uncompressed: int | None, progress,
                 acls: bool = True):
        self.dest = dest
        # Without --acls a file tar creates inherits its directory's default ACL: only skip the flag when
        # there is none to inherit (the tree itself has none when the manifest says so; this checks dest).
        self.acls = acls or _has_default_acl(dest)
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
        self.prefetch: _Prefetch | None = None
        with os.scandir(dest) as entries:
            fresh = next(entries, None) is None
        self.guard = MemberGuard(dest, fresh=fresh)
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
        chunks = _Chunks(zreader, self.max_uncompressed)
        self.tar = Child(tar_extract_argv(self.dest, self.acls), stdin=subprocess.PIPE)
        self.children.append(self.tar)
        grow_pipe(self.tar.stdin)
        emitter = PaxEmitter(self.tar.stdin)
        self.prefetch = _Prefetch(chunks, self.source, self.progress)
        self.threads.append(self.prefetch.thread)
        self.prefetch.thread.start()
        self._members(TarParser(self.prefetch.read), emitter)
        emitter.close()
        self.prefetch.thread.join()  # it ended after the last chunk: the source is ours again
        self.uncompressed = chunks.count
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
        if isinstance(exc, CorruptTar):
            exc = _Corrupt(str(exc))
        elif isinstance(exc, UnsupportedTar):
            what = f"archive member {exc.name!r}" if exc.name is not None else "the archive"
            exc = IntegrityError(f"refusing {what}: {exc}", hint=_HOSTILE_HINT)
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

    def _members(self, parser: TarParser, emitter: PaxEmitter) -> None:
        first = True
        while (m := parser.next()) is not None:  # None only after a clean end-of-archive marker
            if not self._special(parser, m, first):
                self.patcher.member_seen(m.name)
                self._member(parser, m, emitter)
                self.files += 1
            first = False

    def _special(self, parser: TarParser, m: Member, first: bool) -> bool:
        """Handle `m` if it is a special member (an instruction to restore, marked by a MIGRATOR.* pax
        keyword; its records are `m.pax`, its data `parser.read`/`parser.pieces`). Returns False for an
        ordinary member: a user file that merely has a special member's name is extracted as data."""
        if m.name == DELETED_MEMBER and m.pax.get(_DELETED_MARK) == _DELETED_MARK_VALUE:
            if not first:
                raise IntegrityError("a delete list that is not the archive's first member", hint=_HOSTILE_HINT)
            self._apply_delete_list(parser, m)
            return True
        if m.name == patch.PATCH_MEMBER and _PATCH_MARK in m.pax:
            if m.sparse is not None or m.type != tarparse.REGULAR:
                raise self._refuse(m, "a patch must be a plain regular member")
            pax = {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape") for k, v in m.pax.items()}
            self.patcher.apply(pax, m.size, parser.read)
            return True
        return False

    def _refuse(self, m: Member, reason: str) -> IntegrityError:
        return IntegrityError(f"refusing archive member {m.name!r}: {reason}", hint=_HOSTILE_HINT)

    def _member(self, parser: TarParser, m: Member, emitter: PaxEmitter) -> None:
        t = m.type
        if t in _REFUSED_TYPES:
            raise self._refuse(m, f"{_REFUSED_TYPES[t]}s are never restored")
        try:
            parts = member_parts(m.name)
            name = "/".join(parts) if parts else "./"
            if m.uid < 0 or m.gid < 0:
                raise Refused("negative owner")
            pax, acl = emit.carried_pax(m.pax)
            if acl and not self.acls:
                raise Refused("it carries ACLs its manifest does not list")
            if t == tarparse.REGULAR:
                self.guard.check(parts, FILE)
                if m.sparse is not None:
                    self._sparse(parser, m, parts, name, pax, emitter)
                    return
                emitter.header(name=name, typeflag=emit.REGULAR, mode=m.mode, uid=m.uid, gid=m.gid, mtime=m.mtime,
                               size=m.size, pax=pax)
                put = emitter.put
                for piece in parser.pieces(m.size):
                    put(piece)
                emitter.pad(m.size)
            elif t == tarparse.DIRECTORY:
                self.guard.check(parts, DIR)
                emitter.header(name=name, typeflag=emit.DIRECTORY, mode=m.mode, uid=m.uid, gid=m.gid, mtime=m.mtime,
                               pax=pax)
            elif t == tarparse.SYMLINK:
                self.guard.check(parts, LINK, symlink_target=m.linkname)
                emitter.header(name=name, typeflag=emit.SYMLINK, mode=m.mode, uid=m.uid, gid=m.gid, mtime=m.mtime,
                               linkname=m.linkname, pax=pax)
            elif t == tarparse.HARDLINK:
                try:
                    link_parts = member_parts(m.linkname)
                except Refused as exc:
                    raise Refused(f"hard link target {m.linkname!r}: {exc}") from None
                self.guard.check(parts, FILE, link_parts=link_parts)
                emitter.header(name=name, typeflag=emit.HARDLINK, mode=m.mode, uid=m.uid, gid=m.gid, mtime=m.mtime,
                               linkname="/".join(link_parts), pax=pax)
            else:
                raise Refused(f"unsupported member type {t!r}")
        except Refused as exc:
            raise self._refuse(m, str(exc)) from None

    def _sparse(self, parser: TarParser, m: Member, parts: tuple[str, ...], name: str, pax: dict[bytes, bytes],
                emitter: PaxEmitter) -> None:
        """Re-emit as GNU sparse 1.0 (map, then data chunks), so holes stay holes on disk."""
        end = 0
        for offset, length in m.sparse:
            if offset < end or length < 0 or offset + length > m.size:
                raise Refused("its sparse map is out of order or out of bounds")
            end = offset + length
        mapping = emit.sparse_map(m.sparse)
        pax.update({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0",
                    b"GNU.sparse.name": name.encode("utf-8", "surrogateescape"),
                    b"GNU.sparse.realsize": b"%d" % m.size})
        emitter.header(name="/".join([*parts[:-1], "GNUSparseFile.0", parts[-1]]), typeflag=emit.REGULAR,
                       mode=m.mode, uid=m.uid, gid=m.gid, mtime=m.mtime, size=len(mapping) + m.stored, pax=pax)
        emitter.put(mapping)
        for piece in parser.pieces(m.stored):
            emitter.put(piece)
        emitter.pad(m.stored)

    def _apply_delete_list(self, parser: TarParser, m: Member) -> None:
        if m.sparse is not None or m.type != tarparse.REGULAR:
            raise self._refuse(m, "a delete list must be a plain regular member")
        if m.size > DELETED_LIST_MAX:
            raise self._refuse(m, f"a delete list of {m.size} bytes is larger than {DELETED_LIST_MAX}")
        data = parser.read(m.size)
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


def _has_default_acl(path: Path) -> bool:
    try:
        return bool(os.getxattr(path, "system.posix_acl_default", follow_symlinks=False))
    except OSError:  # ENODATA: none; ENOTSUP: the filesystem has no ACLs
        return False


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
                    max_uncompressed: int | None = None, acls: bool = True) -> ExtractStats:
    """Verify the object read from `reader` and apply it to `dest` (a staging directory, created if missing).

    `progress` is called with the object bytes read so far. `max_uncompressed` caps the tar stream size.
    `expected_sha256=None` is for a stream whose digest the sender only knows at its end (move): the
    caller must compare the returned `sha256` with the sender's before trusting `dest`.
    `acls=False` when the manifest says no member carries ACLs: tar runs without --acls, and a member
    that does carry them is refused.
    Raises IntegrityError (exit 6) for what the object holds (hash or size mismatch, corruption, hostile
    member, decompression bomb, wrong identity), ArchiveError when GNU tar itself fails.
    """
    if encrypted and identity_file is None:
        raise UsageError("this snapshot is encrypted: an age identity file is needed to restore it",
                         hint="pass --identity FILE (the age or ssh key matching the plan's recipients)")
    dest = Path(dest)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = _Source(reader)
    run = _Extraction(dest, source, expected_sha256=expected_sha256, expected_size=expected_size,
                      identity_file=identity_file, encrypted=encrypted, max_uncompressed=max_uncompressed,
                      progress=progress, acls=acls)
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
        if run.prefetch is not None:
            run.prefetch.stop()
        close_all(run.children, run.threads)
    return ExtractStats(sha256=source.hash.hexdigest(), size=source.count, uncompressed=run.uncompressed,
                        files=run.files, deleted=run.deleted, patched=run.patcher.applied)
