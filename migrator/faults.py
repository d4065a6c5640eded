"""Named points where tests make migrator fail on purpose (fault injection, issue 8).

`checkpoint("backup.services-stopped")` does nothing unless MIGRATOR_KILL_AT names that checkpoint;
then the process SIGKILLs itself right there, exactly like a power cut or an OOM kill, so tests can prove
that the journal and `migrator recover` restore every promise. `failpoint("restore.sync")` raises an
I/O error (EIO) when MIGRATOR_FAIL_AT names it: a disk that fails a write where no real one can be made
to. Each costs one dict lookup in production."""

from __future__ import annotations

import errno
import os
import signal

KILL_AT_ENV = "MIGRATOR_KILL_AT"
FAIL_AT_ENV = "MIGRATOR_FAIL_AT"


def checkpoint(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    if os.environ.get(FAIL_AT_ENV) == name:
        raise OSError(errno.EIO, os.strerror(errno.EIO), f"failpoint {name}")
