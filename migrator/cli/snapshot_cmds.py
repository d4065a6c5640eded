"""`backup`, `snapshots`, `verify`, `prune`, `restore`, `drill`: snapshot commands.

Each command imports its operation when it runs: a restore does not load the backup code (start-up is
part of every run's time)."""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.catalog.retention import DEFAULT_KEEP_TAGS, Policy
from migrator.cli.options import JsonOpt, PlanOpt, SecretsOpt, WaitOpt, load_plan_args
from migrator.cli.output import progress_printer, run
from migrator.errors import UsageError
from migrator.ops.recover import operation
from migrator.plan.model import Plan, Secrets
from migrator.plan.sizes import format_size
from migrator.storage import open_stores

FromOpt = typer.Option(None, "--from", help="Store URL (file:///…, s3://bucket/prefix, ssh://host/path). "
                                            "Default: the deployed plan's first backup target.")
ListFromOpt = typer.Option(None, "--from", help="Store URL (file:///…, s3://bucket/prefix, ssh://host/path). "
                                                "Default: every backup target of the deployed plan.")
VsnOpt = typer.Option(None, "--vsn", help="VSN name the snapshots are filed under. Default: the deployed plan's.")
TrustedKeyOpt = typer.Option(None, "--trusted-key", metavar="KEY",
                             help="A public key (ed25519:…, `migrator key show` on the VSN that took the snapshots) "
                                  "whose signature is required; repeatable; added to the plan's backup.trusted_keys.")


def _trusted(p, keys: list[str] | None):
    from migrator.stack.signatures import trusted_keys

    return trusted_keys(p, list(keys or []))


def _say_signature(r: dict) -> None:
    if r.get("signature") and r["signature"] != "valid":
        print(f"  signature: {r['signature']} (no trusted keys: nothing proves which VSN wrote it)")


def _store_and_vsn(url: str | None, vsn: str | None, plan_file: Path | None, writable: bool = False):
    p, _ = load_plan_args(plan_file, None, required=False)
    return (*_store_for(url, vsn, p, writable), p)


def _store_for(url: str | None, vsn: str | None, p: Plan | None, writable: bool = False):
    """The store (`url`, else the plan's first target) and VSN name (`vsn`, else the plan's)."""
    if url is None:
        targets = p.backup.get("targets", []) if p else []
        if not targets:
            raise UsageError("no store: pass --from URL (the plan has no backup targets)")
        url = targets[0]
    name = vsn or (p.vsn.name if p else None)
    if not name:
        raise UsageError("no VSN name: pass --vsn NAME (no plan is deployed here)")
    return open_stores([url], p.backup if p else None, writable=writable)[0], name


def _stores_and_vsn(urls: list[str], vsn: str | None, writable: bool = False):
    """The stores a command that reads or prunes several acts on: `urls`, else every plan target."""
    p, _ = load_plan_args(None, None, required=False)
    urls = urls or (p.backup.get("targets", []) if p else [])
    if not urls:
        raise UsageError("no store: pass --from URL (or --to URL) (the plan has no backup targets)")
    name = vsn or (p.vsn.name if p else None)
    if not name:
        raise UsageError("no VSN name: pass --vsn NAME (no plan is deployed here)")
    return open_stores(urls, p.backup if p else None, writable=writable), name, p


def _other_targets(url: str | None, p) -> list[str]:
    """Plan targets a single-store command did not read because none was named (--from)."""
    return list(p.backup.get("targets", []))[1:] if url is None and p else []


