"""`migrator deploy`: bring the plan's stack up on this VSN, all or nothing.

Any error after validation rolls back to the containerless state (DeployFailed, exit 7); existing data
dirs are never altered. Steps: docs/plan.md#deploy."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from migrator.engine.base import ContainerEngine
from migrator.errors import DeployFailed, EngineUnreachable, MigratorError, PreflightFailed
from migrator.faults import checkpoint
from migrator.ops import check
from migrator.plan.model import Plan, Secrets
from migrator.stack.datadirs import create_missing
from migrator.stack.probes import wait_healthy
from migrator.stack.timing import StepTimer
from migrator.stack.topology import Report, Stack, quiet, start_order
from migrator.state import deployed, stackstate
from migrator.state.journal import open_journal, undo

# How often to ask the Host's inner podman socket while it boots.
SOCKET_POLL_SECONDS = 0.2


class HostRunning(PreflightFailed):
    default_hint = "run `migrator teardown` first (or stop the Host container), then deploy again"


@dataclass
class DeployResult:
    vsn: str
    host: str | None
    containers: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    health: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    steps: list[str] = field(default_factory=list)
    dry_run: bool = False
    # Seconds per phase (check, drop, host, volumes, each service's create+start+probe): where a deploy's
    # time goes, e.g. inside a move's downtime window.
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def dry_run_steps(plan: Plan) -> list[str]:
    steps = ["validate plan, secrets and the VSN (commands, engine, root, data root)"]
    host = plan.host
    if host:
        steps.append(f"refuse if Host container {host.name} runs; otherwise remove it and every "
                     f"container labelled for stack {plan.vsn.name}")
    else:
        steps.append(f"remove every container labelled for stack {plan.vsn.name}")
    steps.append(f"create missing data dirs under {plan.vsn.data_root} (existing ones untouched)")
    if host:
        steps.append(f"find image {host.image}; create and start Host container {host.name} (privileged)")
    steps.append(f"create network {plan.network}")
    for vol in plan.volumes:
        steps.append(f"create volume container {vol.name} ({vol.image}): "
                     + ", ".join(f"{m.name} -> {m.path}" for m in vol.mounts))
    for svc in start_order(plan.enabled_services):
        probe = f", wait for {svc.health.type} probe" if svc.health else ""
        holder = (f"in the network namespace of holder {svc.netns_holder} (on {plan.network} as {svc.name}, "
                  f"publishing its ports) ") if svc.netns_holder else ""
        steps.append(f"create and start service {svc.name} ({svc.image}) {holder}{probe}".replace("  ", " "))
    steps.append("record the deployed plan in the state dir")
    return steps


def wait_for_inner_engine(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    engine = stack.rest_engine()
    while True:
        try:
            engine.ping()
            return
        except EngineUnreachable:
            info = stack.host_info()
            if info is None or not info.running:
                logs = stack.outer.logs(stack.plan.host.name)
                raise DeployFailed(f"Host container {stack.plan.host.name} stopped while starting: "
                                   f"{logs.splitlines()[-1] if logs else 'no output'}") from None
            if time.monotonic() >= deadline:
                raise DeployFailed(f"Host container's podman socket did not answer within {timeout}s") from None
            time.sleep(SOCKET_POLL_SECONDS)


def start_services(stack: Stack, engine: ContainerEngine, secrets: Secrets, result: DeployResult) -> None:
    timer = StepTimer(result.timings)
    for svc in start_order(stack.plan.enabled_services):
        with timer.step(f"service.{svc.name}"):
            stack.ensure_image(engine, svc.image)
            stack.ensure_holder(engine, svc)
            stack.report(f"starting service {svc.name}")
            engine.create(stack.service_spec(svc, secrets))
            result.containers.append(svc.name)
            engine.start(svc.name)
            probe = wait_healthy(engine, svc)
            if not probe.ok:
                raise DeployFailed(f"service {svc.name} did not become healthy: {probe.detail}")
            result.health[svc.name] = probe.detail
        checkpoint(f"deploy.service-healthy.{svc.name}")


def _bring_up(stack: Stack, secrets: Secrets, result: DeployResult, journal) -> None:
    plan = stack.plan
    timer = StepTimer(result.timings)
    removed = stack.drop_all()
    if removed:
        stack.report(f"dropped {len(removed)} old container(s)")
    journal.note("deploy", {"plan": plan.raw, "rollback": "containerless"})
    checkpoint("deploy.dropped")
    result.created_dirs = create_missing(plan)
    timer.lap("drop")
    if plan.host:
        host = plan.host
        source = stack.ensure_image(stack.outer, host.image)
        stack.report(f"starting Host container {host.name} (image {source})")
        stack.outer.create(stack.host_spec())
        result.containers.append(host.name)
        stack.outer.start(host.name)
        checkpoint("deploy.host-started")
        wait_for_inner_engine(stack, host.startup_timeout)
        timer.lap("host")
    engine = stack.rest_engine()
    engine.ensure_network(plan.network, stack.labels("network"), plan.network_subnet)
    for vol in plan.volumes:
        stack.ensure_image(engine, vol.image)
        stack.report(f"creating volume container {vol.name}")
        engine.create(stack.volume_spec(vol))
        result.containers.append(vol.name)
    timer.lap("volumes")
    checkpoint("deploy.volumes-created")
    start_services(stack, engine, secrets, result)


def deploy(plan: Plan, secrets: Secrets, *, dry_run: bool = False, report: Report = quiet,
           record: bool = True, verb: str = "deploy", checked: bool = False) -> DeployResult:
    """Deploy `plan`. `record=False` (drills) leaves the VSN's remembered deployment and stack state alone;
    otherwise the stack goes CreatePending -> Running, or Failure on error (`verb` names the command).
    `checked`: the caller has just run check.require(plan) itself (see move_target.cutover)."""
    started = time.monotonic()
    result = DeployResult(vsn=plan.vsn.name, host=plan.host.name if plan.host else None, dry_run=dry_run)
    if dry_run:
        result.steps = dry_run_steps(plan)
        return result
    with StepTimer(result.timings).step("check"):
        if not checked:  # a move's target agent ran it moments ago, before its source stopped (not downtime)
            report("checking the VSN")
            check.require(plan)
        stack = Stack.for_plan(plan, report)
    host = stack.host_info()
    if host is not None and host.running:
        raise HostRunning(f"Host container {host.name} is running; deploy replaces a stopped stack only")
    with stackstate.pending(verb) if record else nullcontext(), open_journal("deploy") as journal:
        try:
            _bring_up(stack, secrets, result, journal)
        except (MigratorError, OSError) as exc:
            cause = exc.message if isinstance(exc, MigratorError) else f"{exc.strerror or exc}: {exc.filename or ''}"
            report(f"deploy failed ({cause}); rolling back to the containerless state")
            rollback(stack, forget_deployment=record)
            journal.forget("deploy")
            raise DeployFailed(f"deploy failed and was rolled back: {cause}") from exc
        if record:
            deployed.record(plan.raw, secrets.path)
        journal.forget("deploy")
    result.duration = round(time.monotonic() - started, 3)
    return result


def rollback(stack: Stack, forget_deployment: bool = True) -> None:
    """Containerless again; data dirs untouched. Errors here are reported, not raised over the cause."""
    try:
        stack.drop_all()
    except MigratorError as exc:
        stack.report(f"rollback could not remove everything: {exc.message}")
        raise DeployFailed(f"deploy failed and the rollback failed too: {exc.message}",
                           hint="run `migrator recover` (or `migrator teardown`) once the engine answers") from exc
    if forget_deployment:
        deployed.forget()


@undo("deploy")
def _undo_deploy(fact: dict, report: Report) -> str:
    Stack.for_plan(Plan.from_json(fact["plan"]), report).drop_all()
    deployed.forget()
    return "rolled a half-done deploy back to the containerless state"
