"""Every state-changing operation runs inside `operation()`: it takes the VSN lock (waiting up to
`wait` seconds), then finishes or undoes whatever a killed earlier run left in the journal."""

from __future__ import annotations

from contextlib import contextmanager

from migrator.ops import recover
from migrator.ops.stack import Report, quiet
from migrator.state.lock import operation_lock


@contextmanager
def operation(verb: str, wait: float = 0.0, report: Report = quiet, auto_recover: bool = True):
    with operation_lock(verb, wait):
        if auto_recover and recover.pending() is not None:
            report("a previous run was interrupted; recovering first")
            recover.recover(report)
        yield
