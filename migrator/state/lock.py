"""One operation at a time per VSN: an flock on <state dir>/lock. The kernel drops it when the holder
dies (even by SIGKILL), so a stale lock cannot block the next run."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from migrator.errors import LockHeld
from migrator.state.paths import state_dir

# How often a waiting operation retries the lock: short enough to feel immediate, cheap on CPU.
LOCK_POLL_SECONDS = 0.2


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def operation_lock(verb: str, wait: float = 0.0):
    path = state_dir() / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + max(wait, 0.0)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(f"another migrator operation holds the lock: {_holder(path)}") from None
                time.sleep(LOCK_POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.write(fd, f"{verb} (pid {os.getpid()})\n".encode())
        yield
    finally:
        os.close(fd)  # releases the flock
