"""Named checkpoints where tests kill migrator on purpose (fault injection, issue 8).

`checkpoint("backup.services-stopped")` does nothing unless MIGRATOR_KILL_AT names that checkpoint;
then the process SIGKILLs itself right there, exactly like a power cut or an OOM kill, so tests can prove
that the journal and `migrator recover` restore every promise. Costs one dict lookup in production."""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "MIGRATOR_KILL_AT"


def checkpoint(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
