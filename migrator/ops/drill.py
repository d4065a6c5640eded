"""`migrator drill`: restore a snapshot into scratch data, boot it in isolation, probe it, tear it down.

Meant for cron; production containers and data are never touched. Reports the RTO: docs/snapshots.md#restore-drills."""

from __future__ import annotations

import copy
import os
import secrets as pysecrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from migrator.catalog.listing import open_snapshot
from migrator.errors import MigratorError
from migrator.ops.deploy import deploy
from migrator.ops.load_dump import load_entry
from migrator.ops.restore import restore, snapshot_plan
from migrator.plan.model import Plan, Secrets
from migrator.stack import dumps
from migrator.stack.probes import probe_once
from migrator.stack.signatures import TrustedKeys, trusted_keys
from migrator.stack.signatures import check as check_signatures
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import conforming, registry
from migrator.state.files import write_json
from migrator.storage.base import SnapshotStore

DRILL_PREFIX = "drill-"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rename(name: str, tag: str) -> str:
    return f"{DRILL_PREFIX}{tag}-{name}"[:63]


def drill_plan(raw: dict, scratch: Path, tag: str) -> tuple[dict, dict[str, str]]:
    """The snapshot's plan made isolated: new VSN label and network, every published port moved to a free
    one, container names prefixed (flat plans) or a distinct Host name. Returns (plan, volume renames)."""
    r = copy.deepcopy(raw)
    r.pop("backup", None)
    r.pop("health", None)
    r["vsn"]["name"] = _rename(r["vsn"]["name"], tag)
    r["vsn"]["data_root"] = str(scratch)
    r["network"] = _rename(r.get("network", f"{raw['vsn']['name']}-net"), tag)
    for svc in r["services"]:
        for port in svc.get("ports", []):
            port["host"] = _free_port()
            port["address"] = "127.0.0.1"
    volume_names = {v["name"]: v["name"] for v in r["volumes"]}
    if "host" in r:
        r["host"]["name"] = _rename(r["host"].get("name", "migrator-host"), tag)
        for port in r["host"].get("ports", []):
            port["host"] = _free_port()
            port["address"] = "127.0.0.1"
    else:
        # Flat plans share the VSN's engine with production: every container name must differ.
        names = {x["name"]: _rename(x["name"], tag) for x in r["volumes"] + r["services"]}
        volume_names = {v["name"]: names[v["name"]] for v in r["volumes"]}
        for vol in r["volumes"]:
            vol["name"] = names[vol["name"]]
        for svc in r["services"]:
            svc["name"] = names[svc["name"]]
            svc["volumes_from"] = [names[v] for v in svc.get("volumes_from", [])]
            svc["depends_on"] = [names[d] for d in svc.get("depends_on", [])]
            for hooks in svc.get("hooks", {}).values():
                for hook in hooks:
                    if "container" in hook:
                        hook["container"] = names[hook["container"]]
    return r, volume_names


def _load_dumps(snap, source: Plan, drilled: Plan, engine, secrets: Secrets, identity: Path | None,
                report: Report) -> dict[str, dict]:
    """Each database dump of the snapshot, loaded into a scratch database (<database>_drill) of its service in
    the drill stack: the dump is proved to load, beside the physical data proved to boot."""
    out: dict[str, dict] = {}
    if not snap.manifest.dumps:
        return out
    renamed = dict(zip([s.name for s in source.services], [s.name for s in drilled.services], strict=True))
    by_name = {s.name: s for s in source.services}
    for entry in snap.manifest.dumps:
        svc = by_name.get(entry.service)
        container = renamed.get(entry.service)
        if svc is None or svc.dump is None or container is None or not svc.enabled:
            out[f"{entry.service}/{entry.database}"] = {"ok": False, "detail": "no such service with a dump in the plan"}
            continue
        if identity is None and snap.manifest.encrypted:
            ident = (source.backup.get("encryption") or {}).get("identity_file")
            identity = Path(ident) if ident else None
        scratch_db = f"{entry.database}_drill"[:63]
        load_entry(snap, entry, engine, container, svc.dump, dumps.password_of(svc.dump, secrets, entry.service),
                   scratch_db, identity, report)
        out[f"{entry.service}/{entry.database}"] = {"ok": True, "into": scratch_db, "bytes": entry.uncompressed}
        report(f"drill: dump of {entry.database} loaded into {scratch_db} in {container}")
    return out


