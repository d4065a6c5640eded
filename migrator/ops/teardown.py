"""`migrator teardown` — bring the VSN to the containerless state; every data dir stays."""

from __future__ import annotations

from dataclasses import dataclass

from migrator.plan.model import Plan
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import deployed, stackstate
from migrator.state.journal import open_journal, undo


@dataclass
class TeardownResult:
    vsn: str
    removed: list[str]
    data_root: str

    def to_json(self) -> dict:
        return {"vsn": self.vsn, "removed": self.removed, "data_root": self.data_root}


def teardown(plan: Plan, report: Report = quiet, verb: str = "teardown") -> TeardownResult:
    """Containerless, data kept; the stack goes DeletePending -> Archived (`archive` is the same under the
    lifecycle's name)."""
    stack = Stack.for_plan(plan, report)
    with stackstate.pending(verb), open_journal("teardown") as journal:
        journal.note("teardown", {"plan": plan.raw})
        removed = stack.drop_all()
        deployed.forget()
        journal.forget("teardown")
    return TeardownResult(plan.vsn.name, removed, plan.vsn.data_root)


@undo("teardown")
def _finish_teardown(fact: dict, report: Report) -> str:
    Stack.for_plan(Plan.from_json(fact["plan"]), report).drop_all()
    deployed.forget()
    return "finished a half-done teardown (containerless)"
