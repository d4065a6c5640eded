"""`migrator recover` — finish or undo what a killed run left behind, from the journal: a half-done deploy
or teardown goes to the containerless state, a half-done upgrade gets its old container back, services a
backup stopped are started again, and the local spools of killed backups are removed. Also run
automatically before any operation that takes the lock."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from migrator.ops.stack import Report, Stack, quiet
from migrator.plan.model import Plan
from migrator.state import deployed, journal
from migrator.state.paths import state_dir

Handler = Callable[[dict, Report], str]
HANDLERS: dict[str, Handler] = {}


def handler(key: str):
    def register(fn: Handler) -> Handler:
        HANDLERS[key] = fn
        return fn
    return register


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@handler("deploy")
def _undo_deploy(fact: dict, report: Report) -> str:
    Stack.for_plan(Plan.from_json(fact["plan"]), report).drop_all()
    deployed.forget()
    return "rolled a half-done deploy back to the containerless state"


@handler("teardown")
def _finish_teardown(fact: dict, report: Report) -> str:
    Stack.for_plan(Plan.from_json(fact["plan"]), report).drop_all()
    deployed.forget()
    return "finished a half-done teardown (containerless)"


@handler("upgrade")
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


def _load_handlers() -> None:
    """Modules that own an undo step register its handler when imported; import them only when a journal
    needs handling, so importing this module never drags in SSH or archive code (and never cycles)."""
    from migrator.ops import move, quiesce, restore  # noqa: F401


def pending() -> dict | None:
    """The journal of a dead run, or None (no journal, or its owner still runs)."""
    entry = journal.load()
    if entry is None or _pid_alive(entry.get("pid", -1)) and entry.get("pid") != os.getpid():
        return None
    return entry


def remove_dead_spools() -> list[str]:
    """Remove `<state dir>/spool/<snapshot id>/` left by backups killed before their clean-up; return
    their names. Every caller holds the operation lock, so no live backup owns one; restore --dry-run's
    preview-* dirs (it takes no lock) are left."""
    from migrator.catalog.manifest import is_snapshot_id

    removed = []
    for path in sorted((state_dir() / "spool").glob("*")):
        if is_snapshot_id(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def recover(report: Report = quiet) -> dict:
    entry = pending()
    actions = []
    if entry is not None:
        _load_handlers()
        unknown = []
        for key, fact in list(entry.get("undo", {}).items()):
            fn = HANDLERS.get(key)
            if fn is None:
                unknown.append(key)
                actions.append(f"unknown journal entry {key!r} left in the journal (written by another migrator version?)")
                continue
            actions.append(fn(fact, report))
            report(actions[-1])
        if not unknown:
            journal.clear()
    spools = remove_dead_spools()
    if spools:
        actions.append(f"removed the local spool of {len(spools)} killed backup(s): {', '.join(spools)}")
        report(actions[-1])
    if entry is None:
        return {"recovered": False, "actions": actions, "spools_removed": spools}
    return {"recovered": True, "verb": entry.get("verb"), "actions": actions, "spools_removed": spools}
