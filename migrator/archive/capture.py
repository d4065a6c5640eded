"""Capture: one archive object per data directory, pushed tar -> zstd -> (age) -> sha256 -> every sink.

Memory stays flat whatever the data size: no temp copy, only fixed-size buffers in flight. On error the
sinks may hold a partial object the caller must discard; a capture whose tar failed is never finalised
(no zstd frame end, no age final chunk), so a partial object cannot pass for a whole one."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard

from migrator.archive._proc import Child, Stage, close_all, grow_pipe
from migrator.archive.policy import Refused, member_parts
from migrator.archive.tarstream import CaptureWalker, DataSink, deleted_member
from migrator.errors import ArchiveError
from migrator.threads import Pump

# Bytes read from tar per step: large enough that per-chunk Python work is noise next to compression,
# small enough that memory stays flat (zstd's own buffers dominate: a few MiB per worker).
READ_CHUNK = 1024 * 1024
# Input per zstd worker job. libzstd's default for level 3 is 8 MiB, and its buffer pool keeps several jobs'
# input and output per worker: ~65 MB of a capture's RSS with 2 workers. 1 MiB jobs keep that at ~20 MB
# with the same ratio on our data (jobs still overlap their windows) and the same speed (bench/).
ZSTD_JOB_SIZE = 1024 * 1024
# zstd output handed to the next stage (age or the sinks) in pieces of at most this size.
OUTPUT_CHUNK = 1024 * 1024
# Compressed chunks queued for the output stage (hash + sinks): enough to ride out a slow sink write.
OUTPUT_DEPTH = 8
# GNU tar exit status 1 means "some file changed while being read". Expected while services run
# (phase 1); phase 2 archives those files again with the services stopped. Status 2 is fatal.
TAR_FILES_CHANGED = 1
# Written before tar's own stream in member mode: names go in batches of about this size.
MEMBER_BATCH = 256 * 1024
AGE_RECIPIENT_PREFIXES = ("age1", "ssh-ed25519 ", "ssh-rsa ")


class Sink(Protocol):
    """Where the archive object goes: a store writer, a spool file. Called from one thread, the output stage."""

    def write(self, b: bytes) -> None: ...


@dataclass(frozen=True)
class ArchiveStats:
    sha256: str  # of the final object (after compression/encryption), hex
    size: int  # bytes of the final object
    uncompressed: int  # bytes of the tar stream
    files: int  # members archived (the delete list not counted, patch members counted)
    warnings: tuple[str, ...] = ()  # tar's non-fatal diagnostics, e.g. "file changed as we read it"
    skipped: tuple[str, ...] = ()  # device nodes and FIFOs left out: restore refuses them
    patched: int = 0  # files sent as block patches (patch.py), included in `files`
    acls: int = 0  # members carrying POSIX ACLs (restore skips tar's --acls when none: a syscall per file)


class _Output:
    """The end of the pipeline: hash and count every byte, then hand it to every sink.

    Hashing and the sinks run in their own thread (`Stage`), so they overlap with compression instead
    of taking turns with it in one thread; a few chunks in flight at most. `finish` waits for the last
    byte to reach every sink and raises a sink's error; `abort` stops on an error path.
    """

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = list(sinks)
        self.hash = hashlib.sha256()
        self.size = 0
        self._stage = Stage("archive-output", self._consume, OUTPUT_DEPTH)

    def write(self, data: bytes) -> None:  # zstandard hands over a fresh bytes object per call
        self.size += len(data)
        self._stage.put(data)

    def _consume(self, data: bytes) -> None:
        self.hash.update(data)
        for sink in self.sinks:
            sink.write(data)

    def flush(self) -> None:  # zstandard's stream_writer calls it on frame flush
        pass

    def finish(self) -> None:
        self._stage.close()

    def abort(self) -> None:
        self._stage.abort()


def tar_create_argv(root: Path, from_list: bool) -> list[str]:
    argv = ["tar", "--create", "--format=posix", "--numeric-owner", "--xattrs", "--xattrs-include=*",
            "--acls", "--sparse", "--one-file-system", "--file=-", "--directory", os.fspath(root)]
    if from_list:
        # Names are literal NUL-terminated paths: no option parsing, no unquoting, no recursion.
        return [*argv, "--no-recursion", "--null", "--verbatim-files-from", "--no-unquote", "--files-from=-"]
    return [*argv, "."]


def age_encrypt_argv(recipients: Sequence[str]) -> list[str]:
    argv = ["age", "--encrypt"]
    for r in recipients:
        if not isinstance(r, str) or not r.startswith(AGE_RECIPIENT_PREFIXES) or any(c in r for c in "\n\r\0"):
            raise ArchiveError(f"not an age recipient (age1... or an ssh public key): {str(r)[:40]!r}",
                               hint="check backup.encryption.age_recipients in the plan")
        argv += ["--recipient", r]
    return argv


def _member_list(members: Sequence[str]) -> list[bytes]:
    batches, batch, size = [], [], 0
    for name in members:
        try:
            parts = member_parts(name)
        except Refused as exc:
            raise ArchiveError(f"cannot archive member {name!r}: {exc}", hint="this is a bug in the caller") from None
        item = ("/".join(parts) if parts else ".").encode("utf-8", "surrogateescape") + b"\0"
        batch.append(item)
        size += len(item)
        if size >= MEMBER_BATCH:
            batches.append(b"".join(batch))
            batch, size = [], 0
    if batch:
        batches.append(b"".join(batch))
    return batches


def _feed(pipe, batches: list[bytes]) -> None:
    try:
        for b in batches:
            pipe.write(b)
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _tar_lines(tar: Child) -> list[str]:
    return [ln for ln in tar.stderr_lines() if not ln.startswith("tar: Exiting with failure status")]


class _Capture:
    """State of one write_archive call; `produce` is the tar -> walker -> zstd leg."""

    def __init__(self, root: Path, walker: CaptureWalker, prefix: Iterable[bytes], level: int, threads: int,
                 progress: Callable[[int], None] | None):
        self.root = root
        self.walker = walker
        self.prefix = prefix
        self.level = level
        self.threads = threads
        self.progress = progress
        self.uncompressed = 0
        self.warnings: tuple[str, ...] = ()

    def produce(self, tar: Child, target, report_progress: bool) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(self.level, threads=self.threads,
                                                                 job_size=ZSTD_JOB_SIZE, write_checksum=True)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        zw = cctx.stream_writer(target, write_size=OUTPUT_CHUNK, closefd=False)
        for piece in self.prefix:
            zw.write(piece)
            self.uncompressed += len(piece)
        read = tar.stdout.read
        feed = self.walker.feed
        while chunk := read(READ_CHUNK):
            self.uncompressed += len(chunk)
            for segment in feed(chunk):
                zw.write(segment)
            if report_progress and self.progress is not None:
                self.progress(self.uncompressed)
        rc = tar.wait()
        if rc not in (0, TAR_FILES_CHANGED):
            lines = _tar_lines(tar)
            detail = "; ".join(lines[:3]) if lines else f"tar failed ({tar.describe_failure()})"
            raise ArchiveError(f"cannot archive {self.root}: {detail}",
                               hint="fix the file named above (permissions, I/O error) and retry", details=lines)
        self.warnings = tuple(_tar_lines(tar))
        self.walker.finish()
        zw.flush(zstandard.FLUSH_FRAME)


def write_archive(root: Path, sinks: list[Sink], *, members: list[str] | None = None, deleted: Sequence[str] = (),
                  level: int = 3, threads: int = 0, recipients: Sequence[str] = (),
                  progress: Callable[[int], None] | None = None,
                  on_member: Callable[[str], None] | None = None,
                  on_data: Callable[[str, int], DataSink | None] | None = None,
                  prefix: Iterable[bytes] = ()) -> ArchiveStats:
    """Archive `root` (whole tree, or only `members`, paths relative to root) into every sink.

    `deleted` (phase 2) goes first as the `.migrator-deleted` member. `threads=0` means one zstd worker
    per CPU. `recipients` (age1... or ssh public keys) turn on age encryption. `progress` is called
    with the tar-stream bytes processed so far; `on_member` with each archived member's relative path
    ("." for the root) — phase 1 uses it to learn what was archived that its scan did not see. Sinks run
    in the output thread, one write at a time, all done when this returns; `progress` runs in the caller's
    thread; with recipients, `on_member` runs in the compressing thread.
    `on_data` and `prefix` are two-phase's (patch.py): a sink per plain regular member's data (phase 1's
    block digests), and members streamed after the delete list, before tar's stream (phase 2's patches).
    On error the sinks may hold a partial object: discard it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ArchiveError(f"cannot archive {root}: not a directory", hint="check the volume's data directory")
    age_argv = age_encrypt_argv(recipients) if recipients else None
    batches = _member_list(members) if members is not None else None
    head = [deleted_member(deleted)] if deleted else []
    walker = CaptureWalker(on_member, on_data)
    cap = _Capture(root, walker, itertools.chain(head, prefix), level, threads if threads else -1, progress)
    out = _Output(sinks)
    children: list[Child] = []
    threads_: list[Pump] = []
    finished = False
    try:
        tar = Child(tar_create_argv(root, batches is not None),
                    stdin=subprocess.PIPE if batches is not None else subprocess.DEVNULL, stdout=subprocess.PIPE)
        children.append(tar)
        grow_pipe(tar.stdout)
        if batches is not None:
            feeder = Pump("tar-member-list", lambda: _feed(tar.stdin, batches))
            threads_.append(feeder)
            feeder.start()
        if age_argv is None:
            cap.produce(tar, out, report_progress=True)
        else:
            _encrypt(cap, tar, age_argv, out, children, threads_)
        for t in threads_:
            t.join()
            if t.error is not None:
                raise t.error
        finished = True
        out.finish()
    finally:
        if not finished:
            out.abort()
        close_all(children, threads_)
    return ArchiveStats(sha256=out.hash.hexdigest(), size=out.size, uncompressed=cap.uncompressed,
                        files=walker.files, warnings=cap.warnings, skipped=tuple(walker.skipped),
                        acls=walker.acls)


