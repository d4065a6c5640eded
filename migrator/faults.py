"""Named points where tests make migrator fail on purpose (fault injection).

Each costs one dict lookup in production; MIGRATOR_KILL_AT and MIGRATOR_FAIL_AT switch them on."""

from __future__ import annotations

import errno
import os
import signal

KILL_AT_ENV = "MIGRATOR_KILL_AT"
FAIL_AT_ENV = "MIGRATOR_FAIL_AT"


def checkpoint(name: str) -> None:
    """SIGKILL this process here when MIGRATOR_KILL_AT names `name` (e.g. "backup.services-stopped").

    Exactly like a power cut or an OOM kill, so tests can prove the journal and `migrator recover` keep
    every promise."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    """Raise an I/O error (EIO) here when MIGRATOR_FAIL_AT names `name` (e.g. "restore.sync").

    A disk that fails a write where no real one can be made to."""
    if os.environ.get(FAIL_AT_ENV) == name:
        raise OSError(errno.EIO, os.strerror(errno.EIO), f"failpoint {name}")
