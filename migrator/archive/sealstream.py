"""A plain byte stream (a database dump) as a snapshot object: zstd -> (age) -> sha256, and back.

Opening checks size and sha256 before a byte reaches a database (a load cannot be undone halfway) and
never yields more than the manifest's plain size (no decompression bomb)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from migrator.archive._proc import Child, close_all, grow_pipe
from migrator.archive.capture import OUTPUT_CHUNK, READ_CHUNK, ZSTD_JOB_SIZE, Sink, _Output, age_encrypt_argv
from migrator.errors import ArchiveError, IntegrityError
from migrator.threads import Pump


@dataclass(frozen=True)
class StreamStats:
    sha256: str  # of the final object, hex
    size: int  # bytes of the final object
    uncompressed: int  # bytes of the plain stream


def seal_stream(produce: Callable[[Callable[[bytes], None]], None], sinks: list[Sink], *, level: int = 3,
                recipients: tuple[str, ...] | list[str] = (), threads: int = 0) -> StreamStats:
    """`produce(write)` calls `write(chunk)` with every chunk of the plain stream and returns at its end
    (raising stops the seal: the sinks then hold a partial object the caller must discard)."""
    params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads if threads else -1,
                                                             job_size=ZSTD_JOB_SIZE, write_checksum=True)
    out = _Output(sinks)
    children: list[Child] = []
    pumps: list[Pump] = []
    plain = 0
    finished = False
    try:
        age = None
        if recipients:
            age = Child(age_encrypt_argv(recipients), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            children.append(age)
            grow_pipe(age.stdout)

            def drain() -> None:
                while chunk := age.stdout.read(READ_CHUNK):
                    out.write(chunk)

            pumps.append(Pump("seal-age-output", drain))
            pumps[-1].start()
        zw = zstandard.ZstdCompressor(compression_params=params).stream_writer(
            age.stdin if age is not None else out, write_size=OUTPUT_CHUNK, closefd=False)

        def write(chunk: bytes) -> None:
            nonlocal plain
            plain += len(chunk)
            zw.write(chunk)

        produce(write)
        zw.flush(zstandard.FLUSH_FRAME)
        if age is not None:
            age.stdin.close()  # only a complete stream gets age's final chunk
            pumps[0].join()
            if pumps[0].error is not None:
                raise pumps[0].error
            if age.wait() != 0:
                raise ArchiveError(f"age could not encrypt the stream: {age.describe_failure()}",
                                   hint="check the age recipients in the plan")
        finished = True
        out.finish()
    finally:
        if not finished:
            out.abort()
            for child in children:  # never let age finalise a partial stream
                if child.proc.poll() is None:
                    child.proc.kill()
        close_all(children, pumps)
    return StreamStats(sha256=out.hash.hexdigest(), size=out.size, uncompressed=plain)


def check_object(reader: BinaryIO, *, size: int, sha256: str, where: str) -> None:
    """Read the whole object once: its size and sha256 must be the manifest's (IntegrityError otherwise)."""
    digest, got = hashlib.sha256(), 0
    while chunk := reader.read(READ_CHUNK):
        got += len(chunk)
        if got > size:
            raise IntegrityError(f"{where} is larger than its manifest says ({size} bytes)")
        digest.update(chunk)
    if got != size or digest.hexdigest() != sha256:
        raise IntegrityError(f"{where} does not match its manifest (size or sha256): the store holds a "
                             f"different object", hint="verify the snapshot; restore from another store")


def open_stream(reader: BinaryIO, *, plain_size: int, encrypted: bool, identity_file: Path | None,
                where: str) -> Iterator[bytes]:
    """The plain bytes of an object already checked by `check_object` (read it afresh), chunk by chunk."""
    children: list[Child] = []
    pumps: list[Pump] = []
    try:
        source = reader
        if encrypted:
            if identity_file is None:
                raise IntegrityError(f"{where} is encrypted and no identity is at hand",
                                     hint="set backup.encryption.identity_file in the plan")
            age = Child(["age", "--decrypt", "--identity", os.fspath(identity_file)], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
            children.append(age)

            def feed() -> None:
                try:
                    while chunk := reader.read(READ_CHUNK):
                        age.stdin.write(chunk)
                finally:
                    try:
                        age.stdin.close()
                    except OSError:
                        pass

            pumps.append(Pump("open-age-input", feed))
            pumps[0].start()
            source = age.stdout
        produced = 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(source, read_size=READ_CHUNK, closefd=False) as zr:
                while chunk := zr.read(READ_CHUNK):
                    produced += len(chunk)
                    if produced > plain_size:
                        raise IntegrityError(f"{where} holds more than its recorded {plain_size} plain bytes")
                    yield chunk
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{where} is not a valid zstd stream: {exc}") from None
        if produced != plain_size:
            raise IntegrityError(f"{where} holds {produced} plain bytes, its manifest says {plain_size}")
        for pump in pumps:
            pump.join()
            if pump.error is not None and not isinstance(pump.error, BrokenPipeError):
                raise pump.error
        for child in children:
            if child.wait() != 0:
                raise IntegrityError(f"age could not decrypt {where}: {child.describe_failure()}",
                                     hint="check backup.encryption.identity_file")
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
        close_all(children, pumps)
