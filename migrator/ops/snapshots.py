"""`snapshots`, `verify` and `prune`: what a store holds for a VSN, whether it is intact, and retention.

All three know chains: a row shows whether a snapshot is full or incremental, its parent, the bytes it
added and the bytes a restore of it reads; verify checks every object a snapshot's restore reads (its
whole chain); prune keeps every snapshot a kept one needs and deletes children before parents."""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass

from migrator.catalog.listing import list_snapshots, open_snapshot
from migrator.catalog.manifest import snapshot_time
from migrator.catalog.retention import Policy, decide
from migrator.catalog.snapshot import Snapshot
from migrator.errors import IntegrityError, UsageError
from migrator.stack.signatures import NO_KEYS, UNCHECKED, UNSIGNED, VALID, TrustedKeys, summary
from migrator.stack.signatures import check as check_signatures
from migrator.stack.topology import Report, quiet
from migrator.state import conforming
from migrator.storage.base import SnapshotStore

READ_CHUNK = 1024 * 1024
# Uncommitted snapshot dirs younger than this may belong to a backup still uploading: leave them.
DEBRIS_MIN_AGE = 24 * 3600


def snapshot_row(snap: Snapshot) -> dict:
    m = snap.manifest
    row = {"id": m.snapshot_id, "time": m.created, "tags": m.tags, "size": m.size,
           "uncompressed": sum(o.uncompressed for o in m.objects), "volumes": sorted(m.volumes),
           "encrypted": m.encrypted, "downtime": m.timings.get("downtime", {}),
           "kind": m.kind, "parent": m.parent, "added": m.size}
    try:
        row["restore_size"] = snap.restore_size()
    except IntegrityError as exc:
        row["restore_size"] = None
        row["broken"] = exc.message
    return row


def damaged(listing) -> list[dict]:
    """Snapshots whose manifest exists but was refused (malformed, hostile): listed, never counted by
    retention nor removed as debris, so one bad manifest costs only its own snapshot."""
    return [{"id": sid, "why": why} for sid, why in sorted(listing.broken.items())]


def uncommitted(listing) -> list[str]:
    """Snapshot dirs without a manifest: a backup that did not commit (or is still uploading)."""
    return [sid for sid in listing.debris if sid not in listing.broken]


@dataclass
class SnapshotList:
    """The committed snapshots of one VSN in one store, and what is not (uncommitted, damaged)."""
    store: str
    vsn: str
    snapshots: list[dict]
    uncommitted: int
    damaged: list[dict]

    def to_json(self) -> dict:
        return {"store": self.store, "vsn": self.vsn, "snapshots": self.snapshots, "uncommitted": self.uncommitted,
                "damaged": self.damaged}


@dataclass
class VerifyResult:
    store: str
    snapshot_id: str  # or "all"
    snapshots: int
    objects: int
    read: int
    read_data: bool
    subset: float | None
    size: int
    signature: str

    def to_json(self) -> dict:
        return {"store": self.store, "snapshot_id": self.snapshot_id, "snapshots": self.snapshots,
                "objects": self.objects, "read": self.read, "read_data": self.read_data, "subset": self.subset,
                "size": self.size, "signature": self.signature, "ok": True}


@dataclass
class PruneResult:
    store: str
    vsn: str
    dry_run: bool
    keep: dict[str, list[str]]  # id -> why it is kept
    remove: list[str]
    debris_removed: list[str]
    damaged: list[dict]

    def to_json(self) -> dict:
        return {"store": self.store, "vsn": self.vsn, "dry_run": self.dry_run, "keep": self.keep,
                "remove": self.remove, "debris_removed": self.debris_removed, "damaged": self.damaged}


def snapshots(store: SnapshotStore, vsn: str) -> SnapshotList:
    listing = list_snapshots(store, vsn, conforming.remembered())
    return SnapshotList(store.url, vsn, [snapshot_row(h) for h in listing.handles()], len(uncommitted(listing)),
                        damaged(listing))


def per_store(results: list[SnapshotList] | list[PruneResult]) -> dict:
    """One result per store: the first store's at the top level (the shape of a single-store run), every
    store's under "stores"."""
    rows = [r.to_json() for r in results]
    return {**rows[0], "stores": rows}


def parse_subset(text: str | None) -> float | None:
    """`--read-data-subset P%` (or a fraction like 0.1) -> a share in (0, 1]."""
    if text is None:
        return None
    raw = text.strip()
    try:
        share = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        share = math.nan
    if not 0 < share <= 1:
        raise UsageError(f"--read-data-subset takes a percentage in (0, 100]: {text!r}", hint="e.g. 10%")
    return share


