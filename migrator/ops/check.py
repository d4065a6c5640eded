"""`migrator check`: VSN preflight (commands, engine, root, data root, free space, data dir sizes, dump tools).

Each check is one named line with ok and detail; exit 4 when one fails."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from migrator.engine.factory import engine_for_url
from migrator.errors import MigratorError, PreflightFailed, Unreachable
from migrator.plan.model import DEFAULT_SOCKETS, Plan
from migrator.plan.sizes import format_size
from migrator.stack.datadirs import data_dirs, existing_ancestor, tree_size
from migrator.stack.topology import Stack

# Commands migrator runs on a VSN: bash for hooks and cron lines, GNU tar + zstd for the archive pipeline.
REQUIRED_COMMANDS = ("bash", "tar", "zstd")
# Docker storage drivers the Host container runs well on: copy-on-write layers. vfs copies the whole Host
# image (150 MB and more, nested podman and its storage inside) for every container; devicemapper and aufs
# are gone from current Docker releases.
HOST_STORAGE_DRIVERS = ("overlay2", "btrfs", "zfs", "fuse-overlayfs")
CGROUP_DRIVERS = ("cgroupfs", "systemd")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class CheckReport:
    """Every preflight check of one `migrator check` run."""
    checks: tuple[CheckResult, ...]

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.checks if not r.ok]

    def to_json(self) -> dict:
        return {"checks": [r.to_json() for r in self.checks], "failed": len(self.failed)}



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
        facts = engine.facts()
        engine.close()
        results.append(CheckResult(f"engine {kind}", True, f"{url} answers (version {version})"))
        results += daemon_results(facts, host=bool(plan and plan.host))
    except Unreachable:
        raise  # a TLS daemon that refused us (exit 8): never reported as a mere missing engine
    except MigratorError as exc:
        results.append(CheckResult(f"engine {kind}", False, f"{exc.message} (hint: {exc.hint})"))
    if plan is None:
        return results
    root = Path(plan.vsn.data_root)
    try:
        results.append(_writable(root))
        free = shutil.disk_usage(existing_ancestor(root)).free
    except OSError as exc:  # a data root this user may not even look into (not root)
        return results + [CheckResult("data root", False, f"{root}: {exc.strerror or exc}")]
    results.append(CheckResult("free space", free >= plan.vsn.min_free,
                               f"{format_size(free)} free on {existing_ancestor(root)}, "
                               f"need at least {format_size(plan.vsn.min_free)}"))
    return results + size_results(plan) + database_results(plan)


DUMP_TOOLS = {"mariadb": "mariadb-dump", "postgres": "pg_dump"}


def database_results(plan: Plan) -> list[CheckResult]:
    """For each service with a dump: its dump tool is in the running container, and its probe runs a query
    (a tcp probe only proves a port is open, not that the database answers)."""
    wanted = [s for s in plan.services if s.enabled and s.dump is not None]
    if not wanted:
        return []
    results = []
    try:
        stack = Stack.for_plan(plan)
        engine = stack.rest_engine() if stack.rest_reachable() else None
    except MigratorError:  # the engine line above already says why
        engine = None
    for svc in wanted:
        tool = DUMP_TOOLS[svc.dump.kind]
        info = engine.get(svc.name) if engine is not None else None
        if info is None or not info.running:
            results.append(CheckResult(f"dump tool {svc.name}", True, f"{svc.name} is not running: {tool} is looked "
                                                                      f"for at the next backup"))
        else:
            code, out = engine.exec(svc.name, ["sh", "-c", f"command -v {tool}"], timeout=30)
            results.append(CheckResult(f"dump tool {svc.name}", code == 0,
                                       out.strip() if code == 0 else f"{tool} is not in {svc.name}'s image (hint: "
                                       f"use an image with the {svc.dump.kind} client, or drop the dump section)"))
        probe = svc.health
        results.append(CheckResult(f"database probe {svc.name}", True,
                                   "runs a query: " + " ".join(probe.command)[:80] if probe and probe.type == "cmd" else
                                   f"{probe.type if probe else 'no'} probe (hint: a cmd probe that runs a query, e.g. "
                                   f"[\"mariadb\", \"--user=root\", \"--execute=SELECT 1\"], proves the database "
                                   f"answers)"))
    return results


def daemon_results(facts: dict[str, str], *, host: bool) -> list[CheckResult]:
    """A Docker daemon's storage and cgroup driver, with what to change when they do not fit."""
    results = []
    driver = facts.get("storage_driver")
    if driver is not None:
        fits = driver in HOST_STORAGE_DRIVERS or not host
        detail = driver if fits else (f"{driver}: the Host container needs one of {', '.join(HOST_STORAGE_DRIVERS)} "
                                      "(hint: set \"storage-driver\": \"overlay2\" in /etc/docker/daemon.json and "
                                      "restart dockerd; images and containers must be recreated)")
        results.append(CheckResult("engine storage driver", fits, detail))
    cgroup = facts.get("cgroup_driver")
    if cgroup is not None:
        fits = cgroup in CGROUP_DRIVERS
        version = facts.get("cgroup_version")
        detail = f"{cgroup} (cgroup v{version})" if fits and version else cgroup or "none"
        if not fits:
            detail = (f"{detail}: containers run without cgroups, so stop timeouts and the Host container's "
                      "nested podman cannot work (hint: run dockerd as root with native.cgroupdriver=cgroupfs or "
                      "systemd in /etc/docker/daemon.json's exec-opts)")
        results.append(CheckResult("engine cgroup driver", fits, detail))
    return results


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


def report(plan: Plan | None) -> CheckReport:
    """`migrator check`: every check, failed ones included (the caller decides what a failure means)."""
    return CheckReport(tuple(run(plan)))


def require(plan: Plan) -> list[CheckResult]:
    results = run(plan)
    failed = [r for r in results if not r.ok]
    if failed:
        raise PreflightFailed(f"the VSN is not fit: {failed[0].name}: {failed[0].detail}",
                              details=[f"{r.name}: {r.detail}" for r in failed])
    return results
