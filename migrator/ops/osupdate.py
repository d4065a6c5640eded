"""`migrator os-update prepare|finish|run`: carry a VSN through its OS update without data loss.

The snapshot is taken after going containerless, so snapshot, fingerprint and the data the update must
not touch are one and the same state. Steps: docs/os-update.md#os-update."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from migrator.archive.fingerprint import compare, fingerprint
from migrator.errors import IntegrityError, MigratorError, UsageError
from migrator.ops.backup import backup
from migrator.ops.deploy import deploy
from migrator.ops.restore import restore
from migrator.ops.teardown import teardown
from migrator.plan import load_secrets
from migrator.plan.model import Plan, Secrets
from migrator.stack.topology import Report, quiet
from migrator.state import registry
from migrator.state.files import read_json, write_json
from migrator.storage import open_stores

PRE_UPDATE_TAG = "pre-update"


def _marker() -> Path:
    return registry.OS_UPDATE.path


def _fingerprints(plan: Plan) -> dict[str, dict]:
    return {v.name: fingerprint(Path(v.root_dir(plan.vsn.data_root))) for v in plan.volumes
            if Path(v.root_dir(plan.vsn.data_root)).exists()}


@dataclass
class Prepared:
    """The pre-update snapshot and the fingerprint taken of the data."""
    snapshot_id: str
    targets: list[str]
    files: int
    volumes: list[str]

    def to_json(self) -> dict:
        return {"prepared": True, "snapshot_id": self.snapshot_id, "targets": self.targets, "files": self.files,
                "volumes": self.volumes}


@dataclass
class Finished:
    """The data checked against the fingerprint (restored on a mismatch when asked), the stack redeployed."""
    snapshot_id: str
    differences: list[str]
    restored: bool
    health: dict[str, str]

    def to_json(self) -> dict:
        return {"finished": True, "snapshot_id": self.snapshot_id, "differences": self.differences,
                "restored": self.restored, "health": self.health}


@dataclass
class UpdateRun:
    prepared: Prepared
    command: str
    command_exit: int
    command_output: str
    finished: Finished

    def to_json(self) -> dict:
        return {"prepared": self.prepared.to_json(), "command": self.command, "command_exit": self.command_exit,
                "command_output": self.command_output, "finished": self.finished.to_json()}


def prepare(plan: Plan, secrets: Secrets, targets: list[str] | None, report: Report = quiet) -> Prepared:
    if _marker().exists():
        raise UsageError("an OS update is already prepared on this VSN",
                         hint="run `migrator os-update finish` (after the update) first")
    urls = list(targets or plan.backup.get("targets", []))
    if not urls:
        raise UsageError("no backup target for the pre-update snapshot", hint="add backup.targets or pass --to URL")
    open_stores(urls, plan.backup)  # unreachable store -> exit 8 before anything stops
    report("bringing the VSN to the containerless state")
    down = teardown(plan, report)
    report("taking the pre-update snapshot")
    snap = backup(plan, urls, [PRE_UPDATE_TAG], report)
    report("fingerprinting the data")
    prints = _fingerprints(plan)
    write_json(registry.OS_UPDATE_FINGERPRINT.path, prints)
    write_json(_marker(), {"prepared": time.time(), "snapshot_id": snap.snapshot_id, "targets": urls,
                           "plan": plan.raw, "secrets": secrets.path, "removed": down.removed})
    return Prepared(snap.snapshot_id, urls, sum(len(p) for p in prints.values()), sorted(prints))


def finish(restore_on_mismatch: bool = False, identity: Path | None = None, report: Report = quiet) -> Finished:
    marker = read_json(_marker())
    if marker is None:
        raise UsageError("no OS update is prepared on this VSN", hint="run `migrator os-update prepare` first")
    plan = Plan.from_json(marker["plan"])
    secrets = load_secrets(marker["secrets"]) if marker.get("secrets") else Secrets()
    before = read_json(registry.OS_UPDATE_FINGERPRINT.path, {})
    report("checking the data against the pre-update fingerprint")
    differences = _differences(before, _fingerprints(plan))
    restored = None
    if differences:
        if not restore_on_mismatch:
            raise IntegrityError(f"the data changed during the OS update: {len(differences)} difference(s); "
                                 "nothing was redeployed", details=differences,
                                 hint="inspect the listed paths; `migrator os-update finish --restore-on-mismatch` "
                                      "restores the pre-update snapshot")
        store = open_stores([marker["targets"][0]], plan.backup)[0]
        report(f"restoring the pre-update snapshot {marker['snapshot_id']}")
        restored = restore(store, plan.vsn.name, marker["snapshot_id"], plan=plan, identity=identity,
                           touch_containers=False, report=report)
        again = _differences(before, _fingerprints(plan))
        if again:
            raise IntegrityError("the restored data still differs from the pre-update fingerprint", details=again)
    report("redeploying the recorded plan")
    deployed = deploy(plan, secrets, report=report)
    _marker().unlink()
    registry.OS_UPDATE_FINGERPRINT.path.unlink(missing_ok=True)
    return Finished(marker["snapshot_id"], differences, restored is not None, deployed.health)


def _differences(before: dict, after: dict) -> list[str]:
    lines = []
    for volume in sorted(set(before) | set(after)):
        lines += [f"{volume}/{line}" for line in compare(before.get(volume, {}), after.get(volume, {}))]
    return lines


def run_update(plan: Plan, secrets: Secrets, command: str, targets: list[str] | None,
               restore_on_mismatch: bool = False, report: Report = quiet) -> UpdateRun:
    prepared = prepare(plan, secrets, targets, report)
    report(f"running the update: {command}")
    # The operator's own update command line (not plan data): bash interprets it, as on a terminal.
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    finished = finish(restore_on_mismatch, report=report)
    result = UpdateRun(prepared, command, proc.returncode, (proc.stdout + proc.stderr)[-4000:], finished)
    if proc.returncode != 0:
        data = (f"data restored from the pre-update snapshot {finished.snapshot_id}" if finished.restored
                else "unchanged data")
        raise MigratorError(f"the update command exited {proc.returncode}; the stack was redeployed on the "
                            f"{data}: {(proc.stderr or proc.stdout).strip()[-300:]}",
                            hint="fix the update and run `migrator os-update run` again")
    return result
