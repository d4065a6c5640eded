"""`migrator backup`: one capture of every volume (and each database dump), streamed to every target store.

Each volume's capture mode follows its writers' `quiesce` (two-phase, stop, none); a volume whose parent
chain checks out is captured as deltas on the parent's tree state. The manifest goes last to each store,
its signature just before it: a manifest's presence commits a signed snapshot (docs/snapshots.md)."""

from __future__ import annotations

import shutil
import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from migrator import __version__
from migrator.archive import TreeState, capture_delta, capture_phase1, capture_phase2, capture_quiet
from migrator.archive.treeobject import seal
from migrator.catalog.manifest import (
    MANIFEST,
    PLAN_COPY,
    DumpEntry,
    Manifest,
    ObjectEntry,
    TreeEntry,
    dump_name,
    is_snapshot_id,
    new_snapshot_id,
    object_name,
    tree_name,
)
from migrator.catalog.parents import ChainPolicy, ParentChoice, choose_parent
from migrator.catalog.signing import SIGNATURE, key_text_of, sign
from migrator.catalog.snapshot import Snapshot
from migrator.errors import MigratorError, PreflightFailed, UsageError
from migrator.faults import checkpoint
from migrator.plan.model import Plan, Secrets, canonical_json
from migrator.results import FieldsJson
from migrator.stack import dumps
from migrator.stack.quiesce import Quiesce, writers_of
from migrator.stack.signatures import trusted_keys
from migrator.stack.topology import Report, Stack, quiet
from migrator.state import chainrecord, conforming, deployed, registry, signkey
from migrator.state.files import write_json
from migrator.state.journal import open_journal
from migrator.storage import open_stores
from migrator.storage.base import SnapshotStore

SPOOL_CHUNK = 1024 * 1024  # phase-2 spool is re-read in 1 MiB chunks for upload


@dataclass
class VolumePlan:
    name: str
    root: Path
    mode: str  # two-phase | stop | none
    writers: list
    base: TreeState | None = None  # the parent's tree state this volume continues (None: whole)
    final: TreeState | None = None  # the tree as restore will hold it after this snapshot


def volume_modes(plan: Plan) -> list[VolumePlan]:
    out = []
    for vol in plan.volumes:
        writers = writers_of(plan, vol.name)
        modes = {w.quiesce for w in writers}
        mode = "stop" if "stop" in modes else "two-phase" if "two-phase" in modes else "none"
        out.append(VolumePlan(vol.name, Path(vol.root_dir(plan.vsn.data_root)), mode, writers))
    return out


@dataclass(frozen=True)
class BackupResult(FieldsJson):
    """One committed snapshot: what `migrator backup --json` prints and the notify hooks receive."""
    snapshot_id: str
    vsn: str
    tags: list[str]
    targets: list[str]
    objects: list[dict]
    size: int
    uncompressed: int
    downtime: dict[str, float]  # service -> seconds stopped
    downtime_steps: dict[str, dict[str, float]]
    duration: float
    capture: float
    volumes: dict[str, dict]
    encrypted: bool
    kind: str  # full | incremental
    parent: str | None
    full_reasons: dict[str, str]  # volume -> why it was captured whole
    signed_by: str
    dumps: list[dict]
    dumps_skipped: list[str]


class FileSink:
    def __init__(self, path: Path):
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def close(self) -> None:
        self.fh.close()


