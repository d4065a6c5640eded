"""Durability: what must be on disk before a rename or a delete makes new data the only copy.

Errors are raised as OSError: a write error the kernel reports here (EIO, ENOSPC) means the data is not
safe, so the caller must not go on to the rename."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make the entries created, renamed or removed in directory `path` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait


@cache
def _libc():
    """glibc's syncfs and sync_file_range (Python's os module binds neither); ctypes is loaded on first
    use, not at start-up. The interpreter is linked against libc, so CDLL(None) finds them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syncfs.argtypes = [ctypes.c_int]
    libc.syncfs.restype = ctypes.c_int
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return libc


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of `fd` to disk now, without waiting (sync_file_range). Only
    an optimisation: errors are ignored (the fsync that commits the file reports any real write error)."""
    _libc().sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def sync_filesystem(path: Path | str) -> None:
    """syncfs(2) on the filesystem that holds `path` (a directory or file): every dirty page reaches the disk.

    A staged tree of thousands of files becomes durable in one call instead of an fsync per file; a restore
    calls it before the swap, while services still run, so it costs no downtime."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc().syncfs(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)
