"""The lab's process helpers: running a command checked, and stopping a server process it started (moto,
sshd's anchor, dockerd): SIGTERM, a grace period, then SIGKILL."""

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


def run_checked(argv: list[str], *, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command (no shell), capturing output; raise with its stderr when `check` fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc
