"""One committed snapshot in one store: its object keys, manifest, plan copy and parent chain.

The store is untrusted: the manifest is validated, and a chain is followed only to older snapshots of the
same VSN and at most `MAX_CHAIN` links deep, so it cannot loop or run away."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from migrator.catalog.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_PLAN_BYTES,
    PLAN_COPY,
    Manifest,
    ObjectEntry,
    TreeEntry,
    is_snapshot_id,
)
from migrator.errors import IntegrityError

if TYPE_CHECKING:
    from migrator.state.conforming import ConformingDocs
    from migrator.storage.base import ObjectWriter, SnapshotStore

# Links an incremental chain may have. The backup policy starts a new full long before (backup.full_every,
# at most 366 days of dailies); anything longer did not come from migrator.
MAX_CHAIN = 400


class Snapshot:
    """`store` + `vsn` + `snapshot_id`; the manifest is read on first use unless handed in."""

    def __init__(self, store: SnapshotStore, vsn: str, snapshot_id: str, manifest: Manifest | None = None,
                 conforming: ConformingDocs | None = None, known: dict[str, Snapshot] | None = None):
        self.store = store
        self.vsn = vsn
        self.id = snapshot_id
        self._manifest = manifest
        self._raw: bytes | None = None  # the manifest's bytes, when this handle read them
        self._conforming = conforming
        # the handles of this store's snapshots already made (a listing's), shared along a chain: each
        # manifest is read, parsed and kept (with its bytes) once
        self._known = known if known is not None else {}
        self._known.setdefault(snapshot_id, self)

    def __repr__(self) -> str:
        return f"Snapshot({self.store.url}/{self.vsn}/{self.id})"

    @property
    def prefix(self) -> str:
        return f"{self.vsn}/{self.id}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self.read_manifest()
        return self._manifest

    def read_manifest(self, present: bool = False) -> Manifest:
        """Read, validate and keep the manifest (and its bytes). `present`: the caller already saw it exists."""
        key = self.key(MANIFEST)
        if not present and self.store.size(key) is None:
            raise IntegrityError(f"snapshot {self.id} has no manifest in {self.store.url} (missing or uncommitted)")
        data = self.store.get_bytes(key, MAX_MANIFEST_BYTES)
        manifest = Manifest.parse(data, f"{self.store.url}/{key}", self._conforming)
        if manifest.snapshot_id != self.id or manifest.vsn != self.vsn:
            raise IntegrityError(f"manifest of {self.id} names {manifest.vsn}/{manifest.snapshot_id}")
        self._manifest, self._raw = manifest, data
        return manifest

    def manifest_bytes(self) -> bytes:
        """The manifest exactly as stored (what its signature covers). When this handle's manifest was
        handed in rather than read, the bytes are read now and must parse to the same manifest."""
        if self._raw is None:
            self.manifest  # noqa: B018 - read (and keep the bytes) unless handed in
        if self._raw is None:
            key = self.key(MANIFEST)
            data = self.store.get_bytes(key, MAX_MANIFEST_BYTES)
            if Manifest.parse(data, f"{self.store.url}/{key}", self._conforming) != self.manifest:
                raise IntegrityError(f"the manifest of {self.id} in {self.store.url} changed while it was read")
            self._raw = data
        return self._raw

    # -- objects ------------------------------------------------------------------------------------------

    def open_reader(self, name: str) -> BinaryIO:
        return self.store.open_reader(self.key(name))

    def open_writer(self, name: str) -> ObjectWriter:
        return self.store.open_writer(self.key(name))

    def put_bytes(self, name: str, data: bytes) -> None:
        self.store.put_bytes(self.key(name), data)

    def object_size(self, name: str) -> int | None:
        return self.store.size(self.key(name))

    def plan_bytes(self) -> bytes:
        """The plan copy as stored (untrusted: the caller validates it like a user's plan)."""
        return self.store.get_bytes(self.key(PLAN_COPY), MAX_PLAN_BYTES)

    def delete(self) -> None:
        """Uncommit (the manifest goes first), then remove every object: a run killed in between leaves
        debris that prune removes, never a listed snapshot with objects missing."""
        self.store.delete(self.key(MANIFEST))
        self.store.delete_prefix(self.prefix)

    # -- the chain ------------------------------------------------------------------------------------------

    def parent(self) -> Snapshot | None:
        pid = self.manifest.parent
        if pid is None:
            return None
        if not is_snapshot_id(pid) or not pid < self.id:
            raise IntegrityError(f"snapshot {self.id} names an impossible parent {pid!r}")
        return self._known.get(pid) or Snapshot(self.store, self.vsn, pid, conforming=self._conforming,
                                                known=self._known)

    def chain(self, volume: str) -> list[Snapshot]:
        """The snapshots whose objects rebuild `volume` as of this one, oldest (the whole copy) first.
        A missing or damaged link is an IntegrityError naming it."""
        links = [self]
        while links[-1].manifest.incremental(volume):
            if len(links) > MAX_CHAIN:
                raise IntegrityError(f"the chain of {volume} in snapshot {self.id} is longer than {MAX_CHAIN}")
            child = links[-1]
            try:
                parent = child.parent()
                if parent is None:
                    raise IntegrityError(f"snapshot {child.id} is incremental but names no parent")
                if volume not in parent.manifest.volumes:
                    raise IntegrityError(f"parent {parent.id} of {child.id} has no volume {volume}")
            except IntegrityError as exc:
                raise IntegrityError(f"snapshot {self.id} cannot be rebuilt: {exc.message}",
                                     hint="its parent chain is damaged; restore an older full snapshot "
                                          "or a later one whose chain is intact") from None
            links.append(parent)
        return links[::-1]

    def chain_objects(self, volumes: list[str] | None = None) -> Iterator[tuple[Snapshot, ObjectEntry]]:
        """Every archive object that rebuilding `volumes` (default: all of this snapshot's) reads, in
        the order restore applies them: per volume, oldest link first, phase order within a link."""
        for volume in volumes if volumes is not None else sorted(self.manifest.volumes):
            for link in self.chain(volume):
                for obj in link.manifest.objects_of(volume):
                    yield link, obj

    def restore_size(self, volumes: list[str] | None = None) -> int:
        """Bytes a restore of `volumes` reads from the store (the whole chain)."""
        return sum(obj.size for _link, obj in self.chain_objects(volumes))

    def needs(self) -> set[str]:
        """Ids of the snapshots a restore of this one reads (itself included)."""
        return {link.id for volume in self.manifest.volumes for link in self.chain(volume)}

    def tree(self, volume: str) -> TreeEntry | None:
        return self.manifest.tree_of(volume)


@dataclass(frozen=True)
class ObjectRef:
    """One stored object a check reads: where, and what the manifest says of it."""
    snapshot: Snapshot
    name: str
    size: int
    sha256: str

    @property
    def key(self) -> str:
        return self.snapshot.key(self.name)
