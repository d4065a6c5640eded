"""Crash journal: what a running operation must undo if it dies. Written before each risky step, so
`migrator recover` (and the start of any next operation) can restart stopped services or roll a
half-done deploy back to the containerless state, even after SIGKILL."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from migrator.state.files import read_json, write_json
from migrator.state.paths import state_dir


def _path() -> Path:
    return state_dir() / "journal.json"


def load() -> dict | None:
    return read_json(_path())


def clear() -> None:
    try:
        _path().unlink()
    except FileNotFoundError:
        pass


class Journal:
    """One open operation's record: verb, pid, and undo facts (e.g. stopped services, deploy started)."""

    def __init__(self, verb: str):
        self.entry = {"verb": verb, "pid": os.getpid(), "started": time.time(), "undo": {}}

    def note(self, key: str, value) -> None:
        self.entry["undo"][key] = value
        write_json(_path(), self.entry)

    def forget(self, key: str) -> None:
        self.entry["undo"].pop(key, None)
        write_json(_path(), self.entry)


@contextmanager
def open_journal(verb: str):
    """Journal for the duration of an operation. It is removed at the end only when nothing is left to
    undo: the operation `forget`s each undo fact once it has been undone or is no longer needed. A crash
    (SIGKILL, power loss) or a failed rollback leaves it behind for `recover`."""
    journal = Journal(verb)
    write_json(_path(), journal.entry)
    try:
        yield journal
    finally:
        if not journal.entry["undo"]:
            clear()