class Backup:
    def __init__(self, plan: Plan, stores: list[SnapshotStore], tags: list[str], report: Report, progress=None, full: bool = False,
                 signing_key=None, secrets: Secrets | None = None):
        self.plan = plan
        self.secrets = secrets
        self.dumps_skipped: list[str] = []
        self.dump_seconds: dict[str, float] = {}  # "<service>/<database>" -> seconds its dump took
        self.signing_key = signing_key if signing_key is not None else signkey.load_or_create()[0]
        self.trusted = trusted_keys(plan)
        self.stores = stores
        self.tags = tags
        self.policy = ChainPolicy.from_backup(plan.backup, force_full=full)
        self.choice = ParentChoice()
        self.report = report
        self.progress = progress
        self.downtime_steps: dict[str, dict[str, float]] = {}
        self.snapshot_id = new_snapshot_id()
        enc = plan.backup.get("encryption") or {}
        self.recipients = list(enc.get("age_recipients", []))
        self.level = plan.backup.get("compression_level", 3)
        self.manifest = Manifest(
            snapshot_id=self.snapshot_id, vsn=plan.vsn.name, created=time.time(), hostname=socket.gethostname(),
            migrator_version=__version__, plan_sha256=plan.sha256(), tags=tags, volumes={},
            encrypted=bool(self.recipients))
        self.spool = registry.SPOOL.path / self.snapshot_id
        self.handles = [Snapshot(store, plan.vsn.name, self.snapshot_id, self.manifest) for store in stores]

    def _options(self, **extra) -> dict:
        return {"level": self.level, "recipients": self.recipients, **extra}

    def _capture(self, vol: VolumePlan, sinks: list, live: bool, base: TreeState | None, **extra):
        """One pass over `vol`: a delta on `base`, or the whole tree. Returns (stats, state after it)."""
        if base is not None:
            return capture_delta(vol.root, sinks, base, live=live, **self._options(**extra))
        whole = capture_phase1 if live else capture_quiet
        return whole(vol.root, sinks, **self._options(**extra))

    def _archive_to_stores(self, vol: VolumePlan, phase: int, two_phase: bool, live: bool) -> TreeState:
        name = object_name(vol.name, phase, two_phase, bool(self.recipients))
        kind = "changes of " if vol.base is not None else ""
        self.report(f"archiving {kind}{vol.name} phase {phase} -> {name}")
        stats, state = self._to_every_store(
            name, lambda writers: self._capture(vol, writers, live, vol.base, progress=self.progress))
        self._record(vol, name, phase, stats)
        return state

    def _to_every_store(self, name: str, produce):
        """One object `name` in every store: `produce(writers)` writes it to a writer per store; it is committed
        everywhere only when produce returns (an error aborts every writer). Returns what produce returned."""
        with ExitStack() as cleanup:
            writers = []
            for handle in self.handles:
                w = handle.open_writer(name)
                cleanup.callback(_abort_quietly, w)
                writers.append(w)
            result = produce(writers)
            for w in writers:
                w.commit()
            cleanup.pop_all()
        return result

    def _record(self, vol: VolumePlan, name: str, phase: int, stats) -> None:
        self.manifest.objects.append(ObjectEntry(name=name, volume=vol.name, phase=phase, size=stats.size,
                                                 sha256=stats.sha256, files=stats.files,
                                                 uncompressed=stats.uncompressed, acls=stats.acls))

    def _spool_phase2(self, vol: VolumePlan, before: TreeState) -> tuple[Path, object, str]:
        """Phase 2 goes to a local spool (it holds only what changed) so writers restart before uploads."""
        name = object_name(vol.name, 2, True, bool(self.recipients))
        path = self.spool / name
        sink = FileSink(path)
        try:
            stats, vol.final = capture_phase2(vol.root, [sink], before, **self._options())
        finally:
            sink.close()
        patched = f" ({stats.patched} as block patches)" if stats.patched else ""
        self.report(f"phase 2 of {vol.name}: {stats.files} member(s) changed{patched}")
        return path, stats, name

    def _upload(self, path: Path, name: str) -> None:
        for handle in self.handles:
            w = handle.open_writer(name)
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(SPOOL_CHUNK):
                        w.write(chunk)
                w.commit()
            except BaseException:
                _abort_quietly(w)
                raise

    def _upload_spooled(self, vol: VolumePlan, path: Path, stats, name: str) -> None:
        self._upload(path, name)
        self._record(vol, name, 2, stats)

    def _password(self, svc) -> str | None:
        if svc.dump.password_secret and self.secrets is None and (deployed.current() or {}).get("secrets"):
            from migrator.plan.load import load_secrets  # the secrets file deploy remembered (cron, os-update)

            self.secrets = load_secrets(deployed.current()["secrets"])
        return dumps.password_of(svc.dump, self.secrets, svc.name)

    def _take_dumps(self, stack: Stack, running: list) -> None:
        """Each running service's database dumps, streamed from the service into every store (no downtime)."""
        wanted = [s for s in self.plan.services if s.enabled and s.dump is not None]
        up = {s.name for s in running}
        for svc in wanted:
            if svc.name not in up:
                self.dumps_skipped.append(svc.name)
                self.report(f"{svc.name} is not running: this snapshot holds no dump of it (its data directories "
                            f"are captured as always)")
                continue
            password = self._password(svc)
            for database in svc.dump.databases:
                name = dump_name(svc.name, database, svc.dump.kind, bool(self.recipients))
                self.report(f"dumping {svc.dump.kind} database {database} of {svc.name} -> {name}")
                began = time.monotonic()
                stats = self._to_every_store(name, lambda writers, svc=svc, database=database, password=password:
                                             dumps.take(stack.rest_engine(), svc.name, svc.dump, database, password,
                                                        writers, level=self.level, recipients=self.recipients,
                                                        progress=self.progress))
                self.manifest.dumps.append(DumpEntry(name=name, service=svc.name, kind=svc.dump.kind,
                                                     database=database, size=stats.size, sha256=stats.sha256,
                                                     uncompressed=stats.uncompressed))
                self.dump_seconds[f"{svc.name}/{database}"] = round(time.monotonic() - began, 3)

    def _choose_parents(self, volumes: list[VolumePlan]) -> None:
        ident = (self.plan.backup.get("encryption") or {}).get("identity_file")
        self.choice = choose_parent(self.stores, self.plan.vsn.name, [v.name for v in volumes], self.policy,
                                    chainrecord.load(self.plan.vsn.name), Path(ident) if ident else None,
                                    self.spool / "parent", conforming.remembered(), trusted=self.trusted)
        for vol in volumes:
            vol.base = self.choice.base(vol.name)
            if vol.base is not None:
                self.report(f"{vol.name}: incremental on {self.choice.parent} "
                            f"(tree state from the {self.choice.sources[vol.name]})")
            else:
                self.report(f"{vol.name}: full ({self.choice.reasons.get(vol.name, 'no parent')})")
            self.manifest.volumes[vol.name]["incremental"] = vol.base is not None
        if self.choice.parent is not None:
            self.manifest.parent = self.choice.parent
        newest = self.choice.newest
        if newest is not None and self.snapshot_id <= newest:
            # Taken within the second of the newest snapshot: sort after it ("latest", parents older).
            self.snapshot_id = self.manifest.snapshot_id = new_snapshot_id(after=newest)
            self.handles = [Snapshot(s, self.plan.vsn.name, self.snapshot_id, self.manifest) for s in self.stores]

    def _store_trees(self, volumes: list[VolumePlan]) -> None:
        """Each volume's final tree state, sealed like the data, to every store (the next snapshot's base)."""
        for vol in volumes:
            name = tree_name(vol.name, bool(self.recipients))
            vol.final.owner = f"{self.plan.vsn.name}/{self.snapshot_id}/{vol.name}"
            # The plain form stays in the chain dir for the local record (written once committed).
            sealed = seal(vol.final, self.spool / name, self.recipients,
                          plain=chainrecord.tree_file(self.plan.vsn.name, self.snapshot_id, vol.name))
            self._upload(sealed.path, name)
            self.manifest.trees.append(TreeEntry(name=name, volume=vol.name, size=sealed.size, sha256=sealed.sha256,
                                                 entries=sealed.entries))

    def remember_chain(self, volumes: list[VolumePlan]) -> None:
        """After the commit: this VSN's record of the snapshot, so the next backup needs no store read."""
        trees = {v.name: self.manifest.tree_of(v.name).sha256 for v in volumes}
        try:
            chainrecord.save(self.plan.vsn.name, self.snapshot_id, [s.url for s in self.stores], trees)
        except OSError as exc:
            self.report(f"could not record the chain locally ({exc.strerror}); the next backup reads the "
                        f"parent's tree state from the store")

    def run(self, stack: Stack, journal) -> BackupResult:
        started = time.monotonic()
        volumes = volume_modes(self.plan)
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        quiesce = Quiesce(stack, journal, self.report)
        live = stack.rest_reachable()
        for vol in volumes:
            running = quiesce.running(vol.writers) if live else []
            # Nothing runs (containerless VSN): one consistent single-phase archive needs no stop.
            effective = vol.mode if running else "stop"
            self.manifest.volumes[vol.name] = {"mounts": [m.name for m in self.plan.volume(vol.name).mounts],
                                               "mode": effective}
            vol.mode = effective
        self._choose_parents(volumes)
        hook_services = quiesce.running([s for v in volumes for s in v.writers]) if live else []
        hook_services = list({s.name: s for s in hook_services}.values())
        quiesce.run_hooks(hook_services, "pre_backup")
        if any(s.dump is not None for s in self.plan.services):
            self._take_dumps(stack, quiesce.running([s for s in self.plan.services if s.enabled]) if live else [])
        phase1: dict[str, TreeState] = {}
        for vol in volumes:
            # Every pass scans before tar starts and notes what tar archives beyond the scan: the next
            # pass's diff against its state then cannot miss a change (twophase wires that order).
            if vol.mode == "two-phase":
                phase1[vol.name] = self._archive_to_stores(vol, 1, True, live=True)
            elif vol.mode == "none":
                vol.final = self._archive_to_stores(vol, 1, False, live=True)
        checkpoint("backup.phase1-done")
        spooled = []
        with quiesce:
            quiesce.stop([s for v in volumes if v.mode in ("two-phase", "stop") for s in v.writers])
            checkpoint("backup.services-stopped")
            for vol in volumes:
                if vol.mode == "stop":
                    vol.final = self._archive_to_stores(vol, 1, False, live=False)
                elif vol.mode == "two-phase":
                    spooled.append((vol, *self._spool_phase2(vol, phase1[vol.name])))
        capture = round(time.monotonic() - started, 3)
        quiesce.run_hooks(hook_services, "post_backup")
        for vol, path, stats, name in spooled:
            self._upload_spooled(vol, path, stats, name)
        self._store_trees(volumes)
        checkpoint("backup.before-manifest")
        shutil.rmtree(self.spool, ignore_errors=True)
        self.manifest.timings = {"capture": capture, "downtime": quiesce.downtime,
                                 "total": round(time.monotonic() - started, 3)}
        self.downtime_steps = quiesce.steps
        plan_copy = canonical_json(self.plan.raw)
        for handle in self.handles:
            handle.put_bytes(PLAN_COPY, plan_copy)
        manifest = self.manifest.to_bytes()
        signature = sign(self.signing_key, manifest)  # covers the exact bytes stored below
        for handle in self.handles:  # before the commit: a committed snapshot always has its signature
            handle.put_bytes(SIGNATURE, signature)
        checkpoint("backup.signed")
        for handle in self.handles:  # last: the manifest's presence commits the snapshot
            handle.put_bytes(MANIFEST, manifest)
        self.remember_chain(volumes)
        return self.summary()

    def summary(self) -> BackupResult:
        m = self.manifest
        return BackupResult(
            snapshot_id=m.snapshot_id, vsn=m.vsn, tags=m.tags,
            targets=[s.url for s in self.stores],
            objects=[dict(o.__dict__) for o in m.objects],
            size=m.size, uncompressed=sum(o.uncompressed for o in m.objects),
            downtime=m.timings["downtime"], downtime_steps=self.downtime_steps,
            duration=m.timings["total"], capture=m.timings["capture"],
            volumes=m.volumes, encrypted=m.encrypted,
            kind=m.kind, parent=m.parent, full_reasons=self.choice.reasons,
            signed_by=key_text_of(self.signing_key),
            dumps=[{**d.__dict__, "seconds": self.dump_seconds.get(f"{d.service}/{d.database}")} for d in m.dumps],
            dumps_skipped=self.dumps_skipped,
        )

    def discard(self) -> None:
        """A failed run leaves no listed snapshot: the manifest was never written; remove the debris."""
        shutil.rmtree(self.spool, ignore_errors=True)
        for handle in self.handles:
            try:
                handle.delete()
            except MigratorError as exc:
                self.report(f"could not remove partial snapshot from {handle.store.url}: {exc.message} "
                            f"(`migrator prune` removes such debris)")


