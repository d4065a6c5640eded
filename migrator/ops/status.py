"""`migrator status` — each container of the stack and its state, compared with the plan."""

from __future__ import annotations

from migrator.engine.base import LABEL_STACK
from migrator.ops.stack import Stack
from migrator.plan.model import Plan
from migrator.state import deployed


def status(plan: Plan) -> dict:
    stack = Stack.for_plan(plan)
    rows = []
    host = stack.host_info() if plan.host else None
    if plan.host:
        rows.append({"name": plan.host.name, "role": "host", "expected": "running",
                     "state": host.state if host else "missing", "image": host.image if host else plan.host.image})
    present = {}
    reachable = stack.rest_reachable()
    if reachable:
        present = {c.name: c for c in stack.rest_engine().list({LABEL_STACK: plan.vsn.name})}
    for vol in plan.volumes:
        c = present.get(vol.name)
        rows.append({"name": vol.name, "role": "volume", "expected": "created",
                     "state": c.state if c else ("missing" if reachable else "unknown"), "image": vol.image})
    for svc in plan.services:
        c = present.get(svc.name)
        expected = "running" if svc.enabled else "absent"
        rows.append({"name": svc.name, "role": "service", "expected": expected,
                     "state": c.state if c else ("missing" if reachable else "unknown"),
                     "image": c.image if c else svc.image})
    ok = all((r["state"] == r["expected"]) or (r["expected"] == "created" and r["state"] in ("created", "exited",
             "stopped", "configured")) or (r["expected"] == "absent" and r["state"] == "missing") for r in rows)
    containerless = not stack.stack_containers()
    info = deployed.current() or {}
    return {
        "vsn": plan.vsn.name,
        "state": "containerless" if containerless else ("running" if ok else "degraded"),
        "deployed_at": info.get("deployed_at"),
        "containers": rows,
    }
