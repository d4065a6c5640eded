"""One operation at a time per VSN: an flock on <state dir>/lock.

The kernel drops it when the holder dies (even by SIGKILL), so a stale lock cannot block the next run."""

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


def _flock_holders(path: Path) -> list[int]:
    """Pids holding an flock on `path`, from /proc/locks (major:minor:inode matched to the file)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (a blocked waiter has "->" after the number)
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == ident and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)[:120] or "?"


def _holder(path: Path) -> str:
    """Who holds the lock: the verb a migrator holder wrote, checked against the kernel's list of holders,
    so that another program holding the file (e.g. `flock` in a script) is named as itself."""
    try:
        written = path.read_text().strip()
    except OSError:
        written = ""
    pids = _flock_holders(path)
    if not pids:
        return written or "unknown"
    if written and any(f"(pid {pid})" in written for pid in pids):
        return written
    return ", ".join(f"pid {pid} ({_command(pid)})" for pid in pids)


def held_by() -> str | None:
    """Who holds the operation lock now (as a refusal would name it), or None when it is free."""
    path = state_dir() / "lock"
    return _holder(path) if _flock_holders(path) else None


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