@dataclass
class DrillResult:
    """A drill's outcome; the optional fields are set as far as it got (and left out of the JSON before)."""
    snapshot_id: str
    store: str
    scratch: str
    bytes: int
    kind: str
    signature: str | None
    ok: bool = False
    services: dict[str, dict] = field(default_factory=dict)
    rto_data_s: float | None = None
    files: int | None = None
    rto_healthy_s: float | None = None
    dumps: dict[str, dict] | None = None
    error: str | None = None
    duration: float | None = None

    def to_json(self) -> dict:
        out = {"snapshot_id": self.snapshot_id, "store": self.store, "scratch": self.scratch, "ok": self.ok,
               "bytes": self.bytes, "kind": self.kind, "services": self.services, "signature": self.signature}
        for key in ("rto_data_s", "files", "rto_healthy_s", "dumps", "error", "duration"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def drill(store: SnapshotStore, vsn: str, snapshot_id: str, *, plan: Plan | None, secrets: Secrets, identity: Path | None = None,
          scratch: Path | None = None, report: Report = quiet, trusted: TrustedKeys | None = None) -> DrillResult:
    """`trusted`: the keys the snapshot's signature may come from (default: `plan`'s; the snapshot's own
    plan copy is what the signature vouches for, so it never names them)."""
    started = time.monotonic()
    verdicts = conforming.remembered()
    snap = open_snapshot(store, vsn, snapshot_id, verdicts)
    manifest = snap.manifest
    signature = check_signatures(snap, sorted(manifest.volumes), trusted if trusted is not None
                                 else trusted_keys(plan), report)
    source_plan = plan or snapshot_plan(snap, verdicts)
    tag = pysecrets.token_hex(2)
    scratch = Path(scratch) if scratch else registry.DRILL.path / f"{manifest.snapshot_id}-{tag}"
    scratch.mkdir(parents=True, exist_ok=False, mode=0o700)
    result = DrillResult(manifest.snapshot_id, store.url, str(scratch), snap.restore_size(), manifest.kind, signature)
    stack = None
    try:
        report(f"drill: restoring {manifest.snapshot_id} into {scratch}")
        restored = restore(store, vsn, manifest.snapshot_id, plan=source_plan, into=scratch / "restored",
                           identity=identity, report=report, snapshot=snap, signature=signature)
        raw, renames = drill_plan(source_plan.raw, scratch / "data", tag)
        (scratch / "data").mkdir(mode=0o755)
        for original, renamed in renames.items():
            src = scratch / "restored" / original
            if src.exists():
                os.rename(src, scratch / "data" / renamed)
        result.rto_data_s = round(time.monotonic() - started, 3)
        result.files = restored.files
        drill_stack_plan = Plan.from_json(raw)
        stack = Stack.for_plan(drill_stack_plan, report)
        report("drill: booting the isolated stack")
        deployed = deploy(drill_stack_plan, secrets, report=report, record=False)
        engine = stack.rest_engine()
        for svc in drill_stack_plan.enabled_services:
            probe = probe_once(engine, svc, svc.health) if svc.health else None
            result.services[svc.name] = {"ok": probe.ok if probe else True,
                                            "detail": probe.detail if probe else deployed.health.get(svc.name)}
        result.rto_healthy_s = round(time.monotonic() - started, 3)
        failed = [n for n, r in result.services.items() if not r["ok"]]
        if failed:
            raise MigratorError(f"drill: service(s) unhealthy after restore: {', '.join(failed)}")
        result.dumps = _load_dumps(snap, source_plan, drill_stack_plan, engine, secrets, identity, report)
        result.ok = True
        return result
    except MigratorError as exc:
        result.error = exc.message
        raise
    finally:
        if stack is not None:
            try:
                stack.drop_all()
            except MigratorError as exc:
                report(f"drill: could not remove the drill stack: {exc.message}")
        shutil.rmtree(scratch, ignore_errors=True)
        result.duration = round(time.monotonic() - started, 3)
        # Health checks read this (drill freshness); notification on failure plugs in here as well.
        write_json(registry.LAST_DRILL.path, {**result.to_json(), "time": time.time()})
