"""Which snapshot a backup continues, per volume, and from which tree state, or why it takes a full one.

Keeps incremental snapshots safe across machines and stores: a volume continues its parent only when the
chain is intact (and signed, with trusted keys) in every store; otherwise it is captured whole and
`reasons` says why. Nothing here writes. The rule: docs/snapshots.md#incremental-snapshots."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from migrator.archive.treeobject import unseal
from migrator.archive.treestate import TreeState
from migrator.catalog.manifest import is_snapshot_id
from migrator.catalog.signing import TrustedKeys
from migrator.catalog.snapshot import MAX_CHAIN, Snapshot
from migrator.errors import IntegrityError, MigratorError

if TYPE_CHECKING:
    from migrator.state.chainrecord import ChainRecord
    from migrator.state.conforming import ConformingDocs
    from migrator.storage.base import SnapshotStore

DAY = 86400.0
# A new full every 30 days: a monthly full matches GFS's monthly keep (each kept month pins one chain).
DEFAULT_FULL_EVERY_DAYS = 30
# ...or sooner, when the deltas since the full add up to a fifth of its size: a restore reads every
# object of the chain and its time follows those bytes (bench: 1.54x the bytes, 1.53x the time for 30
# dailies of scattered database writes), so a restore stays within ~1.2x a full's, whatever the change rate.
DEFAULT_FULL_WHEN_DELTAS_EXCEED = 0.2
# Uncommitted or damaged snapshot dirs skipped before giving up on a parent (a run of killed backups).
MAX_CANDIDATES = 20


@dataclass(frozen=True)
class ChainPolicy:
    full_every_days: float = DEFAULT_FULL_EVERY_DAYS  # 0: every snapshot is full
    full_when_deltas_exceed: float = DEFAULT_FULL_WHEN_DELTAS_EXCEED
    force_full: bool = False

    @classmethod
    def from_backup(cls, backup: dict, force_full: bool = False) -> ChainPolicy:
        return cls(float(backup.get("full_every", DEFAULT_FULL_EVERY_DAYS)),
                   float(backup.get("full_when_deltas_exceed", DEFAULT_FULL_WHEN_DELTAS_EXCEED)), force_full)


@dataclass
class ParentChoice:
    parent: str | None = None  # the snapshot incremental volumes continue
    states: dict[str, TreeState] = field(default_factory=dict)  # volume -> the tree state it continues
    sources: dict[str, str] = field(default_factory=dict)  # volume -> "local record" | "store"
    reasons: dict[str, str] = field(default_factory=dict)  # volume -> why it is captured whole
    newest: str | None = None  # the newest snapshot id in any target store: a new id must sort after it

    def base(self, volume: str) -> TreeState | None:
        return self.states.get(volume)


def choose_parent(stores: list[SnapshotStore], vsn: str, volumes: list[str], policy: ChainPolicy,
                  record: ChainRecord | None, identity_file: Path | None, workdir: Path,
                  conforming: ConformingDocs | None = None, now: float | None = None,
                  trusted: TrustedKeys | None = None) -> ParentChoice:
    choice = ParentChoice()
    trusted = trusted if trusted is not None else TrustedKeys()

    def whole(why: str) -> ParentChoice:
        choice.reasons = dict.fromkeys(volumes, why)
        return choice

    try:
        ids = [{n for n in store.list_dir(vsn) if is_snapshot_id(n)} for store in stores]
    except MigratorError as exc:
        return whole(f"the stores could not be listed ({exc.message})")
    choice.newest = max(set().union(*ids), default=None)
    if policy.force_full:
        return whole("a full snapshot was asked for (--full)")
    if policy.full_every_days <= 0:
        return whole("backup.full_every is 0: every snapshot is full")
    # The newest id committed (with a valid manifest) in every store; ids of killed backups are skipped.
    # Only manifests along the way and along the chain are read, however many snapshots a store holds.
    handles: list[Snapshot] = []
    for candidate in sorted(set.intersection(*ids), reverse=True)[:MAX_CANDIDATES]:
        trial = [Snapshot(store, vsn, candidate, conforming=conforming) for store in stores]
        try:
            for handle in trial:
                handle.manifest  # noqa: B018 - read and validated here
        except MigratorError:
            continue
        handles = trial
        break
    if not handles:
        return whole("no earlier snapshot of this VSN is committed in every target store")
    parent_id = handles[0].id
    now = time.time() if now is None else now
    if record is not None and record.snapshot_id != parent_id:
        note = (f"this VSN's record names {record.snapshot_id}, the stores' newest common snapshot is "
                f"{parent_id}: its tree state is read from the store")
    else:
        note = ""
    for volume in volumes:
        why = _why_not(handles, volume, policy, now, trusted)
        if why:
            choice.reasons[volume] = why
            continue
        state, source = _tree_state(handles[0], volume, record, identity_file, workdir / volume)
        if state is None:
            choice.reasons[volume] = source
            continue
        choice.states[volume] = state
        choice.sources[volume] = source if not note or source != "store" else f"store ({note})"
    if choice.states:
        choice.parent = parent_id
    return choice


def _why_not(handles: list[Snapshot], volume: str, policy: ChainPolicy, now: float,
             trusted: TrustedKeys) -> str | None:
    """Why `volume` cannot continue the parent (None: it can)."""
    parent = handles[0]
    if volume not in parent.manifest.volumes:
        return f"{parent.id} has no volume {volume} (new volume)"
    if parent.tree(volume) is None:
        return f"{parent.id} has no tree state of {volume} (taken before incremental snapshots)"
    try:
        chains = [h.chain(volume) for h in handles]
        if trusted:
            unsigned = _unsigned(parent, chains, trusted)
            if unsigned:
                return unsigned
        reference = [[(o.name, o.size, o.sha256) for o in link.manifest.objects_of(volume)] for link in chains[0]]
        for handle, chain in zip(handles, chains, strict=True):
            objects = [[(o.name, o.size, o.sha256) for o in link.manifest.objects_of(volume)] for link in chain]
            if objects != reference:
                return f"the stores disagree on the chain of {parent.id} for {volume}"
            for link in chain:
                for obj in link.manifest.objects_of(volume):
                    size = link.object_size(obj.name)
                    if size != obj.size:
                        state = "missing" if size is None else f"{size} bytes, not {obj.size}"
                        return f"the chain of {parent.id} is broken in {handle.store.url}: {link.id}/{obj.name} is {state}"
            tree = handle.tree(volume)
            if tree is None:
                return f"{parent.id} in {handle.store.url} has no tree state of {volume}"
            size = handle.object_size(tree.name)
            if size != tree.size:
                state = "missing" if size is None else f"{size} bytes, not {tree.size}"
                return f"the tree state of {volume} in {parent.id} is {state} in {handle.store.url}"
    except IntegrityError as exc:
        return f"the chain of {parent.id} is broken: {exc.message}"
    except MigratorError as exc:
        return f"the chain of {parent.id} could not be checked ({exc.message})"
    chain = chains[0]
    full, deltas = chain[0], chain[1:]
    age_days = (now - full.manifest.created) / DAY
    if age_days >= policy.full_every_days:
        return (f"its full snapshot {full.id} is {age_days:.1f} days old "
                f"(backup.full_every is {policy.full_every_days:g})")
    full_size = sum(o.size for o in full.manifest.objects_of(volume))
    delta_size = sum(o.size for link in deltas for o in link.manifest.objects_of(volume))
    if delta_size > policy.full_when_deltas_exceed * full_size:
        return (f"the {len(deltas)} incremental(s) since its full add up to {delta_size} bytes, more than "
                f"{policy.full_when_deltas_exceed:g} of the full's {full_size}")
    if len(chain) >= MAX_CHAIN:
        return f"its chain has {len(chain)} links (at most {MAX_CHAIN})"
    return None


def _unsigned(parent: Snapshot, chains: list[list[Snapshot]], trusted: TrustedKeys) -> str | None:
    """Why the chains are not all signed by trusted keys (None: they are)."""
    for chain in chains:
        for link in chain:
            try:
                trusted.check(link)
            except IntegrityError as exc:
                return f"the chain of {parent.id} fails its signature check: {exc.message}"
    return None


def _tree_state(parent: Snapshot, volume: str, record: ChainRecord | None, identity_file: Path | None,
                workdir: Path) -> tuple[TreeState | None, str]:
    """(state, "local record" | "store") or (None, why not)."""
    tree = parent.tree(volume)
    assert tree is not None
    if record is not None and record.snapshot_id == parent.id:
        recorded = record.tree_sha256(volume)
        if recorded is not None and recorded != tree.sha256:
            # This VSN wrote that snapshot: a manifest that now says otherwise was changed in the store.
            return None, (f"the store's manifest of {parent.id} lists another tree state of {volume} than "
                          f"this VSN recorded when it took it")
        state = record.state(volume) if recorded is not None else None
        if state is not None:
            return state, "local record"
    encrypted = tree.name.endswith(".age")
    if encrypted and (identity_file is None or not Path(identity_file).is_file()):
        return None, (f"no local record of {parent.id} here and no age identity to read the store's encrypted "
                      f"tree state of {volume}")
    try:
        with parent.open_reader(tree.name) as reader:
            state = unseal(reader, size=tree.size, sha256=tree.sha256, encrypted=encrypted,
                           identity_file=identity_file, workdir=workdir, where=f"{parent.store.url}/{parent.key(tree.name)}",
                           owner=parent.key(volume))
    except MigratorError as exc:
        return None, f"the tree state of {volume} in {parent.id} is unusable: {exc.message}"
    return state, "store"
