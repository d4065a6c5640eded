"""`migrator status`: each container of the stack and its state against the plan, and the stack state."""

from __future__ import annotations

from dataclasses import dataclass

from migrator.engine.base import LABEL_STACK
from migrator.plan.model import Plan
from migrator.stack.topology import Stack
from migrator.state import deployed, registry, stackstate
from migrator.state.files import read_json

# Volume containers are created, never started; engines report that as any of these.
CREATED_STATES = ("created", "exited", "stopped", "configured")
NOT_RUNNING = "not running"  # expected of every container of a stack archived or moved away


def container_ok(row: dict) -> bool:
    """A status row is in its expected state (volume containers: any not-started state; a stack archived
    or moved away: absent, or stopped as `move --keep-source` leaves it)."""
    return (row["state"] == row["expected"] or (row["expected"] == "created" and row["state"] in CREATED_STATES)
            or (row["expected"] == "absent" and row["state"] == "missing")
            or (row["expected"] == NOT_RUNNING and row["state"] in (*CREATED_STATES, "missing")))


@dataclass
class StatusResult:
    """The stack's containers against the plan, its lifecycle state, and its recent history."""
    vsn: str
    state: str  # running | degraded | containerless | moved-away
    containers: list[dict]
    stack_state: str | None
    stack_state_since: float | None
    stack_state_error: str | None
    deployed_at: float | None
    history: dict  # recent_history(): last_snapshot, last_drill, moved_to

    def to_json(self) -> dict:
        return {"stack_state": self.stack_state, "stack_state_since": self.stack_state_since,
                "stack_state_error": self.stack_state_error, "vsn": self.vsn, "state": self.state,
                "deployed_at": self.deployed_at, "containers": self.containers, **self.history}


def status(plan: Plan) -> StatusResult:
    stack = Stack.for_plan(plan)
    lifecycle = stackstate.load()
    history = recent_history()
    # An archived stack (also the source of a finished move) is containerless on purpose.
    gone = lifecycle["state"] == stackstate.ARCHIVED or history["moved_to"] is not None

    def expect(state: str) -> str:
        return NOT_RUNNING if gone else state

    rows = []
    host = stack.host_info() if plan.host else None
    if plan.host:
        rows.append({"name": plan.host.name, "role": "host", "expected": expect("running"),
                     "state": host.state if host else "missing", "image": host.image if host else plan.host.image})
    present = {}
    reachable = stack.rest_reachable()
    if reachable:
        present = {c.name: c for c in stack.rest_engine().list({LABEL_STACK: plan.vsn.name})}
    # Without a Host container its REST containers do not exist; a Host that is there but does not
    # answer may still hold them.
    absent = "missing" if reachable or (plan.host and host is None) else "unknown"
    for vol in plan.volumes:
        c = present.get(vol.name)
        rows.append({"name": vol.name, "role": "volume", "expected": expect("created"),
                     "state": c.state if c else absent, "image": vol.image})
    for svc in plan.services:
        c = present.get(svc.name)
        expected = expect("running") if svc.enabled else "absent"
        rows.append({"name": svc.name, "role": "service", "expected": expected,
                     "state": c.state if c else absent, "image": c.image if c else svc.image})
        if svc.netns_holder:
            h = present.get(svc.netns_holder)
            rows.append({"name": svc.netns_holder, "role": "netns", "expected": expected,
                         "state": h.state if h else absent,
                         "image": h.image if h else plan.volume(svc.volumes_from[0]).image})
    ok = all(container_ok(r) for r in rows)
    containerless = not stack.stack_containers()
    info = deployed.current() or {}
    return StatusResult(vsn=plan.vsn.name, state=_state(containerless, ok, history["moved_to"]), containers=rows,
                        stack_state=lifecycle["state"], stack_state_since=lifecycle["since"],
                        stack_state_error=lifecycle["error"], deployed_at=info.get("deployed_at"), history=history)


def _state(containerless: bool, ok: bool, moved_to: dict | None) -> str:
    """running | degraded | containerless | moved-away (the stack now lives elsewhere; containerless, or
    its containers kept stopped by `move --keep-source`)."""
    if moved_to and (containerless or ok):
        return "moved-away"
    if not containerless:
        return "running" if ok else "degraded"
    return "containerless"


def recent_history() -> dict:
    """The last snapshot, the last drill and where a moved stack went, from the state dir."""
    backup = read_json(registry.LAST_BACKUP.path) or {}
    drill = read_json(registry.LAST_DRILL.path) or {}
    moved = deployed.moved_away()  # None again once the stack is deployed here since
    return {
        "last_snapshot": {k: backup.get(k) for k in ("snapshot_id", "time", "targets")} if backup else None,
        "last_drill": {k: drill.get(k) for k in ("snapshot_id", "time", "ok", "rto_healthy_s", "error")} if drill else None,
        "moved_to": moved,
    }
