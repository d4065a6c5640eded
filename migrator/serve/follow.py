"""Dependents follow (`migrator serve --follow-dependents`): restart what depends on a service that died.

Restarts run as `migrator restart` children (lock, history, events); a service that keeps dying is left
down after MAX_TRIES, never restarted in a tight loop. The rules: docs/serve.md (Dependents follow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from migrator.engine.base import LABEL_STACK
from migrator.engine.watch import EventStream
from migrator.notify import events
from migrator.state import deployed, history, stackstate
from migrator.state.lock import held_by

# While the event stream is down (the engine restarting), look this often; each look is a `migrator
# status` (~0.3 s CPU). With the stream up, events wake it and a look every FALLBACK_S is the safety net.
INTERVAL_S = 5.0
FALLBACK_S = 60.0
# After an event, wait this long before looking: a restart in place is a die then a start, and the
# restart of a service that died must not race the engine (or a person) starting it again.
SETTLE_S = 2.0
RECONNECT_S = 5.0
# On a reconnect, events missed while the stream was down are replayed, from at most this long ago.
REPLAY_MAX_S = 300.0
# At most this many restarts of one service in the window, then it is left down and reported.
MAX_TRIES = 3
TRIES_WINDOW_S = 600.0
ACTOR = "serve (dependents follow)"
RESTART_TIMEOUT_S = 900
# Lock holders that never start or stop the stack's services: an event while one of them runs is not theirs.
HANDS_OFF_VERBS = frozenset({"health", "verify", "prune", "drill", "snapshots", "check", "load-dump"})
# History rows that say nothing about who started a container.
NOT_ACTING_VERBS = HANDS_OFF_VERBS | {"follow"}
# Verbs that act only on the services they name.
NAMED_VERBS = frozenset({"start", "stop", "restart"})


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


def by_operation(name: str, at: float, holder: str | None) -> bool:
    """An engine event for service `name` at `at` was a migrator operation's own doing: one held the lock
    when it arrived (other than a verb that never touches the services), or a finished one's time span
    covers it (start/stop/restart only for the services they named)."""
    if holder is not None and holder.split(" ", 1)[0] not in HANDS_OFF_VERBS:
        return True
    for entry in history.entries(50):
        ended = entry.ended if entry.ended is not None else float("inf")
        if entry.verb in NOT_ACTING_VERBS or not entry.started - 1.0 <= at <= ended + 1.0:
            continue
        if entry.verb not in NAMED_VERBS or name in entry.args:
            return True
    return False


class Follower:
    """Wakes on the engine's event stream (and looks every FALLBACK_S anyway, every INTERVAL_S while the
    stream is down). A dead service is restarted with its dependents (`migrator restart SERVICE DEPS...` as
    a child, so it takes the lock, is in the history and sends its events); a service restarted in place has
    only its dependents restarted. After MAX_TRIES in TRIES_WINDOW_S a service is left down and a `follow`
    failure is recorded and sent out."""

    def __init__(self, command: list[str] | None = None, interval: float = INTERVAL_S) -> None:
        self.command = command or [sys.executable, "-m", "migrator"]
        self.interval = interval
        self.tries: dict[str, list[float]] = {}
        self.given_up: set[str] = set()  # dead services left down until something else starts them
        self.quiet_until: dict[str, float] = {}  # services restarting in a loop: dependents left alone
        self.started_in_place: dict[str, float] = {}  # service -> when a start no operation made was seen
        self.events_live = False
        self._due: float | None = None  # monotonic time of the look an event asked for
        self._asked = False  # an event came that no look has decided on yet
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stream: EventStream | None = None
        self._acting: tuple[int, frozenset[str]] | None = None  # our `migrator restart` child: pid, services
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._run, "dependents-follow"), (self._watch, "engine-events")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a broken stream
                pass
        for thread in self._threads:
            thread.join(timeout=10)

    def to_json(self) -> dict:
        """What `GET /api/v1` says of following: whether engine events arrive, and who is given up on."""
        return {"engine_events": "live" if self.events_live else "down", "given_up": sorted(self.given_up),
                "quiet": sorted(n for n, until in self.quiet_until.items() if until > time.time())}

    # --- the look loop ---------------------------------------------------------------------------
    def _timeout(self) -> float:
        every = FALLBACK_S if self.events_live else self.interval
        with self._guard:
            due = self._due
        return every if due is None else max(0.0, min(every, due - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._timeout())
            self._wake.clear()
            with self._guard:
                if self._due is not None and time.monotonic() < self._due:
                    continue  # woken early (a later event moved the look): wait the rest
                self._due = None
            if self._stop.is_set():
                return
            try:
                self.look()
            except Exception:  # noqa: BLE001 - one bad look must not end following
                continue

    # --- the event stream --------------------------------------------------------------------------
    def _watch(self) -> None:
        seen = time.time() - SETTLE_S  # events from here on are asked for again on every (re)connect
        while not self._stop.is_set():
            plan = self._plan()
            engine = None
            try:
                if plan is not None:
                    engine = self._engine(plan)
                    # Replayed from a little before: nothing falls between two subscriptions, or between
                    # subscribing and the engine starting to send (an event seen twice changes nothing).
                    since = int(max(seen, time.time() - REPLAY_MAX_S))
                    self._stream = EventStream(engine.exec_api(), {LABEL_STACK: plan["vsn"]["name"]}, since)
                    self.events_live = True
                    for event in self._stream:
                        seen = max(seen, min(event.at, time.time()))
                        self.on_event(event)
                        if self._stop.is_set():
                            return
            except Exception:  # noqa: BLE001 - the engine went away: poll, and connect again
                pass
            finally:
                self.events_live = False
                self._stream = None
                if engine is not None:
                    engine.close()
            self._stop.wait(RECONNECT_S)

    @staticmethod
    def _engine(raw: dict):
        from migrator.plan.model import Plan
        from migrator.stack.topology import Stack

        return Stack.for_plan(Plan.from_json(raw)).rest_engine()

    def on_event(self, event) -> None:
        """Note an engine event and ask for a look once things settle."""
        if event.action in ("start", "restart") and not self._ours(event.name, event.at):
            with self._guard:
                self.started_in_place[event.name] = event.at
        self._asked = True
        self._look_again()

    def _ours(self, name: str, at: float) -> bool:
        """The event was a migrator operation's doing; while our own restart child holds the lock, only
        for the services it restarts (a person restarting another one meanwhile is still seen)."""
        holder, acting = held_by(), self._acting
        if holder is not None and acting is not None and f"(pid {acting[0]})" in holder:
            return name in acting[1]
        return by_operation(name, at, holder)

    # --- deciding --------------------------------------------------------------------------------
    @staticmethod
    def _plan() -> dict | None:
        return deployed.remembered(deployed_only=True)[0]

    def look(self) -> None:
        """One decision, then return: the restart it runs changes what the next look sees."""
        plan = self._plan()
        if plan is None or stackstate.current() != stackstate.RUNNING:
            return
        if held_by() is not None:
            if self._asked:  # an event waits for a decision: look again once the operation is done
                self._look_again()
            return
        self._asked = False
        proc = subprocess.run([*self.command, "status", "--json"], capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        status = json.loads(proc.stdout)
        rows = {r["name"]: r for r in status.get("containers", [])}
        services = [s["name"] for s in plan.get("services", []) if s.get("enabled", True)]
        for name in services:
            with self._guard:
                at = self.started_in_place.pop(name, None)
            row = rows.get(name)
            if row is None or row.get("expected") != "running":
                continue
            if row.get("state") == "running":
                self.given_up.discard(name)
                if (at is not None and self.quiet_until.get(name, 0.0) <= time.time()
                        and not by_operation(name, at, None)
                        and self._follow(plan, name, "restarted", dependents(plan, name))):
                    return self._look_again()
                continue
            if name in self.given_up or stopped_on_purpose(name) or held_by() is not None:
                continue
            self._follow(plan, name, row.get("state"), [name, *dependents(plan, name)])
            return self._look_again()

    def _look_again(self) -> None:
        """A look SETTLE_S from now (after a restart, an event, or while an operation holds the lock)."""
        with self._guard:
            self._due = time.monotonic() + SETTLE_S
        self._wake.set()

    def _follow(self, plan: dict, name: str, state: str | None, restart: list[str]) -> bool:
        """Restart `restart` for `name` (dead, or restarted in place); False when there was nothing to do."""
        if not restart:
            return False
        now = time.time()
        recent = [t for t in self.tries.get(name, []) if t > now - TRIES_WINDOW_S]
        if len(recent) >= MAX_TRIES:
            window = f"followed {len(recent)} times in {TRIES_WINDOW_S / 60:.0f} min"
            if state == "restarted":  # running, but restarting over and over: stop restarting the others
                self.quiet_until[name] = now + TRIES_WINDOW_S
                self._record_give_up(plan, name, f"{name} keeps restarting: {window}; its dependents are "
                                                  "not restarted after it for a while", now)
                return True
            self.given_up.add(name)
            self._record_give_up(plan, name, f"{name} keeps dying ({state}): {window}; left down", now)
            return True
        self.tries[name] = [*recent, now]
        env = {**os.environ, "MIGRATOR_ACTOR": ACTOR}
        child = subprocess.Popen([*self.command, "restart", *restart, "--json"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._acting = (child.pid, frozenset(restart))
        try:
            child.wait(timeout=RESTART_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()  # its journal puts back what it stopped: the next command recovers first
            child.wait()
        finally:
            self._acting = None
        return True

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
