"""The staging lifecycle of a stack on one VSN: `archive`, `unarchive`, `cleanup`.

The stack-state transitions are in state/stackstate.py; the caller holds the operation lock.
What each does: docs/operations.md#stack-states."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from migrator.errors import MigratorError, UsageError
from migrator.ops import cron
from migrator.ops.backup import backup
from migrator.ops.deploy import DeployResult, deploy
from migrator.ops.teardown import TeardownResult, teardown
from migrator.plan import validate_files
from migrator.plan.model import Plan
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import chainrecord, deployed, registry, stackstate

FINAL_TAG = "final"


@dataclass
class ArchiveResult:
    teardown: TeardownResult
    stack_state: str | None

    def to_json(self) -> dict:
        return {**self.teardown.to_json(), "stack_state": self.stack_state}


@dataclass
class UnarchiveResult:
    deploy: DeployResult
    plan: str
    secrets: str | None
    stack_state: str | None

    def to_json(self) -> dict:
        return {**self.deploy.to_json(), "plan": self.plan, "secrets": self.secrets, "stack_state": self.stack_state}


@dataclass
class CleanupResult:
    vsn: str
    snapshot_id: str | None = None  # the final snapshot (with its targets and size), if one was taken
    targets: list[str] = field(default_factory=list)
    size: int = 0
    removed_containers: list[str] = field(default_factory=list)
    removed_data: list[str] = field(default_factory=list)
    removed_schedules: list[str] = field(default_factory=list)
    stack_state: str | None = None

    def to_json(self) -> dict:
        snap = {"targets": self.targets, "size": self.size} if self.snapshot_id else {}
        return {"vsn": self.vsn, "snapshot_id": self.snapshot_id, **snap,
                "removed_containers": self.removed_containers, "removed_data": self.removed_data,
                "removed_schedules": self.removed_schedules, "stack_state": self.stack_state}


def archive(plan: Plan, report: Report = quiet) -> ArchiveResult:
    done = teardown(plan, report, verb="archive")
    return ArchiveResult(done, stackstate.current())


def unarchive(report: Report = quiet) -> UnarchiveResult:
    if stackstate.current() != stackstate.ARCHIVED:
        raise stackstate.InvalidTransition(f"stack is {stackstate.current() or 'absent'}: only an Archived stack "
                                           "can be unarchived",
                                           hint="`migrator deploy PLAN` deploys from scratch")
    info = deployed.current() or {}
    if not info.get("plan") or not Path(info["plan"]).exists():
        raise UsageError("no remembered plan to unarchive", hint="deploy with `migrator deploy PLAN --secrets F`")
    plan, secrets = validate_files(info["plan"], info.get("secrets"))
    done = deploy(plan, secrets, report=report, verb="unarchive")
    return UnarchiveResult(done, info["plan"], info.get("secrets"), stackstate.current())


def _remove_data(plan: Plan, report: Report) -> list[str]:
    """Remove the plan's volume dirs: renamed aside first (one atomic step per volume, so an interrupted
    cleanup leaves whole volumes or debris, never a half-deleted live dir), then deleted."""
    root = Path(plan.vsn.data_root)
    removed = []
    for vol in plan.volumes:
        live = Path(vol.root_dir(plan.vsn.data_root))
        if live.is_symlink():
            raise MigratorError(f"{live} is a symlink; refusing to delete through it",
                                hint="remove it by hand if it is yours")
        if live.exists():
            aside = root / f".{vol.name}.cleanup-{int(time.time())}"
            os.rename(live, aside)
            removed.append(str(live))
    for debris in root.glob(".*.cleanup-*") if root.is_dir() else ():
        report(f"cleanup: deleting {debris}")
        shutil.rmtree(debris)
    try:
        root.rmdir()  # only when empty: the data root may hold things that are not ours
    except OSError:
        pass
    return removed


def _forget_stack(plan: Plan) -> None:
    chainrecord.forget(plan.vsn.name)
    for entry in registry.PER_STACK:
        entry.path.unlink(missing_ok=True)


def cleanup(plan: Plan, *, snapshot: bool = True, targets: list[str] | None = None,
            report: Report = quiet) -> CleanupResult:
    """Final snapshot (unless `snapshot` is False), then everything of the stack goes. The confirmation
    (--yes or the typed VSN name) is the CLI's job; nothing here asks."""
    if snapshot and not (targets or plan.backup.get("targets")):
        raise UsageError("cleanup needs a final snapshot but the plan has no backup.targets",
                         hint="pass --to URL for the final snapshot, or --no-snapshot to delete without one")
    result = CleanupResult(plan.vsn.name)
    with stackstate.pending("cleanup"):
        if snapshot:
            report("cleanup: taking the final snapshot")
            snap = backup(plan, targets, [FINAL_TAG], report)
            result.snapshot_id, result.targets, result.size = snap.snapshot_id, snap.targets, snap.size
        result.removed_containers = Stack.for_plan(plan, report).drop_all()
        result.removed_data = _remove_data(plan, report)
        result.removed_schedules = cron.remove_all_installed()
        _forget_stack(plan)
    result.stack_state = stackstate.current()
    return result
