"""state.lock: one operation at a time, and the refusal names the real holder (a running migrator by its verb,
anything else by its pid and command line), never a stale name left in the lock file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from migrator.errors import LockHeld
from migrator.state.lock import operation_lock


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path))
    return tmp_path


def hold(argv: list[str]) -> subprocess.Popen:
    """Start a holder that prints one line once it has the lock, then waits for stdin to close."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(10)


def test_a_migrator_holder_is_named_by_its_verb(state):
    code = ("from migrator.state.lock import operation_lock\nimport sys\n"
            "with operation_lock('backup'):\n    print('locked', flush=True)\n    sys.stdin.read()\n")
    proc = hold([sys.executable, "-c", code])
    try:
        with pytest.raises(LockHeld, match=rf"backup \(pid {proc.pid}\)"), operation_lock("restore"):
            pass
    finally:
        release(proc)
    with operation_lock("restore"):  # released with its holder
        assert (state / "lock").read_text() == f"restore (pid {os.getpid()})\n"


def test_another_program_holding_the_file_is_named_as_itself_not_by_the_stale_text(state):
    with operation_lock("backup"):
        pass  # leaves "backup (pid <ours>)" in the file
    proc = hold(["flock", str(state / "lock"), "sh", "-c", "echo locked; cat"])
    try:
        with pytest.raises(LockHeld) as info, operation_lock("restore"):
            pass
    finally:
        release(proc)
    message = info.value.message
    assert "backup" not in message
    assert "flock" in message or "sh -c" in message  # flock itself, or the command it runs, holds it
