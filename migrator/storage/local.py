"""file:// snapshot store: a directory tree on a local (or locally mounted) filesystem.

Crash-safe: partial name, fsync, rename, fsync of the directory, so after a crash there is the whole
object or a hidden partial that prune removes. OSErrors become ObjectMissing or Unreachable."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from migrator.durable import fsync_dir, start_writeback
from migrator.errors import IntegrityError, ObjectMissing, Unreachable, UsageError
from migrator.storage.base import (
    STREAM_BUFFER,
    SnapshotStore,
    WriterBase,
    check_key,
    is_hidden_name,
    partial_name,
    probe_name,
    read_limited,
    too_large,
)

# Mode for new directories and files: snapshots hold whole databases, so only the owner may read them.
DIR_MODE = 0o700
FILE_MODE = 0o600

# Distinguishes concurrent writers of one process (threads) so they never share a partial file.
_writer_ids = itertools.count(1)

WRITEBACK_STEP = 8 * 1024 * 1024
def _makedirs_durable(path: Path) -> None:
    """mkdir -p that fsyncs the parent of every directory it creates, so a crash cannot lose them."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


class _LocalWriter(WriterBase):
    def __init__(self, store: LocalStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._final = store._path(key)
        try:
            _makedirs_durable(self._final.parent)
            self._partial = self._final.with_name(partial_name(self._final.name, str(next(_writer_ids))))
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise store._unreachable("cannot create", key, exc) from exc
        self._file = open(fd, "wb", buffering=STREAM_BUFFER)  # closed in commit/abort
        self._key = key
        self._written = 0
        self._handed = 0  # bytes before this offset are already on their way to the disk

    def write(self, b: bytes) -> None:
        self._ensure_open()
        try:
            self._file.write(b)
            self._written += len(b)
            if self._written - self._handed >= WRITEBACK_STEP:
                self._file.flush()
                start_writeback(self._file.fileno(), self._handed, self._written - self._handed)
                self._handed = self._written
        except OSError as exc:
            self.abort()
            raise self._store._unreachable("cannot write", self._key, exc) from exc

    def commit(self) -> None:
        self._ensure_open()
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._partial, self._final)
            fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise self._store._unreachable("cannot commit", self._key, exc) from exc
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass  # the write already failed; removing the partial is what matters
        try:
            self._partial.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # debris: hidden from listings and removed by delete_prefix/prune


class LocalStore(SnapshotStore):
    """Snapshot store rooted at an absolute local directory."""

    def __init__(self, url: str, *, options: dict[str, Any] | None = None, retry_policy: Any = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise UsageError(f"bad file store URL {url!r}", hint="use file:///absolute/path")
        self.root = Path(unquote(parts.path))
        self.url = f"file://{self.root}"
        # options and retry_policy are accepted for interface symmetry: local I/O is not retried
        # (a local EIO or ENOSPC does not heal by waiting a second).

    # -- helpers ------------------------------------------------------------------------------------

    def _path(self, key: str, *, allow_empty: bool = False) -> Path:
        try:
            rel = check_key(key, allow_empty=allow_empty)
        except ValueError as exc:
            raise IntegrityError(f"{self.url}: {exc}") from exc
        return self.root / rel if rel else self.root

    def _unreachable(self, action: str, key: str, exc: OSError) -> Unreachable:
        return Unreachable(
            f"store {self.url}: {action} {key or '/'}: {exc.strerror or exc}",
            hint="check that the directory exists, is writable and has free space",
        )

    # -- interface ----------------------------------------------------------------------------------

    def open_writer(self, key: str) -> _LocalWriter:
        return _LocalWriter(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb", buffering=STREAM_BUFFER)  # the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectMissing(f"{self.url}: no object {key}") from exc
        except OSError as exc:
            raise self._unreachable("cannot read", key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_writer(key) as w:
            w.write(data)
            w.commit()

    def get_bytes(self, key: str, max_size: int) -> bytes:
        with self.open_reader(key) as f:
            try:
                too_large(os.fstat(f.fileno()).st_size, max_size, f"{self.url}: {key}")
                return read_limited(f, max_size, f"{self.url}: {key}")
            except OSError as exc:
                raise self._unreachable("cannot read", key, exc) from exc

    def size(self, key: str) -> int | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._unreachable("cannot stat", key, exc) from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list_dir(self, prefix: str) -> list[str]:
        path = self._path(prefix, allow_empty=True)
        try:
            with os.scandir(path) as it:
                return sorted(e.name for e in it if not is_hidden_name(e.name))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._unreachable("cannot list", prefix, exc) from exc

    def mtime(self, key_or_prefix: str) -> float | None:
        path = self._path(key_or_prefix, allow_empty=True)
        try:
            newest = path.stat().st_mtime
            if path.is_dir():
                for dirpath, dirnames, filenames in os.walk(path):
                    for name in itertools.chain(dirnames, filenames):
                        try:
                            newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                        except FileNotFoundError:
                            continue  # removed while we walked
            return newest
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._unreachable("cannot stat", key_or_prefix, exc) from exc

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)  # empty prefix refused: never delete the whole store
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            fsync_dir(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._unreachable("cannot delete", prefix, exc) from exc

    def check(self) -> None:
        probe = self.root / probe_name()
        try:
            _makedirs_durable(self.root)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                os.write(fd, b"migrator store check\n")  # no fsync: every commit fsyncs (and reports)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise Unreachable(f"store {self.url} is not writable: {exc.strerror}",
                                  hint="fix the directory's permissions or mount it read-write") from exc
            raise self._unreachable("cannot write to", "", exc) from exc

