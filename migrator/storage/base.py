"""The SnapshotStore interface every backend implements, and the key rules they share.

Keys are checked (`check_key`), so a hostile manifest cannot reach outside the store root; an object is
visible only after `commit()`; errors leave a backend only as `migrator.errors` classes."""

from __future__ import annotations

import io
import os
import re
import secrets
from abc import ABC, abstractmethod
from typing import BinaryIO, Protocol, runtime_checkable

from migrator.errors import ObjectTooLarge

# Marker inside the temporary name a streaming write uses before commit (local and ssh backends).
PARTIAL_MARKER = ".partial-"
# Prefix of the probe object `check()` writes and deletes; hidden from listings like partials.
CHECK_PROBE_PREFIX = ".migrator-check-"
# Read/write buffer for streaming I/O: big enough to amortise syscalls and SFTP round trips,
# small enough that a 200 GB volume never costs more than a few MiB of memory.
STREAM_BUFFER = 1024 * 1024

_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\\]")


def check_key(key: str, *, allow_empty: bool = False) -> str:
    """Return `key` normalised (no trailing slash) if it is a safe relative POSIX path, else raise ValueError.

    Refused: absolute paths, `.`/`..`/empty components, backslashes and control characters. Keys come
    from our own code or from manifests read back from an untrusted store, so this is a security check.
    """
    stripped = key.rstrip("/")
    if stripped == "":
        if allow_empty:
            return ""
        raise ValueError("empty store key")
    if stripped.startswith("/") or _BAD_KEY_CHARS.search(stripped):
        raise ValueError(f"unsafe store key {key!r}")
    for part in stripped.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"unsafe store key {key!r}")
    return stripped


def is_hidden_name(name: str) -> bool:
    """True for names a listing must skip: in-progress partial uploads and `check()` probes."""
    return PARTIAL_MARKER in name or name.startswith(CHECK_PROBE_PREFIX)


def partial_name(name: str, unique: str | None = None) -> str:
    """The temporary name for `name` while it is being written by this process."""
    suffix = f"{os.getpid()}" if unique is None else f"{os.getpid()}-{unique}"
    return f"{name}{PARTIAL_MARKER}{suffix}"


def probe_name() -> str:
    """A fresh name for the object `check()` writes and deletes."""
    return f"{CHECK_PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def read_limited(stream: BinaryIO, max_size: int, what: str) -> bytes:
    """Read all of `stream` but refuse (ObjectTooLarge) once it exceeds `max_size` bytes."""
    data = stream.read(max_size + 1)
    if len(data) > max_size:
        raise ObjectTooLarge(f"{what} is larger than {max_size} bytes; refusing to read it")
    return data


def too_large(size: int, max_size: int, what: str) -> None:
    if size > max_size:
        raise ObjectTooLarge(f"{what} is {size} bytes, larger than the {max_size} bytes accepted; refusing to read it")


@runtime_checkable
class ObjectWriter(Protocol):
    """A streaming upload. Nothing is visible under the key until `commit()` returns."""

    def write(self, b: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class WriterBase(ABC):
    """Shared writer behaviour: context manager that aborts unless committed, and one-shot state."""

    def __init__(self) -> None:
        self._done = False

    @abstractmethod
    def write(self, b: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def _ensure_open(self) -> None:
        if self._done:
            raise ValueError("writer already committed or aborted")

    def __enter__(self) -> WriterBase:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Leaving the block without commit() (error or forgotten) must never publish half an object.
        if not self._done:
            self.abort()


class RawReader(io.RawIOBase):
    """Base for backend readers that implement `readinto`; `open_reader` wraps them in a BufferedReader."""

    def readable(self) -> bool:
        return True


class SnapshotStore(ABC):
    """One snapshot store, addressed by URL. Keys are relative POSIX paths under the URL's root.

    The contract between the snapshot code and the backends:
    - keys look like `<vsn>/<snapshot-id>/<volume>.tar.zst`; `check_key` refuses anything else, so a
      hostile manifest cannot make us read or write outside the store root;
    - a writer's object becomes visible only on `commit()` (all or nothing); until then it is invisible
      (S3 multipart) or a partial name `<name>.partial-<pid>[-<n>]` that `list_dir` never returns (local,
      ssh); `is_hidden_name` is the one test for such names;
    - errors leave a backend only as `migrator.errors` classes: `Unreachable` (exit 8) for a store that
      does not answer or refuses us, `ObjectMissing` / `ObjectTooLarge` (exit 6) for what it holds."""

    url: str

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """Streaming upload with flat memory; the object appears atomically on `commit()`."""

    @abstractmethod
    def open_reader(self, key: str) -> BinaryIO:
        """Streaming download (`read(n)`); raises ObjectMissing if absent. Close it when done."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object (manifest.json, plan.json) atomically."""

    @abstractmethod
    def get_bytes(self, key: str, max_size: int) -> bytes:
        """Fetch a small object; ObjectTooLarge if it exceeds `max_size`, ObjectMissing if absent."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes of the object at `key`; None if there is none."""

    @abstractmethod
    def list_dir(self, prefix: str) -> list[str]:
        """Sorted immediate child names under `prefix` ("" = store root); [] if none. Partials are hidden."""

    @abstractmethod
    def mtime(self, key_or_prefix: str) -> float | None:
        """Newest modification time (epoch seconds) of the object or anything under the prefix; None if absent."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix` (a snapshot directory), partials included. Missing = no-op."""

    def delete(self, key: str) -> None:
        """Remove one object. Missing = no-op. (A file-like store's delete_prefix takes a single file too.)"""
        self.delete_prefix(key)

    @abstractmethod
    def check(self) -> None:
        """Raise Unreachable unless the store answers and accepts a write (probe object written and removed)."""

    def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
