"""Committed snapshots of one VSN in one store, newest last; debris (no manifest) told apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrator.catalog.manifest import MANIFEST, MAX_MANIFEST_BYTES, Manifest, is_snapshot_id
from migrator.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from migrator.state.conforming import ConformingDocs


@dataclass
class Listing:
    snapshots: list[Manifest]
    debris: list[str]  # snapshot dirs without a (valid) manifest: uncommitted or damaged
    broken: dict[str, str]  # id -> why its manifest was rejected


def list_snapshots(store, vsn: str, conforming: ConformingDocs | None = None) -> Listing:
    """`conforming`: manifests already seen to pass their schema check skip it (Manifest.parse)."""
    snapshots, debris, broken = [], [], {}
    for name in sorted(store.list_dir(vsn)):
        if not is_snapshot_id(name):
            continue
        key = f"{vsn}/{name}/{MANIFEST}"
        if store.size(key) is None:
            debris.append(name)
            continue
        try:
            manifest = Manifest.parse(store.get_bytes(key, MAX_MANIFEST_BYTES), f"{store.url}/{key}", conforming)
        except IntegrityError as exc:
            broken[name] = exc.message
            debris.append(name)
            continue
        if manifest.snapshot_id != name or manifest.vsn != vsn:
            broken[name] = "manifest names another snapshot"
            debris.append(name)
            continue
        snapshots.append(manifest)
    return Listing(snapshots=snapshots, debris=debris, broken=broken)


def read_manifest(store, vsn: str, snapshot_id: str, conforming: ConformingDocs | None = None) -> Manifest:
    """`latest` or an id -> its validated manifest; a missing one is an IntegrityError (exit 6)."""
    if snapshot_id in ("latest", "", None):
        listing = list_snapshots(store, vsn, conforming)
        if not listing.snapshots:
            raise UsageError(f"no snapshots of {vsn} in {store.url}", hint="`migrator snapshots --from URL` lists them")
        return listing.snapshots[-1]
    if not is_snapshot_id(snapshot_id):
        raise UsageError(f"not a snapshot id: {snapshot_id!r} (expected YYYYMMDDTHHMMSSZ-xxxxxx or latest)")
    key = f"{vsn}/{snapshot_id}/{MANIFEST}"
    if store.size(key) is None:
        raise IntegrityError(f"snapshot {snapshot_id} has no manifest in {store.url} (missing or uncommitted)")
    manifest = Manifest.parse(store.get_bytes(key, MAX_MANIFEST_BYTES), f"{store.url}/{key}", conforming)
    if manifest.snapshot_id != snapshot_id or manifest.vsn != vsn:
        raise IntegrityError(f"manifest of {snapshot_id} names {manifest.vsn}/{manifest.snapshot_id}")
    return manifest
