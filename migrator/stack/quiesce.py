"""Quiesce: stop the services that write a volume, and always bring them back.

Stops go in reverse depends_on order, starts in depends_on order with a health probe. The journal records
what is stopped before anything stops, so a killed run's services are restarted by `recover`. Downtime
per service runs from its stop to its healthy restart."""

from __future__ import annotations

import time

from migrator.errors import MigratorError
from migrator.plan.model import Plan, Service
from migrator.stack.probes import wait_healthy
from migrator.stack.topology import Report, Stack, start_order
from migrator.state.journal import undo
from migrator.threads import Pump

JOURNAL_KEY = "stopped_services"
# Container states in which no process of the container runs any more (podman: stopped, exited; docker: exited).
EXITED_STATES = frozenset({"stopped", "exited", "dead"})
# How often a stop in progress is checked for the container's exit.
EXIT_POLL_S = 0.01


def writers_of(plan: Plan, volume: str) -> list[Service]:
    """Enabled services that mount the volume (volumes_from): the ones that can change its data."""
    return [s for s in plan.enabled_services if volume in s.volumes_from]


class Quiesce:
    """Stops services and guarantees their restart: use as a context manager around the stopped window."""

    def __init__(self, stack: Stack, journal, report: Report):
        self.stack = stack
        self.journal = journal
        self.report = report
        self.stopped: list[Service] = []
        self.stopped_at: dict[str, float] = {}
        self.downtime: dict[str, float] = {}
        # Where each service's downtime went (seconds): stop (until its processes are gone), the stopped
        # window's own work, settle (waiting for the engine's clean-up beyond that work), start, health
        # probe. For `--json` and the bench; the manifest keeps the total only.
        self.steps: dict[str, dict[str, float]] = {}
        # engine.stop of each service, in a thread (it returns only after the engine's clean-up)
        self._stoppers: list[tuple[Service, Pump]] = []

    def running(self, services: list[Service]) -> list[Service]:
        if not services or not self.stack.rest_reachable():
            return []
        engine = self.stack.rest_engine()
        out = []
        for svc in services:
            info = engine.get(svc.name)
            if info is not None and info.running:
                out.append(svc)
        return out

    def run_hooks(self, services: list[Service], phase: str) -> list[str]:
        """Exec each service's pre_backup/post_backup hooks (argv, no shell). A failing hook is an error."""
        done: list[str] = []
        if not any(getattr(svc, phase) for svc in services):
            return done
        engine = self.stack.rest_engine()
        for svc in services:
            for hook in getattr(svc, phase):
                target = hook.container or svc.name
                self.report(f"hook {phase} in {target}: {' '.join(hook.command)[:80]}")
                code, out = engine.exec(target, list(hook.command), timeout=hook.timeout)
                if code != 0:
                    raise MigratorError(f"{phase} hook in {target} exited {code}: {out.strip()[-200:]}",
                                        hint="fix the hook command in the plan; services were restarted")
                done.append(f"{target}: {' '.join(hook.command)}")
        return done

    def stop(self, services: list[Service]) -> None:
        todo = [s for s in self.running(services) if s.name not in self.stopped_at]
        if not todo:
            return
        names = [s.name for s in self.stopped] + [s.name for s in todo]
        self.journal.note(JOURNAL_KEY, {"plan": self.stack.plan.raw, "services": names})
        engine = self.stack.rest_engine()
        order = [s for s in reversed(start_order(self.stack.plan.enabled_services)) if s in todo]
        for svc in order:
            self.report(f"stopping {svc.name}")
            self.stopped_at[svc.name] = time.monotonic()
            self.stopped.append(svc)
            self._stop_until_exited(engine, svc)
            self.steps[svc.name] = {"stop": round(time.monotonic() - self.stopped_at[svc.name], 3)}

    def _stop_until_exited(self, engine, svc: Service) -> None:
        """Return once the container's processes are gone; raise if the stop failed.

        That is podman's "stopped": the init process exited, and with it, by the kernel's rule for PID
        namespaces, every process in the container. The engine's own clean-up after that (mounts, cgroup:
        ~0.05 s with podman; the network stays, it belongs to the service's network holder) finishes in a
        thread while the stopped window's work runs; the start waits for it (`settle`)."""
        stopper = Pump(f"stop-{svc.name}", lambda: engine.stop(svc.name, timeout=svc.stop_timeout))
        stopper.start()
        self._stoppers.append((svc, stopper))
        while stopper.is_alive():
            info = engine.get(svc.name)
            if info is None or info.state in EXITED_STATES:
                return
            stopper.join(EXIT_POLL_S)
        if stopper.error is not None:
            raise stopper.error

    def settle(self) -> None:
        """Wait for the engine's clean-up of every stop; a clean-up error is reported, the start then decides."""
        for svc, stopper in self._stoppers:
            stopper.join()
            if stopper.error is not None:
                self.report(f"stopping {svc.name}: {getattr(stopper.error, 'message', stopper.error)}")
        self._stoppers = []

    def start_all(self) -> None:
        """Start every stopped service in depends_on order and wait for health. Raises after trying all."""
        settle_from = time.monotonic()
        self.settle()
        settled = time.monotonic()
        if not self.stopped:
            return
        engine = self.stack.rest_engine()
        failures = []
        for svc in start_order(tuple(self.stopped)):
            self.report(f"starting {svc.name}")
            steps = self.steps.setdefault(svc.name, {})
            begin = time.monotonic()
            settle = max(0.0, min(settled, begin) - max(settle_from, self.stopped_at[svc.name]))
            steps["settle"] = round(settle, 3)
            steps["stopped"] = round(begin - self.stopped_at[svc.name] - steps.get("stop", 0.0) - settle, 3)
            try:
                engine.start(svc.name)
                started = time.monotonic()
                steps["start"] = round(started - begin, 3)
                probe = wait_healthy(engine, svc)
                steps["healthy"] = round(time.monotonic() - started, 3)
                if not probe.ok:
                    failures.append(f"{svc.name}: {probe.detail}")
            except MigratorError as exc:
                failures.append(f"{svc.name}: {exc.message}")
            self.downtime[svc.name] = round(time.monotonic() - self.stopped_at[svc.name], 3)
        self.stopped = []
        self.journal.forget(JOURNAL_KEY)
        if failures:
            raise MigratorError(f"service(s) did not come back healthy: {'; '.join(failures)}",
                                hint="`migrator status` shows them; the data was not changed")

    def keep_stopped(self) -> None:
        """The stopped services are meant to stay down (a finished move): no restart on exit."""
        self.settle()
        self.stopped = []
        self.journal.forget(JOURNAL_KEY)

    def __enter__(self) -> Quiesce:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.start_all()
            return
        try:
            self.start_all()
        except MigratorError as restart_error:
            self.report(f"also: {restart_error.message}")


@undo(JOURNAL_KEY)
def restart_stopped(fact: dict, report: Report) -> str:
    stack = Stack.for_plan(Plan.from_json(fact["plan"]), report)
    engine = stack.rest_engine()
    started = []
    for svc in start_order(stack.plan.enabled_services):
        if svc.name in fact["services"]:
            info = engine.get(svc.name)
            if info is not None and not info.running:
                engine.start(svc.name)
                started.append(svc.name)
    return f"restarted services a killed run had stopped: {', '.join(started) or 'none needed'}"
