"""Dependents follow (`migrator serve --follow-dependents`): while serve runs, a service container that
died outside a migrator operation is started again, and the services that depend on it are restarted
after it, in depends_on order, each until healthy. That is `migrator restart SERVICE DEPENDENTS...` run
as a child process, so it takes the lock, is recorded in the history and sends its events like any
operation. A service that keeps dying is given up on after MAX_TRIES within TRIES_WINDOW_S: it stays
down, a `follow` failure is recorded in the history and the event log (and so in pings and webhooks),
and `health` reports it; it is followed again once something else has it running.

It looks at `migrator status --json` every INTERVAL_S, and only when the stack is Running, no operation
holds the lock, and the service was not stopped on purpose (`migrator stop` as the last word on it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from migrator.notify import events
from migrator.state import deployed, history, stackstate
from migrator.state.files import read_json
from migrator.state.lock import held_by

# Often enough that a dead database is back within seconds; each look is a `migrator status` (~0.3 s CPU).
INTERVAL_S = 5.0
# At most this many restarts of one service in the window, then it is left down and reported.
MAX_TRIES = 3
TRIES_WINDOW_S = 600.0
ACTOR = "serve (dependents follow)"
RESTART_TIMEOUT_S = 900


def dependents(plan: dict, name: str) -> list[str]:
    """The enabled services that depend on `name` (transitively), in plan order (which depends_on
    order respects: `migrator restart` sorts them itself)."""
    services = [s for s in plan.get("services", []) if s.get("enabled", True)]
    found: set[str] = set()
    frontier = {name}
    while frontier:
        nxt = {s["name"] for s in services if set(s.get("depends_on", [])) & frontier} - found - {name}
        found |= nxt
        frontier = nxt
    return [s["name"] for s in services if s["name"] in found]


def stopped_on_purpose(name: str) -> bool:
    """The last start/stop/restart in the history that named the service was a stop."""
    for entry in history.entries(100):
        if entry.verb in ("start", "stop", "restart", "deploy", "unarchive") and (
                entry.verb in ("deploy", "unarchive") or name in entry.args):
            return entry.verb == "stop" and entry.result == "ok"
    return False


class Follower:
    def __init__(self, command: list[str] | None = None, interval: float = INTERVAL_S) -> None:
        self.command = command or [sys.executable, "-m", "migrator"]
        self.interval = interval
        self.tries: dict[str, list[float]] = {}
        self.given_up: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dependents-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.look()
            except Exception:  # noqa: BLE001 - one bad look must not end following
                continue

    def _plan(self) -> dict | None:
        info = deployed.current() or {}
        path = Path(info["plan"]) if info.get("plan") and info.get("deployed_at") else None
        raw = read_json(path) if path is not None and path.exists() else None
        return raw if isinstance(raw, dict) else None

    def look(self) -> None:
        plan = self._plan()
        if plan is None or stackstate.current() != stackstate.RUNNING or held_by() is not None:
            return
        proc = subprocess.run([*self.command, "status", "--json"], capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        status = json.loads(proc.stdout)
        services = {s["name"] for s in plan.get("services", []) if s.get("enabled", True)}
        rows = {r["name"]: r for r in status.get("containers", [])}
        for name in services:
            row = rows.get(name)
            if row is None or row.get("expected") != "running":
                continue
            if row.get("state") == "running":
                self.given_up.discard(name)
                continue
            if name in self.given_up or stopped_on_purpose(name) or held_by() is not None:
                continue
            self._follow(plan, name, row.get("state"))
            return  # one at a time; the next look sees the result

    def _follow(self, plan: dict, name: str, state: str | None) -> None:
        now = time.time()
        recent = [t for t in self.tries.get(name, []) if t > now - TRIES_WINDOW_S]
        if len(recent) >= MAX_TRIES:
            self.given_up.add(name)
            message = (f"{name} keeps dying ({state}): restarted {len(recent)} times in "
                       f"{TRIES_WINDOW_S / 60:.0f} min; left down")
            self._record_give_up(plan, name, message, now)
            return
        self.tries[name] = [*recent, now]
        env = {**os.environ, "MIGRATOR_ACTOR": ACTOR}
        subprocess.run([*self.command, "restart", name, *dependents(plan, name), "--json"], env=env,
                       capture_output=True, timeout=RESTART_TIMEOUT_S, stdin=subprocess.DEVNULL)

    @staticmethod
    def _record_give_up(plan: dict, name: str, message: str, now: float) -> None:
        op = events.new_op_id()
        vsn = (plan.get("vsn") or {}).get("name")
        events.append(events.make("finished", op, "follow", vsn=vsn, user=ACTOR, outcome="failed", exit_code=1,
                                  duration=0.0, message=message, service=name))
        history.record(history.Entry(verb="follow", started=now, ended=now, result="failed", exit_code=1,
                                     args=[name], user=ACTOR, message=message))
        from migrator.notify import outbound
        from migrator.notify.opevents import _secrets

        secrets = _secrets((deployed.current() or {}).get("secrets"))
        event = events.make("finished", op, "follow", vsn=vsn, outcome="failed", exit_code=1, message=message)
        dispatcher = outbound.Dispatcher()
        dispatcher.send(outbound.requests_for(event, plan.get("events"), secrets))
        dispatcher.close()
