"""`migrator restore`: bring volumes back from a snapshot without ever risking live data.

Everything is staged and verified before anything live is touched; the swap is a journaled rename, so a
live dir is always entirely old or entirely new. Steps: docs/snapshots.md#restore."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from migrator.archive import TreeState, extract_archive, scan
from migrator.archive.treeobject import unseal
from migrator.archive.treestate import compare
from migrator.catalog.listing import open_snapshot
from migrator.catalog.snapshot import Snapshot
from migrator.durable import fsync_dir, sync_filesystem
from migrator.errors import IntegrityError, MigratorError, PlanInvalid, PreflightFailed, UsageError
from migrator.faults import checkpoint, failpoint
from migrator.plan.checks import special_checks
from migrator.plan.load import known_schema_problems
from migrator.plan.model import Plan, Secrets
from migrator.plan.sizes import format_size
from migrator.stack.quiesce import Quiesce, writers_of
from migrator.stack.signatures import TrustedKeys, trusted_keys
from migrator.stack.signatures import check as check_signatures
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import conforming, registry
from migrator.state.conforming import ConformingDocs
from migrator.state.journal import open_journal, undo
from migrator.storage.base import SnapshotStore

JOURNAL_KEY = "restore_swaps"
STAGING_KEY = "restore_staging"
# Keep this much free beyond the restored size: the VSN must not be left with a full disk.
FREE_MARGIN = 256 * 1024 * 1024


@dataclass
class Swap:
    volume: str
    live: Path
    staging: Path
    old: Path

    def to_json(self) -> dict:
        return {"volume": self.volume, "live": str(self.live), "staging": str(self.staging), "old": str(self.old)}


@dataclass
class RestoreResult:
    """A finished restore, live or --into."""
    snap: Snapshot
    volumes: list[str]
    into: Path
    files: int
    data_restored_s: float
    started: float  # time.monotonic() when the restore began
    downtime: dict[str, float] = field(default_factory=dict)
    kept_old: list[str] = field(default_factory=list)
    signature: str | None = None
    duration: float = field(init=False)

    def __post_init__(self) -> None:
        self.duration = round(time.monotonic() - self.started, 3)

    def to_json(self) -> dict:
        snap = self.snap
        return {"snapshot_id": snap.id, "store": snap.store.url, "volumes": self.volumes, "into": str(self.into),
                "signature": self.signature, "files": self.files, "bytes": snap.restore_size(self.volumes),
                "kind": snap.manifest.kind, "chain": {v: [link.id for link in snap.chain(v)] for v in self.volumes},
                "data_restored_s": self.data_restored_s, "duration": self.duration, "downtime": self.downtime,
                "kept_old": self.kept_old}


@dataclass
class RestorePreview:
    """restore --dry-run: what a restore would change, per volume (see `preview`)."""
    snap: Snapshot
    volume_names: list[str]
    volumes: dict[str, dict]
    signature: str | None

    def to_json(self) -> dict:
        return {"snapshot_id": self.snap.id, "store": self.snap.store.url, "dry_run": True,
                "kind": self.snap.manifest.kind, "bytes": self.snap.restore_size(self.volume_names),
                "volumes": self.volumes, "signature": self.signature}


def snapshot_plan(snap: Snapshot, verdicts: ConformingDocs) -> Plan:
    """The plan copy stored with the snapshot (untrusted: validated like a user's plan). Its bytes must
    hash to the manifest's plan_sha256 (backup stores canonical_json(plan.raw) and hashes the same bytes),
    so a copy changed in the store cannot decide where data is written. A VSN's snapshots mostly carry
    the same plan bytes, so a schema verdict in `verdicts` is reused, as for manifests."""
    import hashlib

    from migrator import strictjson

    data = snap.plan_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != snap.manifest.plan_sha256:
        raise IntegrityError(f"the plan copy of {snap.id} in {snap.store.url} has sha256 {digest}, the manifest's "
                             f"plan_sha256 is {snap.manifest.plan_sha256}: it was changed in the store")
    try:
        raw = strictjson.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"the plan copy of {snap.id} in {snap.store.url} is not JSON") from exc
    problems = (known_schema_problems("plan", data, raw, verdicts)
                or special_checks(raw, Secrets(), secrets_given=True))
    problems = [p for p in problems if "secret" not in p]  # secrets are not part of a snapshot
    if problems:
        raise PlanInvalid(f"plan copy in snapshot {snap.id} is invalid", details=problems)
    return Plan.from_json(raw)


def check_objects(snap: Snapshot, volumes: list[str]) -> None:
    """Every object a restore of `volumes` reads (the whole chain) is there with the manifest's size."""
    for link, obj in snap.chain_objects(volumes):
        size = link.object_size(obj.name)
        if size is None:
            raise IntegrityError(f"object {obj.name} of snapshot {link.id} is missing from {snap.store.url}"
                                 + (f" (snapshot {snap.id} needs it)" if link.id != snap.id else ""))
        if size != obj.size:
            raise IntegrityError(f"object {link.id}/{obj.name} is {size} bytes in {snap.store.url}, "
                                 f"the manifest says {obj.size}")


def stage_volume(snap: Snapshot, volume: str, staging: Path, identity: Path | None, report: Report,
                 progress=None) -> int:
    staging.mkdir(mode=0o700)
    files = 0
    objects = list(snap.chain_objects([volume]))
    # tar's --acls costs a setxattr per file: only when some object of the volume has ACLs (a directory's
    # default ACL from phase 1 must not be inherited by phase 2's files); `acls` is None before 0.3.
    acls = any(obj.acls != 0 for _link, obj in objects)
    for link, obj in objects:
        report(f"restoring {obj.name}" + (f" of {link.id}" if link.id != snap.id else "")
               + f" ({format_size(obj.size)})")
        with link.open_reader(obj.name) as reader:
            stats = extract_archive(reader, staging, expected_sha256=obj.sha256, expected_size=obj.size,
                                    identity_file=identity, encrypted=obj.name.endswith(".age"),
                                    max_uncompressed=obj.uncompressed, progress=progress,
                                    acls=acls)
        files += getattr(stats, "files", 0)
    # The staged root takes the captured root's metadata (extracted as ".").
    return files


def swap_in(s: Swap) -> None:
    if s.live.exists():
        os.rename(s.live, s.old)
    os.rename(s.staging, s.live)
    fsync_dir(s.live.parent)


def swap_back(s: Swap) -> None:
    if s.old.exists():
        if s.live.exists():
            os.rename(s.live, s.staging)
        os.rename(s.old, s.live)
        fsync_dir(s.live.parent)
    shutil.rmtree(s.staging, ignore_errors=True)


def restore(store: SnapshotStore, vsn: str, snapshot_id: str, *, plan: Plan | None, volumes: list[str] | None = None,
            into: Path | None = None, identity: Path | None = None, keep_old: bool = False,
            touch_containers: bool = True, report: Report = quiet, progress=None,
            snapshot: Snapshot | None = None, dry_run: bool = False, trusted: TrustedKeys | None = None,
            signature: str | None = None) -> RestoreResult | RestorePreview:
    """`trusted`: the keys a signature may come from (default: `plan`'s backup.trusted_keys; never the
    snapshot's own plan copy). `signature`: the caller already checked it (drill) and says how it went."""
    started = time.monotonic()
    verdicts = conforming.remembered()
    snap = snapshot or open_snapshot(store, vsn, snapshot_id, verdicts)
    manifest = snap.manifest
    chosen = volumes or sorted(manifest.volumes)
    unknown = [v for v in chosen if v not in manifest.volumes]
    if unknown:
        raise UsageError(f"snapshot {manifest.snapshot_id} has no volume {unknown[0]!r}",
                         hint="volumes in it: " + ", ".join(sorted(manifest.volumes)))
    if signature is None:  # before any object is read, the plan copy included
        signature = check_signatures(snap, chosen, trusted if trusted is not None else trusted_keys(plan), report)
    check_objects(snap, chosen)
    if plan is None:
        plan = snapshot_plan(snap, verdicts)
        touch_containers = False  # never deployed here: there is nothing to stop
    if manifest.encrypted and identity is None:
        ident = (plan.backup.get("encryption") or {}).get("identity_file")
        identity = Path(ident) if ident else None
        if identity is None:
            raise UsageError("the snapshot is encrypted: pass --identity FILE (an age identity)")
    base = Path(into) if into else Path(plan.vsn.data_root)
    if dry_run:
        return RestorePreview(snap, chosen, preview(snap, chosen, base, identity, report), signature)
    base.mkdir(parents=True, exist_ok=True)
    # An upper bound: a chain's later links rewrite some of what earlier ones wrote.
    needed = sum(o.uncompressed for _link, o in snap.chain_objects(chosen))
    free = shutil.disk_usage(base).free
    if needed + FREE_MARGIN > free:
        raise PreflightFailed(f"not enough space under {base}: need {format_size(needed + FREE_MARGIN)}, "
                              f"{format_size(free)} free")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    swaps = [Swap(v, base / v, base / f".{v}.restore-{stamp}", base / f"{v}.pre-restore-{stamp}") for v in chosen]
    if into:
        taken = [str(s.live) for s in swaps if s.live.exists()]
        if taken:
            raise UsageError(f"{taken[0]} exists; --into needs an empty place", hint="choose another --into DIR")
    with open_journal("restore") as journal:
        # Staging dirs are journaled first: a run killed while staging leaves nothing behind after recover.
        journal.note(STAGING_KEY, {"dirs": [str(s.staging) for s in swaps]})
        files = 0
        try:
            for s in swaps:
                files += stage_volume(snap, s.volume, s.staging, identity, report, progress)
            if not into:
                make_durable(swaps, report)
        except BaseException:
            for s in swaps:
                shutil.rmtree(s.staging, ignore_errors=True)
            journal.forget(STAGING_KEY)
            raise
        data_restored = round(time.monotonic() - started, 3)
        checkpoint("restore.staged")
        if into:
            for s in swaps:
                os.rename(s.staging, s.live)
            journal.forget(STAGING_KEY)
            return RestoreResult(snap, chosen, Path(into), files, data_restored, started, signature=signature)
        downtime, kept = _swap_into_live(plan, swaps, writers_for(plan, chosen), touch_containers, keep_old,
                                         journal, report)
    return RestoreResult(snap, chosen, base, files, data_restored, started, downtime, kept, signature)


# Paths listed per kind of change in a preview (the counts are always complete).
PREVIEW_PATHS = 20


def preview(snap: Snapshot, volumes: list[str], base: Path, identity: Path | None, report: Report) -> dict:
    """restore --dry-run: per volume, what restoring `snap` would add, remove and change in the live data
    dir, from the snapshot's tree state and a scan of the dir. Nothing is written outside the state dir.
    Returns {volume: what changes}."""
    out = {}
    for volume in volumes:
        tree = snap.tree(volume)
        if tree is None:
            raise UsageError(f"snapshot {snap.id} has no tree state of {volume}: it was taken before incremental "
                             f"snapshots, and --dry-run compares against one",
                             hint="restore it --into an empty DIR and compare that instead")
        report(f"reading the tree state of {volume} in {snap.id}")
        work = registry.SPOOL.path / f"preview-{os.getpid()}"
        try:
            with snap.open_reader(tree.name) as reader:
                wanted = unseal(reader, size=tree.size, sha256=tree.sha256, encrypted=tree.name.endswith(".age"),
                                identity_file=identity, workdir=work, where=f"{snap.store.url}/{snap.key(tree.name)}",
                                owner=snap.key(volume))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        live_dir = base / volume
        live = scan(live_dir) if live_dir.is_dir() else TreeState({}, 0)
        added, removed, changed = compare(wanted, live)
        out[volume] = {"live": str(live_dir), "exists": live_dir.is_dir(), "entries": len(wanted),
                       "added": len(added), "removed": len(removed), "changed": len(changed),
                       "unchanged": len(wanted) - len(added) - len(changed),
                       "paths": {"added": added[:PREVIEW_PATHS], "removed": removed[:PREVIEW_PATHS],
                                 "changed": changed[:PREVIEW_PATHS]}}
    return out


def make_durable(swaps: list[Swap], report: Report) -> None:
    """Flush the staged trees to disk before they replace live data (whose old copy is then removed):
    one syncfs per filesystem, while the services still run. A write error here fails the restore with
    live data untouched."""
    report("flushing the staged data to disk")
    for path in {os.stat(s.staging).st_dev: s.staging for s in swaps}.values():
        try:
            failpoint("restore.sync")
            sync_filesystem(path)
        except OSError as exc:
            raise MigratorError(f"cannot make the staged data under {path.parent} durable: {exc.strerror}",
                                hint="check the disk (dmesg) and its free space; live data was not touched") from None


def writers_for(plan: Plan, volumes: list[str]) -> list:
    names = {x.name for x in plan.volumes}
    return list({w.name: w for v in volumes if v in names for w in writers_of(plan, v)}.values())


def _swap_into_live(plan: Plan, swaps: list[Swap], writers: list, touch_containers: bool, keep_old: bool,
                    journal, report: Report) -> tuple[dict, list[str]]:
    """Stop the writers, swap every staged volume in, restart and probe them; swap back on failure."""
    stack = Stack.for_plan(plan, report)
    journal.note(JOURNAL_KEY, {"swaps": [s.to_json() for s in swaps], "committed": False})
    journal.forget(STAGING_KEY)  # the swap entry covers the staging dirs from here on
    quiesce = Quiesce(stack, journal, report)
    try:
        with quiesce:
            if touch_containers:
                quiesce.stop(writers)
            for s in swaps:
                report(f"swapping in {s.live}" + (f" (old kept as {s.old.name})" if s.live.exists() else ""))
                swap_in(s)
                checkpoint("restore.swapped")
    except MigratorError as exc:
        report(f"restore failed after the swap ({exc.message}); swapping the old data back")
        with Quiesce(stack, journal, report) as again:
            if touch_containers:
                again.stop(writers)
            for s in reversed(swaps):
                swap_back(s)
        journal.forget(JOURNAL_KEY)
        raise
    except BaseException:
        for s in reversed(swaps):
            swap_back(s)
        journal.forget(JOURNAL_KEY)
        raise
    journal.note(JOURNAL_KEY, {"swaps": [s.to_json() for s in swaps], "committed": True})
    kept = []
    for s in swaps:
        if keep_old:
            kept.append(str(s.old))
        else:
            shutil.rmtree(s.old, ignore_errors=True)
    journal.forget(JOURNAL_KEY)
    return quiesce.downtime, kept


@undo(STAGING_KEY)
def _remove_staging(fact: dict, report: Report) -> str:
    for d in fact["dirs"]:
        shutil.rmtree(d, ignore_errors=True)
    return "removed the staging dirs of an interrupted restore (live data was never touched)"


@undo(JOURNAL_KEY)
def _finish_or_undo_restore(fact: dict, report: Report) -> str:
    swaps = [Swap(d["volume"], Path(d["live"]), Path(d["staging"]), Path(d["old"])) for d in fact["swaps"]]
    if fact.get("committed"):
        for s in swaps:
            shutil.rmtree(s.old, ignore_errors=True)
        return "finished a restore that had completed (old data removed)"
    for s in reversed(swaps):
        swap_back(s)
    return "undid an interrupted restore: every volume holds its old data again"
