"""`migrator start|stop|restart SERVICE...`: act on what `health` reports, in depends_on order.

Stops are journaled first (Quiesce), so a killed stop or restart has its services started again by
`recover`; a plain `stop` leaves them down on purpose and `health` says so. Starts wait for each probe
and also start what a named service depends on when that is down."""

from __future__ import annotations

from dataclasses import dataclass

from migrator.errors import MigratorError, PreflightFailed, UsageError
from migrator.faults import checkpoint
from migrator.plan.model import Plan, Service
from migrator.stack.probes import wait_healthy
from migrator.stack.quiesce import Quiesce
from migrator.stack.topology import Report, Stack, quiet, start_order
from migrator.state import deployed, stackstate
from migrator.state.journal import open_journal

VERBS = ("start", "stop", "restart")


def select(plan: Plan, names: list[str]) -> list[Service]:
    """The named enabled services (each once, in start order); an unknown name is a usage error."""
    enabled = {s.name: s for s in plan.enabled_services}
    unknown = [n for n in names if n not in enabled]
    if unknown or not names:
        raise UsageError(f"no enabled service named {unknown[0]!r} in the plan" if unknown else "name a service",
                         hint="services: " + ", ".join(enabled))
    return [s for s in start_order(plan.enabled_services) if s.name in names]


def with_dependencies(plan: Plan, services: list[Service]) -> list[Service]:
    """`services` and everything they depend on (transitively), in start order."""
    by_name = {s.name: s for s in plan.enabled_services}
    wanted: set[str] = set()
    todo = [s.name for s in services]
    while todo:
        name = todo.pop()
        if name in wanted or name not in by_name:
            continue
        wanted.add(name)
        todo += list(by_name[name].depends_on)
    return [s for s in start_order(plan.enabled_services) if s.name in wanted]


def _start(stack: Stack, services: list[Service], report: Report) -> tuple[list[str], dict[str, str]]:
    """Start those of `services` that do not run, in order, each until healthy. Raises after trying all."""
    engine = stack.rest_engine()
    started, health, failures = [], {}, []
    for svc in services:
        info = engine.get(svc.name)
        if info is not None and info.running:
            health[svc.name] = "already running"
            continue
        report(f"starting {svc.name}")
        try:
            stack.ensure_holder(engine, svc)
            engine.start(svc.name)
            started.append(svc.name)
            probe = wait_healthy(engine, svc)
            health[svc.name] = probe.detail
            if not probe.ok:
                failures.append(f"{svc.name}: {probe.detail}")
        except MigratorError as exc:
            failures.append(f"{svc.name}: {exc.message}")
    if failures:
        raise MigratorError(f"service(s) did not come back healthy: {'; '.join(failures)}",
                            hint="`migrator health` and `migrator status` show them; the data was not changed")
    return started, health


@dataclass
class ServicesResult:
    verb: str
    vsn: str
    services: list[str]
    stopped: list[str]
    started: list[str]
    health: dict[str, str]

    def to_json(self) -> dict:
        return {"verb": self.verb, "vsn": self.vsn, "services": self.services, "stopped": self.stopped,
                "started": self.started, "health": self.health}


def act(plan: Plan, verb: str, names: list[str], report: Report = quiet) -> ServicesResult:
    """Start, stop or restart the named services; returns what was stopped and started, and their health."""
    if verb not in VERBS:
        raise UsageError(f"unknown verb {verb!r}")
    services = select(plan, names)
    if verb != "stop":  # never two VSNs serving one stack, nor an Archived stack half up
        moved = deployed.moved_away()
        if moved:
            raise PreflightFailed(f"the stack was moved to {moved.get('to')}; it runs there, not here",
                                  hint="deploy the plan here first if it is meant to run here again")
        if stackstate.current() == stackstate.ARCHIVED:
            raise PreflightFailed("the stack is Archived", hint="`migrator unarchive` brings it back")
    stack = Stack.for_plan(plan, report)
    if not stack.rest_reachable():
        raise PreflightFailed("the stack's containers cannot be reached (the Host container is not running, or "
                              "the stack is containerless)", hint="`migrator status` shows what runs; "
                                                                  "`migrator deploy` brings the stack back")
    engine = stack.rest_engine()
    missing = [s.name for s in services if engine.get(s.name) is None]
    if missing:
        raise PreflightFailed(f"service(s) {', '.join(missing)} have no container",
                              hint="`migrator deploy` the plan first")
    stopped: list[str] = []
    started: list[str] = []
    health: dict[str, str] = {}
    with open_journal(verb) as journal:
        quiesce = Quiesce(stack, journal, report)
        if verb in ("stop", "restart"):
            quiesce.stop(services)  # journaled first: a killed run's services are started by `recover`
            stopped = [s.name for s in quiesce.stopped]
            checkpoint(f"{verb}.stopped")
            if verb == "stop":
                quiesce.keep_stopped()  # down on purpose: nothing for `recover` to restart
            else:
                quiesce.settle()  # the engine's clean-up of each stop finishes before its start
        if verb in ("start", "restart"):
            try:
                started, health = _start(stack, with_dependencies(plan, services), report)
            finally:
                quiesce.keep_stopped()  # started (or tried): nothing left for `recover`
    return ServicesResult(verb, plan.vsn.name, [s.name for s in services], stopped, started, health)
