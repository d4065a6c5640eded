"""Committed snapshots of one VSN in one store, newest last; debris (no manifest) told apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migrator.catalog.manifest import MANIFEST, MAX_MANIFEST_BYTES, Manifest, is_snapshot_id
from migrator.catalog.snapshot import Snapshot
from migrator.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from migrator.state.conforming import ConformingDocs
    from migrator.storage.base import SnapshotStore


@dataclass
class Listing:
    store: SnapshotStore
    vsn: str
    snapshots: list[Manifest]
    debris: list[str]  # snapshot dirs without a (valid) manifest: uncommitted or damaged
    broken: dict[str, str]  # id -> why its manifest was rejected
    conforming: ConformingDocs | None = None
    _known: dict[str, Manifest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._known.update({m.snapshot_id: m for m in self.snapshots})

    def handle(self, snapshot_id: str) -> Snapshot:
        """The handle of a listed snapshot; its chain reuses the manifests this listing read."""
        return Snapshot(self.store, self.vsn, snapshot_id, self._known.get(snapshot_id), self.conforming,
                        self._known)

    def handles(self) -> list[Snapshot]:
        return [self.handle(m.snapshot_id) for m in self.snapshots]


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
    return Listing(store, vsn, snapshots=snapshots, debris=debris, broken=broken, conforming=conforming)


def open_snapshot(store, vsn: str, snapshot_id: str | None,
                  conforming: ConformingDocs | None = None) -> Snapshot:
    """`latest` (or None) or an id -> its handle, manifest read and validated."""
    if snapshot_id in ("latest", "", None):
        listing = list_snapshots(store, vsn, conforming)
        if not listing.snapshots:
            raise UsageError(f"no snapshots of {vsn} in {store.url}", hint="`migrator snapshots --from URL` lists them")
        return listing.handle(listing.snapshots[-1].snapshot_id)
    if not is_snapshot_id(snapshot_id):
        raise UsageError(f"not a snapshot id: {snapshot_id!r} (expected YYYYMMDDTHHMMSSZ-xxxxxx or latest)")
    snap = Snapshot(store, vsn, snapshot_id, conforming=conforming)
    snap.manifest  # noqa: B018 - read and validate now: a missing snapshot fails here, before any work
    return snap



def read_manifest(store, vsn: str, snapshot_id: str, conforming: ConformingDocs | None = None) -> Manifest:
    """`latest` or an id -> its validated manifest; a missing one is an IntegrityError (exit 6)."""
    return open_snapshot(store, vsn, snapshot_id, conforming).manifest
