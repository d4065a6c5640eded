"""Crash journal: what a running operation must undo if it dies, and the registry of those undos.

Written before each risky step, so `migrator recover` (and the start of any next operation) can restart
stopped services or roll a half-done deploy back to the containerless state, even after SIGKILL. Each
module that writes an undo fact registers its undo here with `@undo(key)`, beside the code that notes it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from migrator.state import registry
from migrator.state.files import read_json, write_json

# An undo gets the fact its operation noted and a line reporter; it returns what it did, in one line.
Undo = Callable[[dict, Callable[[str], None]], str]
UNDOS: dict[str, Undo] = {}


def undo(key: str) -> Callable[[Undo], Undo]:
    """Register the undo of the journal fact `key` (a decorator)."""
    def register(fn: Undo) -> Undo:
        UNDOS[key] = fn
        return fn
    return register


def _path() -> Path:
    return registry.JOURNAL.path


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
