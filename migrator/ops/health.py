"""`migrator health`: is the deployed stack healthy right now (containers, probes, backup age, drill, disk, mail)?

The stack state is reported beside the checks, not as one: a failed upgrade whose old container came
back does work. Health never waits for the lock: while another operation holds it, container and probe
checks are skipped rather than raising a false alarm (docs/operations.md, Health)."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from migrator.errors import LockHeld
from migrator.ops.status import container_ok, status
from migrator.plan.model import Plan
from migrator.plan.sizes import format_size, parse_size
from migrator.stack.probes import probe_once
from migrator.stack.topology import Stack
from migrator.state import registry, stackstate
from migrator.state.files import read_json
from migrator.state.lock import operation_lock

DEFAULT_MAX_AGE_HOURS = 26  # a daily backup plus two hours of slack (docs/plan.md: backup.max_age_hours)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None = skipped (not counted as a failure)
    detail: str
    hint: str | None = None  # for a failure: the command that acts on it (e.g. `migrator start web`)

    def line(self) -> str:
        return f"{self.name}: {self.detail}"


def _start_hint(row: dict) -> str | None:
    """What brings a stopped service (or its network holder) back: `migrator start` (ops/services.py)."""
    if row["expected"] != "running" or row["role"] not in ("service", "netns") or row["state"] in ("missing", "unknown"):
        return None
    service = row["name"].removesuffix("-netns") if row["role"] == "netns" else row["name"]
    return f"`migrator start {service}` starts it"


def container_checks(plan: Plan) -> list[Check]:
    rows = status(plan).containers
    checks = []
    host_down = False
    for row in rows:
        ok = container_ok(row)
        name = f"container:{row['name']}"
        if row["role"] != "host" and host_down:
            checks.append(Check(name, None, "skipped: the Host container is not running"))
            continue
        checks.append(Check(name, ok, f"{row['role']} {row['name']} is {row['state']}"
                                      + ("" if ok else f" (expected {row['expected']})"),
                            None if ok else _start_hint(row)))
        if row["role"] == "host" and not ok:
            host_down = True
    return checks


def probe_checks(plan: Plan, containers: list[Check]) -> list[Check]:
    bad = {c.name.split(":", 1)[1] for c in containers if c.ok is not True}
    probed = [s for s in plan.enabled_services if s.health is not None]
    if not probed:
        return []
    stack = Stack.for_plan(plan)
    checks = []
    for svc in probed:
        name = f"probe:{svc.name}"
        if svc.name in bad:
            checks.append(Check(name, None, "skipped: the container is not running"))
            continue
        result = probe_once(stack.rest_engine(), svc, svc.health)
        checks.append(Check(name, result.ok, result.detail,
                            None if result.ok else f"`migrator restart {svc.name}` restarts it"))
    return checks


def backup_check(plan: Plan, now: float) -> Check | None:
    if not (plan.backup.get("targets") or plan.backup.get("schedule")):
        return None
    max_age = float(plan.backup.get("max_age_hours", DEFAULT_MAX_AGE_HOURS))
    last = read_json(registry.LAST_BACKUP.path)
    if not last or not last.get("ok") or not last.get("time"):
        return Check("backup-age", False, "no successful backup recorded on this VSN")
    age_h = (now - float(last["time"])) / 3600
    ok = age_h <= max_age
    return Check("backup-age", ok, f"last successful backup {last.get('snapshot_id')} is {age_h:.1f}h old"
                                   + ("" if ok else f" (limit {max_age:g}h)"))


def drill_check() -> Check | None:
    last = read_json(registry.LAST_DRILL.path)
    if last is None:
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.get("time", 0)))
    if last.get("ok"):
        return Check("drill", True, f"last restore drill ({when}) of {last.get('snapshot_id')} passed")
    return Check("drill", False, f"last restore drill ({when}) failed: {last.get('error') or 'see migrator log'}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(plan: Plan) -> Check:
    min_free = parse_size(plan.health["min_free"]) if "min_free" in plan.health else plan.vsn.min_free
    root = Path(plan.vsn.data_root)
    free = shutil.disk_usage(_existing(root)).free
    ok = free >= min_free
    return Check("disk", ok, f"{format_size(free)} free on {root}" + ("" if ok else f" (need {format_size(min_free)})"))


def mail_check() -> Check | None:
    """A failing check while a mail could not be sent (notify/alerts.py keeps its error until a mail of the
    same source goes out); None otherwise."""
    state = read_json(registry.NOTIFY_STATE.path) or {}
    sources = state.get("sources") if isinstance(state.get("sources"), dict) else {}
    unsent = {name: src["unsent"] for name, src in sources.items() if isinstance(src, dict)
              and isinstance(src.get("unsent"), dict)}
    if not unsent:
        return None
    return Check("mail", False, "mail not sent (retried on the next run): " + "; ".join(
        f"{name}: {str(u.get('error'))[:300]}" for name, u in sorted(unsent.items())))


@dataclass(frozen=True)
class HealthResult:
    """One health run: every check (skipped ones too), the failing ones as lines, and the stack state."""
    vsn: str
    stack_state: str | None
    stack_state_error: str | None
    checks: tuple[Check, ...]
    time: float
    notify: dict | None = None  # health --notify: what alerts.notify did (sent, transport, error)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    @property
    def healthy(self) -> bool:
        return not self.failed

    @property
    def failures(self) -> list[str]:
        return [c.line() for c in self.failed]

    def to_json(self) -> dict:
        out = {
            "vsn": self.vsn,
            "healthy": self.healthy,
            "stack_state": self.stack_state,
            "stack_state_error": self.stack_state_error,
            "checks": [asdict(c) for c in self.checks],
            "failures": self.failures,
            "hints": [f"{c.name}: {c.hint}" for c in self.failed if c.hint],
            "time": self.time,
        }
        return out if self.notify is None else {**out, "notify": self.notify}


def add_mail_failure(result: HealthResult, error: str) -> HealthResult:
    """This run's own mail (health --notify) could not be sent: the report says so and is unhealthy."""
    check = Check("mail", False, f"mail not sent (retried on the next run): health: {error[:300]}")
    return replace(result, checks=(*(c for c in result.checks if c.name != "mail"), check))


def health(plan: Plan, now: float | None = None) -> HealthResult:
    now = time.time() if now is None else now
    checks: list[Check] = []
    lifecycle = stackstate.load()
    if lifecycle["state"] == stackstate.ARCHIVED:
        checks.append(Check("containers", None, "skipped: the stack is Archived (containerless on purpose)"))
    else:
        try:
            with operation_lock("health", 0):
                containers = container_checks(plan)
                checks += containers + probe_checks(plan, containers)
        except LockHeld as exc:
            checks.append(Check("containers", None, f"skipped: {exc.message}"))
    checks += [c for c in (backup_check(plan, now), drill_check()) if c is not None]
    checks.append(disk_check(plan))
    checks += [c for c in (mail_check(),) if c is not None]
    return HealthResult(vsn=plan.vsn.name, stack_state=lifecycle["state"],
                        stack_state_error=lifecycle["error"] if lifecycle["state"] == stackstate.FAILURE else None,
                        checks=tuple(checks), time=now)
