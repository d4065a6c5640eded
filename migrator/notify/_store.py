"""Read-modify-write of a small JSON state file under an flock.

So a cron'd health check and a backup finishing at the same moment cannot lose each other's update."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from migrator.state.files import read_json, write_json


@contextmanager
def locked_json(path: Path, default: dict):
    """Yields the file's content (or a copy of `default`); whatever the caller leaves in it is written back."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = read_json(path, None)
        if not isinstance(data, dict):
            data = dict(default)
        yield data
        write_json(path, data)
    finally:
        os.close(fd)
