"""`snapshots`, `verify` and `prune`: what a store holds for a VSN, whether it is intact, and retention."""

from __future__ import annotations

import hashlib
import time

from migrator.catalog.listing import list_snapshots, read_manifest
from migrator.catalog.manifest import snapshot_time
from migrator.catalog.retention import Policy, decide
from migrator.errors import IntegrityError
from migrator.ops.stack import Report, quiet
from migrator.state import conforming

READ_CHUNK = 1024 * 1024
# Uncommitted snapshot dirs younger than this may belong to a backup still uploading: leave them.
DEBRIS_MIN_AGE = 24 * 3600


def snapshot_row(m) -> dict:
    return {"id": m.snapshot_id, "time": m.created, "tags": m.tags, "size": m.size,
            "uncompressed": sum(o.uncompressed for o in m.objects), "volumes": sorted(m.volumes),
            "encrypted": m.encrypted, "downtime": m.timings.get("downtime", {})}


def snapshots(store, vsn: str) -> dict:
    listing = list_snapshots(store, vsn, conforming.remembered())
    return {"store": store.url, "vsn": vsn, "snapshots": [snapshot_row(m) for m in listing.snapshots],
            "uncommitted": len(listing.debris)}


def verify(store, vsn: str, snapshot_id: str, read_data: bool, report: Report = quiet) -> dict:
    manifest = read_manifest(store, vsn, snapshot_id, conforming.remembered())
    problems = []
    checked = 0
    for obj in manifest.objects:
        key = f"{vsn}/{manifest.snapshot_id}/{obj.name}"
        size = store.size(key)
        if size is None:
            problems.append(f"{obj.name}: missing")
            continue
        if size != obj.size:
            problems.append(f"{obj.name}: size {size} != {obj.size} in the manifest")
            continue
        if read_data:
            report(f"reading {obj.name} ({obj.size} bytes)")
            digest = hashlib.sha256()
            with store.open_reader(key) as fh:
                while chunk := fh.read(READ_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != obj.sha256:
                problems.append(f"{obj.name}: sha256 {digest.hexdigest()} != {obj.sha256} in the manifest")
                continue
        checked += 1
    if problems:
        raise IntegrityError(f"snapshot {manifest.snapshot_id} in {store.url} is damaged: {problems[0]}",
                             details=problems)
    return {"store": store.url, "snapshot_id": manifest.snapshot_id, "objects": checked, "read_data": read_data,
            "size": manifest.size, "ok": True}


def prune(store, vsn: str, policy: Policy, dry_run: bool, report: Report = quiet, now: float | None = None) -> dict:
    listing = list_snapshots(store, vsn, conforming.remembered())
    decision = decide([(m.snapshot_id, m.created, m.tags) for m in listing.snapshots], policy)
    if policy.empty and not dry_run:
        # Refuse to delete everything because no --keep option was given.
        decision.remove = []
    now = now if now is not None else time.time()
    debris = []
    for sid in listing.debris:
        mtime = store.mtime(f"{vsn}/{sid}") or snapshot_time(sid)
        if now - mtime >= DEBRIS_MIN_AGE:
            debris.append(sid)
    if not dry_run:
        for sid in decision.remove + debris:
            report(f"removing {sid}")
            store.delete_prefix(f"{vsn}/{sid}")
    return {"store": store.url, "vsn": vsn, "dry_run": dry_run, "keep": decision.keep,
            "remove": decision.remove, "debris_removed": debris}
