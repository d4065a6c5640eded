"""Durability: what must be on disk before a rename or a delete makes new data the only copy.

- `fsync_dir(path)`: the entries created, renamed or removed in directory `path` survive a crash;
- `sync_filesystem(path)`: every dirty page of the filesystem holding `path` reaches the disk
  (syncfs(2)). A staged tree of thousands of files becomes durable in one call instead of an fsync per
  file; a restore calls it before the swap, while services still run, so it costs no downtime.
Errors are raised as OSError: a write error the kernel reports here (EIO, ENOSPC) means the data is not
safe, so the caller must not go on to the rename.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _syncfs():
    """glibc's syncfs (Python's os module has no binding); ctypes is loaded on first use, not at start-up."""
    import ctypes

    func = ctypes.CDLL(None, use_errno=True).syncfs
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def sync_filesystem(path: Path | str) -> None:
    """syncfs(2) on the filesystem that holds `path` (a directory or file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs()(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)
