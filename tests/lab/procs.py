"""Stopping a server process the lab started (moto, sshd's anchor): SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess

STOP_TIMEOUT = 10.0


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """Stop `proc` and reap it; a no-op when it has already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
