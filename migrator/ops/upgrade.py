"""`migrator upgrade SERVICE --image IMG`: hotfix one service container, never changed in place.

The old one is renamed aside and stopped, a new one created and probed; on failure the old one comes back."""

from __future__ import annotations

import time
from dataclasses import dataclass

from migrator.errors import DeployFailed, MigratorError, UsageError
from migrator.plan.model import Plan, Secrets
from migrator.stack.probes import wait_healthy
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import deployed, stackstate
from migrator.state.journal import open_journal, undo


@dataclass
class UpgradeResult:
    service: str
    old_image: str
    image: str
    health: str

    def to_json(self) -> dict:
        return {"service": self.service, "old_image": self.old_image, "image": self.image, "health": self.health}


def upgrade(plan: Plan, secrets: Secrets, service: str, image: str, report: Report = quiet) -> UpgradeResult:
    svc = next((s for s in plan.enabled_services if s.name == service), None)
    if svc is None:
        raise UsageError(f"no enabled service named {service!r} in the plan",
                         hint="services: " + ", ".join(s.name for s in plan.enabled_services))
    stack = Stack.for_plan(plan, report)
    if not stack.rest_reachable():
        raise DeployFailed("the stack is not running; deploy it first", hint="`migrator status` shows what runs")
    engine = stack.rest_engine()
    old = engine.get(service)
    if old is None:
        raise DeployFailed(f"service {service} has no container; deploy first")
    stack.ensure_image(engine, image)
    aside = f"{service}-pre-upgrade-{int(time.time())}"
    with stackstate.pending("upgrade"), open_journal("upgrade") as journal:
        journal.note("upgrade", {"plan": plan.raw, "service": service, "aside": aside})
        engine.rename(service, aside)
        if old.running:
            engine.stop(aside, timeout=svc.stop_timeout)
        new_holder = False
        try:
            new_holder = stack.ensure_holder(engine, svc)
            engine.create(stack.service_spec(svc, secrets, image=image))
            engine.start(service)
            probe = wait_healthy(engine, svc)
            if not probe.ok:
                raise DeployFailed(f"new {service} ({image}) did not become healthy: {probe.detail}")
        except MigratorError as exc:
            report(f"upgrade failed ({exc.message}); bringing the old container back")
            engine.remove(service)
            if new_holder:  # the old container (deployed without one) publishes the ports itself
                engine.remove(svc.netns_holder)
            engine.rename(aside, service)
            engine.start(service)
            journal.forget("upgrade")
            raise DeployFailed(f"upgrade of {service} failed; the old container runs again: {exc.message}",
                               hint="the data was not touched") from exc
        engine.remove(aside)
        journal.forget("upgrade")
    raw = plan.raw
    for entry in raw["services"]:
        if entry["name"] == service:
            entry["image"] = image
    info = deployed.current() or {}
    deployed.record(raw, info.get("secrets") or secrets.path)
    return UpgradeResult(service, old.image, image, probe.detail)


@undo("upgrade")
def _undo_upgrade(fact: dict, report: Report) -> str:
    stack = Stack.for_plan(Plan.from_json(fact["plan"]), report)
    engine = stack.rest_engine()
    service, aside = fact["service"], fact["aside"]
    if engine.get(aside) is None:
        return f"upgrade of {service} had finished"
    if engine.get(service) is not None:
        engine.remove(service)
    engine.rename(aside, service)
    engine.start(service)
    return f"brought the old {service} container back after an interrupted upgrade"
