"""`migrator teardown` — bring the VSN to the containerless state; every data dir stays."""

from __future__ import annotations

from migrator.ops.stack import Report, Stack, quiet
from migrator.plan.model import Plan
from migrator.state import deployed, stackstate
from migrator.state.journal import open_journal


def teardown(plan: Plan, report: Report = quiet, verb: str = "teardown") -> dict:
    """Containerless, data kept; the stack goes DeletePending -> Archived (`archive` is the same with seed
    004's name)."""
    stack = Stack.for_plan(plan, report)
    with stackstate.pending(verb), open_journal("teardown") as journal:
        journal.note("teardown", {"plan": plan.raw})
        removed = stack.drop_all()
        deployed.forget()
        journal.forget("teardown")
    return {"vsn": plan.vsn.name, "removed": removed, "data_root": plan.vsn.data_root}
