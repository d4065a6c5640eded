"""`migrator recover` and `operation()`: the one place a killed run's leftovers are finished or undone.

`operation()` runs it first for every command that takes the lock; each verb registers its undo in the
journal. What is undone: docs/architecture.md#now."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

from migrator.stack.topology import Report, quiet
from migrator.state import journal, stackstate
from migrator.state.lock import operation_lock


@dataclass
class RecoverResult:
    """What recover did: whether a dead run's journal was there (and its verb), one line per action."""
    recovered: bool
    verb: str | None = None
    actions: list[str] = field(default_factory=list)
    spools_removed: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"recovered": self.recovered, "actions": self.actions, "spools_removed": self.spools_removed}
        return {**out, "verb": self.verb} if self.recovered else out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _load_undos() -> None:
    """Modules that note an undo fact register its undo when imported; import them only when a journal
    needs handling, so importing this module never drags in SSH or archive code."""
    from migrator.ops import deploy, move, restore, teardown, upgrade  # noqa: F401
    from migrator.stack import quiesce  # noqa: F401


def pending() -> dict | None:
    """The journal of a dead run, or None (no journal, or its owner still runs)."""
    entry = journal.load()
    if entry is None or _pid_alive(entry.get("pid", -1)) and entry.get("pid") != os.getpid():
        return None
    return entry


def recover(report: Report = quiet) -> RecoverResult:
    """Undo what the journal of a dead run lists, remove dead spools, settle the stack state. The caller
    holds the operation lock (so a pending stack state can only be the dead run's)."""
    from migrator.ops.backup import remove_dead_spools

    entry = pending()
    actions = []
    if entry is not None:
        _load_undos()
        unknown = []
        for key, fact in list(entry.get("undo", {}).items()):
            fn = journal.UNDOS.get(key)
            if fn is None:
                unknown.append(key)
                actions.append(f"unknown journal entry {key!r} left in the journal (written by another migrator version?)")
                continue
            actions.append(fn(fact, report))
            report(actions[-1])
        if not unknown:
            journal.clear()
    spools = remove_dead_spools()
    if spools:
        actions.append(f"removed the local spool of {len(spools)} killed backup(s): {', '.join(spools)}")
        report(actions[-1])
    stackstate.settle_interrupted()
    if entry is None:
        return RecoverResult(False, actions=actions, spools_removed=spools)
    return RecoverResult(True, entry.get("verb"), actions, spools)


@contextmanager
def operation(verb: str, wait: float = 0.0, report: Report = quiet, auto_recover: bool = True):
    """Every state-changing command runs inside this: the VSN lock (waiting up to `wait` seconds), then
    recovery of whatever a killed earlier run left in the journal."""
    with operation_lock(verb, wait):
        if auto_recover and pending() is not None:
            report("a previous run was interrupted; recovering first")
            recover(report)
        yield