def register(app: typer.Typer) -> None:
    @app.command()
    def backup(to: list[str] = typer.Option(None, "--to", help="Target store URL; repeat for several. "
                                                               "Default: the plan's backup.targets."),
               tag: list[str] = typer.Option(None, "--tag", help="Tag the snapshot (repeatable), e.g. pre-update."),
               full: bool = typer.Option(False, "--full", help="Capture every volume whole, starting a new chain."),
               plan: Path = PlanOpt, secrets: Path = SecretsOpt, wait: float = WaitOpt,
               json_out: bool = JsonOpt) -> None:
        """Snapshot every volume of the deployed plan to every target (one capture, all targets).

        Writers stop only for phase 2 of a two-phase capture (or the whole archive with quiesce "stop").
        When the targets already hold a snapshot of this VSN, only what changed since it is stored
        (incremental); a new full is taken every backup.full_every days, or with --full.

        Example: migrator backup --to s3://backups/vsn --to file:///var/backups/migrator --tag nightly
        """
        report = progress_printer()

        def action() -> dict:
            p, s = load_plan_args(plan, secrets)
            with operation("backup", wait, report):
                from migrator.ops.backup import backup as backup_op

                return backup_op(p, to, list(tag or []), report, progress=report.bytes, full=full,
                                 secrets=s).to_json()

        def human(r: dict) -> None:
            kind = f"incremental on {r['parent']}" if r["kind"] == "incremental" else "full"
            print(f"snapshot {r['snapshot_id']} ({kind}): {len(r['objects'])} objects, {format_size(r['size'])} "
                  f"({format_size(r['uncompressed'])} uncompressed) in {r['duration']}s")
            for volume, why in sorted(r["full_reasons"].items()):
                print(f"  {volume} whole: {why}")
            for svc, secs in r["downtime"].items():
                print(f"  downtime {svc}: {secs}s")
            for t in r["targets"]:
                print(f"  -> {t}")

        run(json_out, action, human)

    @app.command()
    def snapshots(store: str = ListFromOpt, vsn: str = VsnOpt, json_out: bool = JsonOpt) -> None:
        """List committed snapshots: id, time, full or incremental (and its parent), bytes it added, bytes a
        restore of it reads, volumes, tags. Uncommitted debris is not shown.

        Without --from, every backup target of the plan, one after the other (--json: "stores", one
        entry each; the top-level fields are the first target's).

        Example: migrator snapshots --from s3://backups/vsn --json
        """

        def action() -> dict:
            stores, name, _ = _stores_and_vsn([store] if store else [], vsn)
            from migrator.ops import snapshots as snap_ops

            return snap_ops.per_store([snap_ops.snapshots(s, name) for s in stores])

        def human(r: dict) -> None:
            import datetime as dt

            for n, listed in enumerate(r["stores"]):
                rows = listed["snapshots"]
                print(("\n" if n else "") + f"{len(rows)} snapshot(s) of {listed['vsn']} in {listed['store']}"
                      + (f" ({listed['uncommitted']} uncommitted)" if listed["uncommitted"] else ""))
                if rows:
                    print(f"{'id':23}  {'time (UTC)':19}  {'kind':11}  {'parent':23}  {'added':>8}  {'restore':>8}  volumes")
                for row in rows:
                    when = dt.datetime.fromtimestamp(row["time"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
                    reads = format_size(row["restore_size"]) if row["restore_size"] is not None else "BROKEN"
                    print(f"{row['id']}  {when}  {row['kind']:11}  {row['parent'] or '-':23}  "
                          f"{format_size(row['added']):>8}  {reads:>8}  {','.join(row['volumes'])}"
                          f"  {' '.join('#' + t for t in row['tags'])}")
                for bad in listed.get("damaged", []):
                    print(f"{bad['id']}  DAMAGED, not usable: {bad['why'][:300]}")

        run(json_out, action, human)

    @app.command()
    def verify(snapshot: str = typer.Argument("latest", help="Snapshot id, 'latest' or 'all'."),
               store: str = FromOpt, vsn: str = VsnOpt,
               read_data: bool = typer.Option(False, "--read-data", help="Recompute every object's sha256."),
               read_data_subset: str = typer.Option(None, "--read-data-subset", metavar="P%",
                                                    help="Recompute the sha256 of a random P% of the objects."),
               trusted_key: list[str] = TrustedKeyOpt, json_out: bool = JsonOpt) -> None:
        """Check every object a snapshot's restore reads (its whole chain) exists with the right size, and
        checksums with --read-data (all) or --read-data-subset P% (a random share); exit 6 if not.

        Without --from it reads the plan's first target and names the others it did not read. With trusted
        keys (plan backup.trusted_keys, --trusted-key) every snapshot's signature, and its chain's, must be
        valid first; without, it says the snapshot is unsigned or unchecked ("signature" in --json).

        Example: migrator verify latest --from s3://backups/vsn --read-data
        Example (weekly cron on a large store): migrator verify all --read-data-subset 10%
        """
        report = progress_printer()

        def action() -> dict:
            s, name, p = _store_and_vsn(store, vsn, None)
            from migrator.ops import snapshots as snap_ops

            result = snap_ops.verify(s, name, snapshot, read_data, report,
                                     subset=snap_ops.parse_subset(read_data_subset), trusted=_trusted(p, trusted_key))
            return {**result.to_json(), "not_verified": _other_targets(store, p)}

        def human(r: dict) -> None:
            print(f"{r['snapshot_id']} ok in {r['store']}: {r['objects']} objects present"
                  + (f", {r['read']} re-hashed" if r["read_data"] else "")
                  + (", signatures valid" if r["signature"] == "valid" else ""))
            _say_signature(r)
            for url in r["not_verified"]:
                print(f"not verified: {url} (another target of the plan: migrator verify --from {url})")

        run(json_out, action, human)

    @app.command()
    def prune(store: str = typer.Option(None, "--from", help="One store URL. Default: every backup target of "
                                                             "the deployed plan."),
              to: list[str] = typer.Option(None, "--to", help="Store URL, repeatable (the backup's word); "
                                                              "instead of --from."),
              vsn: str = VsnOpt,
              keep_last: int = typer.Option(None, "--keep-last", min=0), keep_daily: int = typer.Option(None, "--keep-daily", min=0),
              keep_weekly: int = typer.Option(None, "--keep-weekly", min=0),
              keep_monthly: int = typer.Option(None, "--keep-monthly", min=0),
              keep_tag: list[str] = typer.Option(None, "--keep-tag", help="Keep snapshots with this tag (default: pre-update)."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go."),
              wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Apply GFS retention (like restic forget) and remove uncommitted debris older than a day.

        Without --keep-* options the plan's backup.retention is used. Without --from or --to, every
        backup target of the plan is pruned.

        Example: migrator prune --keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 6 --dry-run
        """
        report = progress_printer()

        def action() -> dict:
            if store and to:
                raise UsageError("pass --from URL (one store) or --to URL (repeatable), not both")
            stores, name, p = _stores_and_vsn([store] if store else list(to or []), vsn, writable=True)
            given = {"keep_last": keep_last, "keep_daily": keep_daily, "keep_weekly": keep_weekly,
                     "keep_monthly": keep_monthly}
            if all(v is None for v in given.values()):
                given = {k: v for k, v in (p.backup.get("retention", {}) if p else {}).items() if k.startswith("keep_")}
            policy = Policy(**{k: v or 0 for k, v in given.items()},
                            keep_tags=tuple(keep_tag) if keep_tag else DEFAULT_KEEP_TAGS)
            if policy.empty:
                raise UsageError("no retention given: pass --keep-last/--keep-daily/--keep-weekly/--keep-monthly "
                                 "(or set backup.retention in the plan)")
            with operation("prune", wait, report):
                from migrator.ops import snapshots as snap_ops

                results = []
                for s in stores:
                    report(f"pruning {s.url}")
                    results.append(snap_ops.prune(s, name, policy, dry_run, report))
                return snap_ops.per_store(results)

        def human(r: dict) -> None:
            verb = "would remove" if r["dry_run"] else "removed"
            for pruned in r["stores"]:
                print(f"{pruned['store']}:")
                for sid, why in sorted(pruned["keep"].items()):
                    print(f"  keep   {sid}  ({', '.join(why)})")
                for sid in pruned["remove"]:
                    print(f"  {verb} {sid}")
                for sid in pruned["debris_removed"]:
                    print(f"  {verb} {sid} (uncommitted debris)")
                for bad in pruned.get("damaged", []):
                    print(f"  left   {bad['id']}  (damaged, not counted: {bad['why'][:200]})")

        run(json_out, action, human)

    @app.command()
    def restore(snapshot: str = typer.Argument("latest", help="Snapshot id or 'latest'."), store: str = FromOpt,
                vsn: str = VsnOpt, volume: list[str] = typer.Option(None, "--volume", help="Only this volume (repeatable)."),
                into: Path = typer.Option(None, "--into", help="Restore into this directory; touch no container."),
                identity: Path = typer.Option(None, "--identity", help="age identity file for encrypted snapshots."),
                keep_old: bool = typer.Option(False, "--keep-old", help="Keep the replaced data as <dir>.pre-restore-<ts>."),
                dry_run: bool = typer.Option(False, "--dry-run", help="Show what the restore would add, remove "
                                                                       "and change in each data dir; change nothing."),
                trusted_key: list[str] = TrustedKeyOpt,
                plan: Path = PlanOpt, secrets: Path = SecretsOpt, wait: float = WaitOpt,
                json_out: bool = JsonOpt) -> None:
        """Restore volumes from a snapshot: verified before anything is touched, swapped atomically.

        Works on a machine where the plan was never deployed (the snapshot carries its plan). An
        incremental snapshot is rebuilt from its whole chain, every object verified first. With trusted
        keys (the plan's backup.trusted_keys, or --trusted-key on a fresh machine) the signature of the
        snapshot and of every link of its chain must be valid, else exit 6 and nothing is written.

        Example: migrator restore latest --from s3://backups/vsn --volume dbdata
        Example: migrator restore latest --dry-run
        Example (fresh machine): migrator restore latest --from s3://backups/vsn --vsn web1 --trusted-key ed25519:…
        """
        report = progress_printer()

        def action() -> dict:
            s, name, p = _store_and_vsn(store, vsn, plan)
            from migrator.ops.restore import restore as restore_op

            args = dict(plan=p, volumes=list(volume or []) or None, into=into, identity=identity,
                        keep_old=keep_old, report=report, progress=report.bytes, dry_run=dry_run,
                        trusted=_trusted(p, trusted_key))
            if dry_run:  # reads only: no lock, no journal
                return restore_op(s, name, snapshot, **args).to_json()
            with operation("restore", wait, report):
                return restore_op(s, name, snapshot, **args).to_json()

        def human(r: dict) -> None:
            if not r.get("dry_run"):
                print(f"restored {', '.join(r['volumes'])} from {r['snapshot_id']} into {r['into']} "
                      f"({r['files']} files) in {r['duration']}s"
                      + (", signature valid" if r.get("signature") == "valid" else ""))
                _say_signature(r)
                return
            print(f"restoring {r['snapshot_id']} ({r['kind']}, reads {format_size(r['bytes'])}) would:")
            _say_signature(r)
            for volume, v in r["volumes"].items():
                print(f"  {volume} ({v['live']}): add {v['added']}, remove {v['removed']}, change {v['changed']}, "
                      f"keep {v['unchanged']}")
                for what in ("added", "removed", "changed"):
                    for path in v["paths"][what]:
                        print(f"    {what[0].upper()} {path}")

        run(json_out, action, human)

    @app.command("load-dump")
    def load_dump(snapshot: str = typer.Argument(..., help="Snapshot id or 'latest'."),
                  service: str = typer.Argument(..., help="The service whose dump to load (plan services[].dump)."),
                  database: str = typer.Option(None, "--database", help="Only this database (default: every one "
                                                                          "the snapshot holds for SERVICE)."),
                  as_name: str = typer.Option(None, "--as", metavar="NAME",
                                              help="Load into a new database NAME; leave the dumped one alone."),
                  store: str = FromOpt, vsn: str = VsnOpt,
                  identity: Path = typer.Option(None, "--identity", help="age identity file for encrypted snapshots."),
                  trusted_key: list[str] = TrustedKeyOpt,
                  plan: Path = PlanOpt, secrets: Path = SecretsOpt, wait: float = WaitOpt,
                  json_out: bool = JsonOpt) -> None:
        """Load a database dump from a snapshot into the running service (no stop, no data dir touched).

        The dump was streamed from the service at backup time (plan services[].dump). It is checked
        against the signed manifest before a byte reaches the database; PostgreSQL loads in one
        transaction (all or nothing), MariaDB statement by statement. Without --as the dumped tables are
        replaced.

        Example: migrator load-dump latest db --database app --as app_check
        Example: migrator load-dump 20261207T031500Z-1a2b3c db --from s3://backups/vsn
        """
        report = progress_printer()

        def action() -> dict:
            p, sec = load_plan_args(plan, secrets)
            s, name = _store_for(store, vsn, p)
            from migrator.ops.load_dump import load_dump as load_op

            with operation("load-dump", wait, report):
                return load_op(s, name, snapshot, plan=p, secrets=sec, service=service, database=database,
                               as_name=as_name, identity=identity, trusted=_trusted(p, trusted_key),
                               report=report).to_json()

        def human(r: dict) -> None:
            for item in r["loaded"]:
                print(f"loaded {item['database']} ({format_size(item['bytes'])}) into {item['into']} in "
                      f"{r['service']} from {r['snapshot_id']}")
            print(f"done in {r['duration']}s")
            _say_signature(r)

        run(json_out, action, human)

    @app.command()
    def drill(store: str = FromOpt, vsn: str = VsnOpt,
              snapshot: str = typer.Option("latest", "--snapshot", help="Snapshot id or 'latest'."),
              identity: Path = typer.Option(None, "--identity", help="age identity file for encrypted snapshots."),
              scratch: Path = typer.Option(None, "--scratch", help="Scratch directory (default: in the state dir)."),
              trusted_key: list[str] = TrustedKeyOpt,
              plan: Path = PlanOpt, secrets: Path = SecretsOpt, wait: float = WaitOpt,
              json_out: bool = JsonOpt) -> None:
        """Restore drill: restore a snapshot to scratch, boot it isolated, probe health, tear down; report RTO.

        Production containers and data are not touched. Exit 0 only when everything passed. With trusted
        keys (the plan's backup.trusted_keys, --trusted-key) the snapshot's signatures must be valid first.

        Example: migrator drill --from s3://backups/vsn --json
        """
        report = progress_printer()

        def action() -> dict:
            p, sec = load_plan_args(plan, secrets, required=False)
            s, name = _store_for(store, vsn, p)
            with operation("drill", wait, report):
                from migrator.ops.drill import drill as drill_op

                return drill_op(s, name, snapshot, plan=None, secrets=sec or Secrets(), identity=identity,
                                scratch=scratch, report=report, trusted=_trusted(p, trusted_key)).to_json()

        def human(r: dict) -> None:
            print(f"drill of {r['snapshot_id']} passed: data restored in {r['rto_data_s']}s, "
                  f"healthy in {r['rto_healthy_s']}s ({format_size(r['bytes'])})")
            for name, res in r["services"].items():
                print(f"  {name}: {res['detail']}")
            _say_signature(r)

        run(json_out, action, human)