def _abort_quietly(writer) -> None:
    try:
        writer.abort()
    except Exception:  # noqa: BLE001 - abort is cleanup on an error path; the first error matters
        pass


def remove_dead_spools() -> list[str]:
    """Remove `<state dir>/spool/<snapshot id>/` left by backups killed before their clean-up; return
    their names. Every caller holds the operation lock, so no live backup owns one; restore --dry-run's
    preview-* dirs (it takes no lock) are left."""
    removed = []
    for path in sorted(registry.SPOOL.path.glob("*")):
        if is_snapshot_id(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def backup(plan: Plan, targets: list[str] | None, tags: list[str], report: Report = quiet, progress=None,
           full: bool = False, secrets: Secrets | None = None) -> BackupResult:
    moved = deployed.moved_away()
    if moved:
        raise PreflightFailed(f"the stack moved to {moved.get('to')}; this VSN's data is a stale copy",
                              hint="back up on the VSN the stack runs on (or deploy it here again)")
    urls = list(targets or plan.backup.get("targets", []))
    if not urls:
        raise UsageError("no backup target: the plan has no backup.targets and no --to was given",
                         hint="migrator backup --to file:///var/backups/migrator")
    stores = open_stores(urls, plan.backup)
    stack = Stack.for_plan(plan, report)
    key, created = signkey.load_or_create()
    own, trusted = key_text_of(key), trusted_keys(plan)
    if created:
        report(f"created this VSN's signing key {signkey.key_path()}; its public key is {own}")
    if trusted and own not in trusted.texts:
        report(f"this VSN's signing key {own} is not in backup.trusted_keys: restores with this plan refuse its "
               f"snapshots, and backups cannot continue them (add it: `migrator key show`)")
    remove_dead_spools()  # of backups killed before their clean-up (we hold the lock: none is live)
    job = Backup(plan, stores, tags, report, progress, full=full, signing_key=key, secrets=secrets)
    with open_journal("backup") as journal:
        try:
            result = job.run(stack, journal)
        except BaseException:
            job.discard()
            raise
    write_json(registry.LAST_BACKUP.path, {"snapshot_id": result.snapshot_id, "time": time.time(),
                                           "targets": result.targets, "ok": True})
    return result

