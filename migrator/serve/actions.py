"""Actions started from `migrator serve`, each the `migrator` command itself as a child process.

A child rather than a call into the ops: the same code, lock, journal, history and events as the command
line, nothing in serve's memory to go wrong half-way, and a hung or crashed run cannot take the server
with it. Parameters are checked against patterns and become an argument vector, never a shell line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from migrator.errors import LockHeld, MigratorError, UsageError
from migrator.notify import events
from migrator.state.lock import held_by

SNAPSHOT = re.compile(r"latest|[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:@-]{0,254}")
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# How long an action's answer waits to see the child refuse at once (lock taken in between, bad state):
# a refusal within this becomes the answer (409, 400); after it the action runs on and answers 202.
START_WAIT_S = 3.0
# Finished actions kept for GET /api/v1/operations/{id}.
KEEP_FINISHED = 100
CONFIRM_VERBS = ("restore", "cleanup")
VERBS = ("backup", "drill", "verify", "restore", "upgrade", "archive", "unarchive", "cleanup")


class Busy(LockHeld):
    """Another operation holds the lock (HTTP 409)."""


def _param(params: dict, key: str, pattern: re.Pattern, default=None):
    value = params.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UsageError(f"{key}: not a valid value")
    return value


def argv_for(verb: str, params: dict, vsn_name: str | None) -> list[str]:
    """The `migrator` arguments for an action; UsageError for anything not allowed."""
    if verb not in VERBS:
        raise UsageError(f"unknown action {verb!r}", hint="actions: " + ", ".join(VERBS))
    if not isinstance(params, dict):
        raise UsageError("the body must be a JSON object")
    if verb in CONFIRM_VERBS and (not vsn_name or params.get("confirm") != vsn_name):
        raise UsageError(f"{verb} needs the VSN's name typed as confirmation",
                         hint='send {"confirm": "<vsn name>"}')
    args = [verb]
    if verb == "backup":
        tags = params.get("tags") or []
        if not isinstance(tags, list) or len(tags) > 8:
            raise UsageError("tags: a list of at most 8 tags")
        for tag in tags:
            args += ["--tag", _param({"t": tag}, "t", TAG)]
        if params.get("full") is True:
            args.append("--full")
    elif verb == "drill":
        snap = _param(params, "snapshot", SNAPSHOT)
        if snap and snap != "latest":
            args += ["--snapshot", snap]
    elif verb == "verify":
        args.append(_param(params, "snapshot", SNAPSHOT, "latest"))
        if params.get("read_data") is True:
            args.append("--read-data")
    elif verb == "restore":
        args.append(_param(params, "snapshot", SNAPSHOT, "latest"))
    elif verb == "upgrade":
        service, image = _param(params, "service", NAME), _param(params, "image", IMAGE)
        if not service or not image:
            raise UsageError("upgrade needs service and image")
        args += [service, "--image", image]
    elif verb == "cleanup":
        args.append("--yes")
        if params.get("no_snapshot") is True:
            args.append("--no-snapshot")
    return args + ["--json"]


@dataclass
class Operation:
    op: str
    verb: str
    user: str
    argv: list[str]
    started: float = field(default_factory=time.time)
    pid: int | None = None
    exit_code: int | None = None
    result: dict | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def to_json(self) -> dict:
        return {"op": self.op, "verb": self.verb, "user": self.user, "started": self.started, "pid": self.pid,
                "running": not self.done.is_set(), "exit_code": self.exit_code, "result": self.result}


class Runner:
    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "migrator"]
        self.operations: dict[str, Operation] = {}
        self._lock = threading.Lock()

    def start(self, verb: str, params: dict, user: str, vsn_name: str | None) -> Operation:
        """Start an action; Busy when the lock is held, UsageError for bad parameters, MigratorError when
        the child refused at once (its own error). The child runs with the authenticated user
        (MIGRATOR_ACTOR, recorded in the history) and an operation id chosen here (MIGRATOR_OP_ID, so its
        events can be matched at once), in a session of its own: it keeps going when serve stops, and
        `recover` owns the rest."""
        argv = argv_for(verb, params, vsn_name)
        holder = held_by()
        if holder is not None and verb != "verify":  # verify only reads the store: no lock
            raise Busy(f"another migrator operation holds the lock: {holder}")
        op = Operation(events.new_op_id(), verb, user, argv)
        env = {**os.environ, "MIGRATOR_ACTOR": f"{user} via serve", "MIGRATOR_OP_ID": op.op}
        env.pop("MIGRATOR_PROGRESS", None)
        proc = subprocess.Popen([*self.command, *argv], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        op.pid = proc.pid
        with self._lock:
            self.operations[op.op] = op
            finished = [o for o in self.operations.values() if o.done.is_set()]
            for old in sorted(finished, key=lambda o: o.started)[:-KEEP_FINISHED]:
                del self.operations[old.op]
        threading.Thread(target=self._wait, args=(op, proc), daemon=True).start()
        if op.done.wait(START_WAIT_S) and op.exit_code != 0:
            self._raise_refusal(op)
        return op

    @staticmethod
    def _wait(op: Operation, proc: subprocess.Popen) -> None:
        out, err = proc.communicate()
        op.exit_code = proc.returncode
        try:
            op.result = json.loads(out)
        except ValueError:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
            op.result = {"ok": False, "message": "; ".join(tail) or f"exit {proc.returncode}"}
        op.done.set()

    @staticmethod
    def _raise_refusal(op: Operation) -> None:
        message = (op.result or {}).get("message") or f"{op.verb} failed (exit {op.exit_code})"
        if op.exit_code == 5:
            raise Busy(message)
        error = MigratorError(message)
        error.exit_code = op.exit_code or 1
        raise error

    def running(self) -> list[Operation]:
        with self._lock:
            return [o for o in self.operations.values() if not o.done.is_set()]
