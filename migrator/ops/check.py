"""`migrator check` — VSN preflight: the commands migrator runs, the engine socket answering, root,
data root writable with free space, each data dir within its volume's maximum size."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from migrator.engine.factory import engine_for_url
from migrator.errors import MigratorError, PreflightFailed
from migrator.plan.model import DEFAULT_SOCKETS, Plan
from migrator.plan.sizes import format_size
from migrator.stack.datadirs import data_dirs, existing_ancestor, tree_size

# Commands migrator runs on a VSN: bash for hooks and cron lines, GNU tar + zstd for the archive pipeline.
REQUIRED_COMMANDS = ("bash", "tar", "zstd")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}



def _writable(path: Path) -> CheckResult:
    target = path if path.exists() else existing_ancestor(path)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".migrator-check-"):
            pass
        where = "writable" if path.exists() else f"will be created (parent {target} writable)"
        return CheckResult("data root", True, f"{path} {where}")
    except OSError as exc:
        return CheckResult("data root", False, f"{target} is not writable: {exc.strerror}")


def run(plan: Plan | None) -> list[CheckResult]:
    results = []
    for cmd in REQUIRED_COMMANDS + (("age",) if plan and plan.backup.get("encryption") else ()):
        found = shutil.which(cmd)
        results.append(CheckResult(f"command {cmd}", bool(found), found or f"{cmd} not found in PATH"))
    results.append(CheckResult("root", os.geteuid() == 0,
                               "running as root" if os.geteuid() == 0 else f"running as uid {os.geteuid()}, need root"))
    kind = plan.vsn.engine if plan else "podman"
    url = plan.vsn.socket if plan else DEFAULT_SOCKETS["podman"]
    try:
        engine = engine_for_url(kind, url, plan.vsn.tls if plan else None)
        version = engine.ping()
        engine.close()
        results.append(CheckResult(f"engine {kind}", True, f"{url} answers (version {version})"))
    except MigratorError as exc:
        results.append(CheckResult(f"engine {kind}", False, exc.message))
    if plan is None:
        return results
    root = Path(plan.vsn.data_root)
    results.append(_writable(root))
    free = shutil.disk_usage(existing_ancestor(root)).free
    results.append(CheckResult("free space", free >= plan.vsn.min_free,
                               f"{format_size(free)} free on {existing_ancestor(root)}, "
                               f"need at least {format_size(plan.vsn.min_free)}"))
    return results + size_results(plan)


def size_results(plan: Plan) -> list[CheckResult]:
    """Each existing data dir within its volume's maximum size."""
    results = []
    for vol_name, mount, path in data_dirs(plan):
        if not path.exists():
            continue
        size = tree_size(path)
        limit = plan.volume(vol_name).max_size
        results.append(CheckResult(f"size {vol_name}/{mount}", size <= limit,
                                   f"{format_size(size)} of at most {format_size(limit)}"))
    return results


def require(plan: Plan) -> list[CheckResult]:
    results = run(plan)
    failed = [r for r in results if not r.ok]
    if failed:
        raise PreflightFailed(f"the VSN is not fit: {failed[0].name}: {failed[0].detail}",
                              details=[f"{r.name}: {r.detail}" for r in failed])
    return results
