"""The stack's lifecycle state (six of them), changed only through TRANSITIONS.

Transitions happen under the operation lock, so a pending state a lock holder sees belongs to a dead run:
`settle_interrupted` turns it into Failure. The table: docs/operations.md#stack-states."""

from __future__ import annotations

import time
from contextlib import contextmanager

from migrator.errors import StateError
from migrator.state import deployed, registry
from migrator.state.files import read_json, write_json

RUNNING = "Running"
FAILURE = "Failure"
CREATE_PENDING = "CreatePending"
UPDATE_PENDING = "UpdatePending"
DELETE_PENDING = "DeletePending"
ARCHIVED = "Archived"
NONE = None  # no stack: never deployed here, or cleaned up

STATES = (RUNNING, FAILURE, CREATE_PENDING, UPDATE_PENDING, DELETE_PENDING, ARCHIVED)
PENDING = (CREATE_PENDING, UPDATE_PENDING, DELETE_PENDING)

# from -> allowed next states. Deploy (and unarchive) go through CreatePending, upgrade through
# UpdatePending, teardown/archive/cleanup through DeletePending. DeletePending -> None is cleanup's end.
TRANSITIONS: dict[str | None, tuple[str | None, ...]] = {
    NONE: (CREATE_PENDING, DELETE_PENDING),
    CREATE_PENDING: (RUNNING, FAILURE),
    UPDATE_PENDING: (RUNNING, FAILURE),
    DELETE_PENDING: (ARCHIVED, FAILURE, NONE),
    RUNNING: (CREATE_PENDING, UPDATE_PENDING, DELETE_PENDING),
    FAILURE: (CREATE_PENDING, UPDATE_PENDING, DELETE_PENDING),
    ARCHIVED: (CREATE_PENDING, DELETE_PENDING),
}

# The pending state a verb enters, and where it ends on success / on failure.
VERBS: dict[str, tuple[str, str | None, str]] = {
    "deploy": (CREATE_PENDING, RUNNING, FAILURE),
    "unarchive": (CREATE_PENDING, RUNNING, FAILURE),
    "upgrade": (UPDATE_PENDING, RUNNING, FAILURE),
    "teardown": (DELETE_PENDING, ARCHIVED, FAILURE),
    "archive": (DELETE_PENDING, ARCHIVED, FAILURE),
    "cleanup": (DELETE_PENDING, NONE, FAILURE),
    # The source of a finished move: containers gone (or stopped with --keep-source), data kept.
    "move": (DELETE_PENDING, ARCHIVED, FAILURE),
}


class InvalidTransition(StateError):
    """The stack's state does not allow this command now (exit 1, nothing was done)."""

    default_hint = "`migrator status` shows the stack state; see docs/operations.md 'Stack states' for what is allowed"


def _path():
    return registry.STACK_STATE.path


def load() -> dict:
    """{"state", "since", "verb", "previous", "error"}. A VSN deployed before stack states existed has no
    file: its deployment record tells Running (deployed) or Archived (plan remembered, containerless)."""
    rec = read_json(_path())
    if rec is not None:
        return rec
    info = deployed.current()
    if info is None:
        return {"state": NONE, "since": None, "verb": None, "previous": None, "error": None}
    state = RUNNING if info.get("deployed_at") else ARCHIVED
    return {"state": state, "since": info.get("deployed_at"), "verb": None, "previous": None, "error": None}


def current() -> str | None:
    return load()["state"]


def allowed(src: str | None, dst: str | None) -> bool:
    return dst in TRANSITIONS.get(src, ())


def transition(dst: str | None, verb: str, error: str | None = None) -> dict:
    rec = load()
    src = rec["state"]
    if not allowed(src, dst):
        raise InvalidTransition(f"stack is {src or 'absent'}: {verb} cannot move it to {dst or 'absent'}",
                                details=[f"from {src or 'absent'} allowed: "
                                         + ", ".join(s or "absent" for s in TRANSITIONS.get(src, ()))])
    new = {"state": dst, "since": time.time(), "verb": verb, "previous": src, "error": error}
    if dst is NONE:
        try:
            _path().unlink()
        except FileNotFoundError:
            pass
    else:
        write_json(_path(), new)
    return new


def settle_interrupted() -> str | None:
    """A pending state left by a dead run becomes Failure. Call only while holding the operation lock."""
    rec = load()
    if rec["state"] in PENDING:
        transition(FAILURE, rec.get("verb") or "recover", error=f"{rec.get('verb') or 'an operation'} was interrupted")
        return rec["state"]
    return None


def check_allowed(verb: str) -> None:
    """Raise InvalidTransition now if `verb` could not start from the current state."""
    pending_state = VERBS[verb][0]
    src = current()
    if src in PENDING:  # a dead run's leftover (we hold the lock): it would be settled to Failure first
        src = FAILURE
    if not allowed(src, pending_state):
        raise InvalidTransition(f"stack is {src or 'absent'}: {verb} is not allowed now",
                                details=[f"{verb} needs one of: "
                                         + ", ".join(s or "absent" for s, nxt in TRANSITIONS.items()
                                                     if pending_state in nxt and s not in PENDING)])


@contextmanager
def pending(verb: str):
    """Around the acting part of a lifecycle command: enter its pending state, then its end state on
    success or Failure (with the error) when anything is raised. Hold the operation lock around it."""
    enter, ok, failed = VERBS[verb]
    settle_interrupted()
    check_allowed(verb)
    transition(enter, verb)
    try:
        yield
    except BaseException as exc:
        transition(failed, verb, error=getattr(exc, "message", None) or str(exc) or type(exc).__name__)
        raise
    transition(ok, verb)