def _encrypt(cap: _Capture, tar: Child, age_argv: list[str], out: _Output, children: list[Child],
             threads: list[Pump]) -> None:
    """tar -> zstd runs in a thread feeding age; this (the caller's) thread feeds age's output to the sinks."""
    age = Child(age_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    children.append(age)
    grow_pipe(age.stdout)

    def produce() -> None:
        try:
            cap.produce(tar, age.stdin, report_progress=False)
            age.stdin.close()  # only a complete stream gets age's final chunk
        except BaseException:
            if age.proc.poll() is None:
                age.proc.kill()  # never let age finalise a partial stream; also unblocks the reader below
            raise

    producer = Pump("archive-compress", produce)
    threads.append(producer)
    producer.start()
    reported = 0
    read = age.stdout.read
    while chunk := read(READ_CHUNK):
        out.write(chunk)
        if cap.progress is not None and cap.uncompressed != reported:
            reported = cap.uncompressed
            cap.progress(reported)
    producer.join()
    if isinstance(producer.error, BrokenPipeError):  # age went away first: its own message says why
        age.close()
        raise ArchiveError(f"age could not encrypt the archive: {age.describe_failure()}",
                           hint="check the age recipients in the plan")
    if producer.error is not None:
        raise producer.error
    if age.wait() != 0:
        raise ArchiveError(f"age could not encrypt the archive: {age.describe_failure()}",
                           hint="check the age recipients in the plan")