def verify(store: SnapshotStore, vsn: str, snapshot_id: str, read_data: bool, report: Report = quiet,
           subset: float | None = None, rng: random.Random | None = None,
           trusted: TrustedKeys | None = None) -> VerifyResult:
    """Every object the snapshot's restore reads (its chain), and its tree states, present with the
    manifest's size; with `read_data` every sha256 recomputed; with `subset` those of a random share.
    First each snapshot's signatures (and its chain's): with `trusted` keys, one that fails is a problem
    and nothing of that snapshot is read."""
    verdicts = conforming.remembered()
    trusted = trusted if trusted is not None else TrustedKeys()
    problems: list[str] = []
    signatures: dict[str, str] = {}
    if snapshot_id == "all":
        listing = list_snapshots(store, vsn, verdicts)
        scope = listing.handles()
        problems += [f"snapshot {d['id']}: {d['why']}" for d in damaged(listing)]
    else:
        scope = [open_snapshot(store, vsn, snapshot_id, verdicts)]
    objects: dict[str, tuple[Snapshot, str, int, str]] = {}
    for snap in scope:
        try:
            signatures[snap.id] = check_signatures(snap, sorted(snap.manifest.volumes), trusted,
                                                   report if snapshot_id != "all" else quiet)
        except IntegrityError as exc:
            if trusted:
                problems.append(exc.message)
                continue
            signatures[snap.id] = trusted.check(snap)  # the chain is broken: chain_objects says how
        try:
            for link, obj in snap.chain_objects():
                objects.setdefault(link.key(obj.name), (link, obj.name, obj.size, obj.sha256))
        except IntegrityError as exc:
            problems.append(exc.message)
        for tree in snap.manifest.trees:
            objects.setdefault(snap.key(tree.name), (snap, tree.name, tree.size, tree.sha256))
        for dump in snap.manifest.dumps:
            objects.setdefault(snap.key(dump.name), (snap, dump.name, dump.size, dump.sha256))
    present = []
    for key, (link, name, size, _sha) in sorted(objects.items()):
        got = link.object_size(name)
        if got is None:
            problems.append(f"{key}: missing")
        elif got != size:
            problems.append(f"{key}: size {got} != {size} in the manifest")
        else:
            present.append(key)
    to_read = present if read_data else []
    if subset is not None and present:
        count = max(1, math.ceil(len(present) * subset))
        to_read = sorted((rng or random.SystemRandom()).sample(present, min(count, len(present))))
    for key in to_read:
        link, name, size, sha256 = objects[key]
        report(f"reading {key} ({size} bytes)")
        digest = hashlib.sha256()
        with link.open_reader(name) as fh:
            while chunk := fh.read(READ_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            problems.append(f"{key}: sha256 {digest.hexdigest()} != {sha256} in the manifest")
    signature = summary(signatures) if signatures else VALID if trusted else UNCHECKED
    if snapshot_id == "all" and signatures:
        unsigned = sum(1 for s in signatures.values() if s == UNSIGNED)
        report(f"the signatures of {len(signatures)} snapshot(s) are valid" if signature == VALID else
               f"{unsigned} of {len(signatures)} snapshot(s) UNSIGNED; signatures NOT checked: {NO_KEYS}")
    label = "the store" if snapshot_id == "all" else f"snapshot {scope[0].id}"
    if problems:
        raise IntegrityError(f"{label} in {store.url} is damaged: {problems[0]}", details=problems)
    return VerifyResult(store.url, scope[0].id if snapshot_id != "all" else "all", len(scope), len(present),
                        len(to_read), bool(read_data or subset), subset, sum(objects[k][2] for k in present),
                        signature)


def _needed(listing, keep: list[str]) -> dict[str, str]:
    """Snapshots a kept one's chain reads, with the first kept snapshot that needs each (by parent links)."""
    manifests = {m.snapshot_id: m for m in listing.snapshots}
    needed: dict[str, str] = {}
    for sid in keep:
        parent = manifests[sid].parent if sid in manifests else None
        while parent is not None and parent not in needed and parent in manifests:
            needed[parent] = sid
            parent = manifests[parent].parent
    return needed


def prune(store: SnapshotStore, vsn: str, policy: Policy, dry_run: bool, report: Report = quiet,
          now: float | None = None) -> PruneResult:
    listing = list_snapshots(store, vsn, conforming.remembered())
    decision = decide([(m.snapshot_id, m.created, m.tags) for m in listing.snapshots], policy)
    if policy.empty and not dry_run:
        # Refuse to delete everything because no --keep option was given.
        decision.remove = []
    needed = _needed(listing, list(decision.keep))
    for sid, child in needed.items():
        decision.keep.setdefault(sid, []).append(f"parent of {child}")
    remove = [sid for sid in decision.remove if sid not in needed]
    now = now if now is not None else time.time()
    debris = []
    for sid in uncommitted(listing):  # a damaged snapshot stays for a human to look at
        mtime = store.mtime(f"{vsn}/{sid}") or snapshot_time(sid)
        if now - mtime >= DEBRIS_MIN_AGE:
            debris.append(sid)
    if not dry_run:
        # Newest first, children before their parents: a prune killed half-way never leaves a listed
        # snapshot whose chain lost a link.
        for sid in sorted(remove, reverse=True):
            report(f"removing {sid}")
            listing.handle(sid).delete()
        for sid in debris:
            report(f"removing debris {sid}")
            store.delete_prefix(f"{vsn}/{sid}")
    return PruneResult(store.url, vsn, dry_run, decision.keep, remove, debris, damaged(listing))
