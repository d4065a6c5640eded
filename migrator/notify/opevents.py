"""The events of the one operation this process runs: begin, step, progress, finish.

Like the history, this is bookkeeping: nothing here may change or delay the operation. Every failure is
caught and comes back as one warning from `finish`."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from migrator.notify import events, outbound
from migrator.state import deployed, history, registry, stackstate
from migrator.state.files import read_json

# Read-only queries and internal plumbing emit nothing (`health` does: a ping on health is a dead-man
# switch for the health cron job itself).
SILENT = {"validate", "check", "status", "snapshots", "log", "cron show", "key show", "watch", "serve"}
SILENT_TOP = {"agent", "serve", "watch"}
OP_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def _secrets(path: str | None) -> dict:
    try:
        values = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in values.items() if isinstance(v, str)} if isinstance(values, dict) else {}


class Operation:
    """`begin` when a command starts, `step` and `progress` from its progress reporter, `finish` with its
    outcome; each goes to the event log (notify/events.py) and, when the plan asks, out as pings and
    webhooks (notify/outbound.py)."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        # `migrator serve` names the operations it starts, to answer with the id at once; the variable is
        # dropped here so nothing this operation runs inherits it.
        given = os.environ.pop("MIGRATOR_OP_ID", "")
        self.op = given if OP_ID.fullmatch(given) else events.new_op_id()
        self.t0 = time.monotonic()
        self.warnings: list[str] = []
        self.dispatcher = outbound.Dispatcher()
        self._last_progress = 0.0
        self.user = history.current_user()
        self._load_plan()
        self.state_before = self._state()
        self._emit(events.make("started", self.op, verb, vsn=self.vsn, user=self.user, state=self.state_before))

    def _load_plan(self) -> None:
        try:
            raw, secrets_path = deployed.remembered()
        except (OSError, ValueError):
            raw, secrets_path = None, None
        if raw is not None:  # a move forgets the plan on success: keep what the start saw
            self.vsn = ((raw.get("vsn") or {}).get("name"))
            self.config = raw.get("events")
            self.secrets = _secrets(secrets_path)
        elif not hasattr(self, "vsn"):
            self.vsn, self.config, self.secrets = None, None, {}

    def _state(self) -> str | None:
        try:
            return stackstate.current()
        except Exception:  # noqa: BLE001 - an unreadable state file is status's business, not ours
            return None

    def _emit(self, event: dict) -> None:
        try:
            events.append(event)
        except OSError as exc:
            if not self.warnings:
                self.warnings.append(f"could not write the event log: {exc}")
        try:
            self.dispatcher.send(outbound.requests_for(event, self.config, self.secrets))
        except Exception as exc:  # noqa: BLE001 - a bad events section must not fail the operation
            self.warnings.append(f"could not send the events: {exc}")

    def step(self, message: str) -> None:
        self._emit(events.make("step", self.op, self.verb, message=events.scrub(message, self.secrets.values())))

    def progress(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last_progress < events.PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self._emit(events.make("progress", self.op, self.verb, bytes_done=int(done),
                               elapsed=round(now - self.t0, 3)))

    def finish(self, code: int, result: dict | None, error: BaseException | None) -> list[str]:
        result = result or {}
        if self.vsn is None or self.config is None:
            try:
                self._load_plan()  # a first deploy remembers its plan only at its end
            except Exception:  # noqa: BLE001
                pass
        state = self._state()
        if state != self.state_before:
            self._emit(events.make("state", self.op, self.verb, vsn=self.vsn, state=state,
                                   previous=self.state_before))
        message = getattr(error, "message", None) or (f"{type(error).__name__}: {error}" if error else None)
        fields = {k: result[k] for k in events.RESULT_FIELDS if k in result}
        if self.verb.split()[0] == "move" and code == 0:
            moved = read_json(registry.MOVED_OUT.path) or {}
            fields["now_runs_on"] = moved.get("to") or result.get("target")
        fields = events.scrub_all(fields, self.secrets.values())
        outcome = "ok" if code == 0 else "interrupted" if code == 130 else "failed"
        self._emit(events.make("finished", self.op, self.verb, vsn=self.vsn, user=self.user, outcome=outcome,
                               exit_code=code, duration=round(time.monotonic() - self.t0, 3), state=state,
                               message=events.scrub(message, self.secrets.values()), **fields))
        self.dispatcher.close()
        if self.dispatcher.error:
            self.warnings.append(self.dispatcher.error)
        return self.warnings


_CURRENT: list[Operation] = []


def begin(verb: str | None) -> Operation | None:
    """Start the events of this process's operation (None for read-only queries: they emit nothing)."""
    if verb is None or verb in SILENT or verb.split()[0] in SILENT_TOP:
        return None
    try:
        op = Operation(verb)
    except Exception:  # noqa: BLE001 - bookkeeping never stops a command from starting
        return None
    _CURRENT[:] = [op]
    return op


def current() -> Operation | None:
    return _CURRENT[0] if _CURRENT else None


def finish(code: int, result: dict | None = None, error: BaseException | None = None) -> list[str]:
    op = _CURRENT.pop() if _CURRENT else None
    if op is None:
        return []
    try:
        return op.finish(code, result, error)
    except Exception as exc:  # noqa: BLE001
        return [f"could not record the operation's events: {exc}"]
