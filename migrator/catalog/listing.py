"""Committed snapshots of one VSN in one store, newest last; debris (no manifest) told apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migrator.catalog.manifest import MANIFEST, Manifest, is_snapshot_id
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
    known: dict[str, Snapshot] = field(default_factory=dict)  # the listed snapshots' handles, by id

    def handle(self, snapshot_id: str) -> Snapshot:
        """The handle of a listed snapshot; its chain reuses the manifests this listing read."""
        return self.known.get(snapshot_id) or Snapshot(self.store, self.vsn, snapshot_id,
                                                       conforming=self.conforming, known=self.known)

    def handles(self) -> list[Snapshot]:
        return [self.handle(m.snapshot_id) for m in self.snapshots]


def list_snapshots(store: SnapshotStore, vsn: str, conforming: ConformingDocs | None = None) -> Listing:
    """`conforming`: manifests already seen to pass their schema check skip it (Manifest.parse)."""
    snapshots, debris, broken = [], [], {}
    known: dict[str, Snapshot] = {}
    for name in sorted(store.list_dir(vsn)):
        if not is_snapshot_id(name):
            continue
        if store.size(f"{vsn}/{name}/{MANIFEST}") is None:
            debris.append(name)
            continue
        snap = Snapshot(store, vsn, name, conforming=conforming, known=known)
        try:
            snapshots.append(snap.read_manifest(present=True))
        except IntegrityError as exc:
            broken[name] = exc.message
            debris.append(name)
            del known[name]
    return Listing(store, vsn, snapshots=snapshots, debris=debris, broken=broken, conforming=conforming,
                   known=known)


def open_snapshot(store: SnapshotStore, vsn: str, snapshot_id: str | None,
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
