"""`migrator load-dump`: load a database dump from a snapshot into the running service.

Signature first, then each object is read once whole to check size and sha256 before a byte is loaded
(a load cannot be undone halfway); nothing is held on disk. Details: docs/databases.md#commands."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from migrator.archive.sealstream import check_object, open_stream
from migrator.catalog.listing import open_snapshot
from migrator.catalog.manifest import DumpEntry
from migrator.catalog.snapshot import Snapshot
from migrator.engine.base import ContainerEngine
from migrator.errors import PreflightFailed, UsageError
from migrator.jsonschemas import plan_pattern
from migrator.plan.model import Dump, Plan, Secrets
from migrator.stack import dumps
from migrator.stack.signatures import TrustedKeys, trusted_keys
from migrator.stack.signatures import check as check_signatures
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import conforming
from migrator.storage.base import SnapshotStore


@dataclass
class LoadDumpResult:
    snapshot_id: str
    service: str
    signature: str
    loaded: list[dict] = field(default_factory=list)  # {database, into, bytes}
    duration: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def load_dump(store: SnapshotStore, vsn: str, snapshot_id: str, *, plan: Plan, secrets: Secrets | None,
              service: str, database: str | None = None, as_name: str | None = None, identity: Path | None = None,
              trusted: TrustedKeys | None = None, report: Report = quiet) -> LoadDumpResult:
    started = time.monotonic()
    if as_name is not None and not plan_pattern("database_name").search(as_name):  # it goes into CREATE DATABASE
        raise UsageError(f"--as {as_name[:80]!r} is not a database name migrator creates",
                         hint="letters, digits, _ and -, at most 63, not starting with -")
    snap = open_snapshot(store, vsn, snapshot_id, conforming.remembered())
    entries = [d for d in snap.manifest.dumps if d.service == service and database in (None, d.database)]
    if not entries:
        held = sorted(f"{d.service}/{d.database}" for d in snap.manifest.dumps)
        raise UsageError(f"snapshot {snap.id} holds no dump of {service}{'/' + database if database else ''}",
                         hint="dumps in it: " + (", ".join(held) if held else "none (no service has `dump` "
                                                                              "in the plan, or it was not running)"))
    if as_name is not None and len(entries) > 1:
        raise UsageError("--as loads one database: name it with --database",
                         hint="databases dumped: " + ", ".join(d.database for d in entries))
    svc = next((s for s in plan.services if s.name == service), None)
    if svc is None or svc.dump is None:
        raise UsageError(f"the plan has no service {service} with a dump section",
                         hint="load-dump logs in with the plan's dump settings (user, password_secret)")
    if svc.dump.kind != entries[0].kind:
        raise UsageError(f"the dump of {service} is a {entries[0].kind} dump; the plan says {svc.dump.kind}")
    signature = check_signatures(snap, [], trusted if trusted is not None else trusted_keys(plan), report)
    encrypted = snap.manifest.encrypted
    if encrypted and identity is None:
        ident = (plan.backup.get("encryption") or {}).get("identity_file")
        if not ident:
            raise UsageError("the snapshot is encrypted: pass --identity FILE (an age identity)")
        identity = Path(ident)
    password = dumps.password_of(svc.dump, secrets, service)
    stack = Stack.for_plan(plan, report)
    engine = stack.rest_engine()
    info = engine.get(service)
    if info is None or not info.running:
        raise PreflightFailed(f"service {service} is not running: a dump loads into the running database",
                              hint=f"start it first: migrator start {service}")
    result = LoadDumpResult(snapshot_id=snap.id, service=service, signature=signature)
    for entry in entries:
        load_entry(snap, entry, engine, service, svc.dump, password, as_name, identity, report)
        result.loaded.append({"database": entry.database, "into": as_name or entry.database,
                              "bytes": entry.uncompressed})
    result.duration = round(time.monotonic() - started, 3)
    return result


def load_entry(snap: Snapshot, entry: DumpEntry, engine: ContainerEngine, container: str, dump: Dump,
               password: str | None, into: str | None, identity: Path | None, report: Report) -> None:
    """Check one dump object against the manifest, then stream it into `container` (a new database `into`,
    or over the dumped one)."""
    where = f"dump {entry.name} of snapshot {snap.id}"
    report(f"checking {where} ({entry.size} bytes)")
    with snap.open_reader(entry.name) as fh:
        check_object(fh, size=entry.size, sha256=entry.sha256, where=where)
    report(f"loading {entry.database} into {into or entry.database} in {container}")
    with snap.open_reader(entry.name) as fh:
        chunks = open_stream(fh, plain_size=entry.uncompressed, encrypted=snap.manifest.encrypted,
                             identity_file=identity, where=where)
        dumps.load(engine, container, dump, entry.database, password, chunks, into=into)
