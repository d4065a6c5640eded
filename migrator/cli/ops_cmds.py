"""`health`, `cron install|show|remove`, `archive`, `unarchive`, `cleanup`, `log`: day-2 operations."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, PlanArg, PlanOpt, SecretsOpt, WaitOpt, load_plan_args
from migrator.cli.output import progress_printer, run
from migrator.errors import UsageError
from migrator.notify import alerts
from migrator.ops import cron as cron_op
from migrator.ops import lifecycle
from migrator.ops.health import HealthResult, add_mail_failure
from migrator.ops.health import health as health_op
from migrator.ops.recover import operation
from migrator.plan.model import Plan, Secrets
from migrator.state import deployed, history

# `migrator health` exits 1 when anything is unhealthy: exit codes 2-8 name *why a command failed*, and a
# health check that ran and found a problem is a finding, not one of those. JSON has "healthy": false and
# the human output says UNHEALTHY, so a crash (also 1, "unexpected error") is not mistaken for it.
UNHEALTHY_EXIT = 1

CronFileOpt = typer.Option(None, "--file", help="Cron file (default $MIGRATOR_CRON_FILE; for show and remove "
                                                 "the one install wrote; else /etc/cron.d/migrator).")
SystemdOpt = typer.Option(None, "--systemd", help="Write systemd .service/.timer units into this directory "
                                                  "instead of a cron file (e.g. /etc/systemd/system).")
ServeOpt = typer.Option(None, "--serve/--no-serve",
                        help="Also start `migrator serve` at boot: an @reboot line (output to <state dir>/"
                             "cron-serve.log), or migrator-serve.service with --systemd. Neither given: keep "
                             "what was installed there before.")
ServeArgsOpt = typer.Option(None, "--serve-args", metavar="<args>",
                            help='Options for that serve, one shell-quoted string (implies --serve), e.g. '
                                 '"--listen 0.0.0.0:8765 --tls-cert /etc/migrator/cert.pem --tls-key '
                                 '/etc/migrator/key.pem --follow-dependents".')


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _notify_health(plan: Plan, secrets: Secrets, result: HealthResult) -> dict:
    cfg = plan.health.get("notify")
    if not cfg:
        return {"sent": None, "error": "the plan has no health.notify section: nobody to mail"}
    failures = {c.name: c.detail for c in result.failed}
    return alerts.notify("health", failures, cfg, plan.vsn.name, secrets, what="health check")


def _confirm_cleanup(plan: Plan, snapshot: bool) -> None:
    """The typed VSN name is the confirmation; anything else (or no input at all) refuses with exit 2."""
    dirs = ", ".join(v.root_dir(plan.vsn.data_root) for v in plan.volumes)
    print(f"cleanup removes every container of VSN {plan.vsn.name} AND its data ({dirs})"
          + (", after a final snapshot." if snapshot else ", WITHOUT a final snapshot."), file=sys.stderr)
    print(f"Type the VSN name ({plan.vsn.name}) to confirm: ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip() if sys.stdin else ""
    if answer != plan.vsn.name:
        raise UsageError("cleanup not confirmed: the VSN name was not typed; nothing was done",
                         hint=f"type {plan.vsn.name} at the prompt, or pass --yes")


def register(app: typer.Typer) -> None:
    @app.command()
    def health(plan: Path = PlanArg, secrets: Path = SecretsOpt,
               notify: bool = typer.Option(False, "--notify", help="Mail failures (and recovery) to the plan's "
                                                                   "health.notify.email, without a mail storm."),
               json_out: bool = JsonOpt) -> None:
        """Check the stack: containers, health probes, last backup age, last drill, free disk; exit 1 if unhealthy.

        Exit 0 when healthy; otherwise 1 and one line per failure. Meant for cron (`migrator cron install` adds it with --notify).

        Example: migrator health --notify --json
        """

        def action() -> dict:
            p, s = load_plan_args(plan, secrets)
            result = health_op(p)
            if notify:
                result = replace(result, notify=_notify_health(p, s, result))
                if result.notify.get("error") and p.health.get("notify"):  # a mail that did not go out
                    result = add_mail_failure(result, result.notify["error"])
            return result.to_json()

        def human(r: dict) -> None:
            if r["healthy"]:
                skipped = sum(1 for c in r["checks"] if c["ok"] is None)
                print(f"healthy: {r['vsn']}, {len(r['checks']) - skipped} checks passed"
                      + (f", {skipped} skipped" if skipped else ""))
            else:
                print(f"UNHEALTHY: {r['vsn']}, {len(r['failures'])} problem(s)")
                for line in r["failures"]:
                    print(f"  {line}")
                for line in r.get("hints", []):
                    print(f"hint: {line}")
            if r.get("stack_state_error"):
                print(f"note: stack state is Failure: {r['stack_state_error']}")
            n = r.get("notify")
            if n and n.get("sent"):
                print(f"mailed ({n['sent']}) via {n['transport']}")
            if n and n.get("error"):
                print(f"migrator: warning: mail not sent: {n['error']}", file=sys.stderr)

        run(json_out, action, human, exit_code=lambda r: 0 if r["healthy"] else UNHEALTHY_EXIT)

    cron = typer.Typer(help="Install, show or remove the plan's schedules (backup, health, drill, prune) as a "
                            "cron file or systemd timers.\n\nExample: migrator cron install",
                       no_args_is_help=True)
    app.add_typer(cron, name="cron")

    @cron.command("install")
    def cron_install(plan: Path = PlanOpt, secrets: Path = SecretsOpt, file: Path = CronFileOpt,
                     systemd: Path = SystemdOpt, serve: bool = ServeOpt, serve_args: str = ServeArgsOpt,
                     json_out: bool = JsonOpt) -> None:
        """Write the plan's schedules to one cron file (idempotent, atomic), or systemd units with --systemd.

        Cron expressions are validated (exit 3 with the JSON path of a bad one). --serve adds `migrator serve`
        at boot (@reboot, or migrator-serve.service); --serve-args must be one line of shell words (exit 2).

        Example: migrator cron install --file /etc/cron.d/migrator --serve --serve-args "--listen 127.0.0.1:8765"
        """

        def action() -> dict:
            argv = cron_op.serve_args(serve_args) if serve_args is not None else None
            p, _ = load_plan_args(plan, secrets)
            if systemd:
                return cron_op.install_systemd(p, systemd, serve, argv).to_json()
            return cron_op.install(p, file, serve, argv).to_json()

        def human(r: dict) -> None:
            if "directory" in r:
                print(f"{len(r['units'])} unit(s) in {r['directory']}, {len(r['changed'])} changed; "
                      f"next: {r['next_step']}")
                return
            print(f"{r['file']}: {'written' if r['changed'] else 'unchanged'} ({len(r['jobs'])} job(s))")
            for job in r["jobs"]:
                print(f"  {job['schedule']:15} {' '.join([job['verb'], *job['args']])}")
            if r["serve"] is not None:
                print(f"  {'@reboot':15} {shlex.join(['serve', *r['serve']])}")

        run(json_out, action, human)

    @cron.command("show")
    def cron_show(plan: Path = PlanOpt, secrets: Path = SecretsOpt, file: Path = CronFileOpt,
                  json_out: bool = JsonOpt) -> None:
        """Show the installed cron file and whether it matches the plan.

        Without --file: the file `cron install` wrote (remembered in the state dir), else the default.

        Example: migrator cron show
        """

        def action() -> dict:
            p = None
            if plan or (deployed.current() or {}).get("plan"):
                p, _ = load_plan_args(plan, secrets)
            return cron_op.show(p, file).to_json()

        def human(r: dict) -> None:
            if r["installed"] is None:
                print(f"{r['file']}: not installed")
            else:
                print(f"# {r['file']} ({'matches the plan' if r['in_sync'] else 'differs from the plan'})")
                print(r["installed"], end="")
            if r["expected"] is not None and not r["in_sync"]:
                print("# `migrator cron install` would write:")
                print(r["expected"], end="")
            for other in r["other_files"]:
                print(f"# also installed: {other} (`migrator cron show --file {other}`)")
            for directory in r["systemd_dirs"]:
                print(f"# systemd timers installed in {directory}")
            for unit in r["serve_units"]:
                print(f"# migrator serve starts at boot: {unit}")

        run(json_out, action, human)

    @cron.command("remove")
    def cron_remove(file: Path = CronFileOpt, systemd: Path = SystemdOpt, json_out: bool = JsonOpt) -> None:
        """Remove the cron file (or the systemd units with --systemd); nothing to remove is fine.

        Example: migrator cron remove
        """

        def action() -> dict:
            return (cron_op.remove_systemd(systemd) if systemd else cron_op.remove(file)).to_json()

        run(json_out, action, lambda r: print(f"removed {', '.join(r['removed']) or 'nothing'} from {r['directory']}"
                                              if "directory" in r else
                                              f"{r['file']}: {'removed' if r['removed'] else 'was not installed'}"))

    @app.command()
    def archive(plan: Path = PlanArg, secrets: Path = SecretsOpt, wait: float = WaitOpt,
                json_out: bool = JsonOpt) -> None:
        """Remove the stack's containers and keep its data: the stack becomes Archived.

        `migrator unarchive` brings it back with the remembered plan and secrets.

        Example: migrator archive
        """
        report = progress_printer()

        def action() -> dict:
            p, _ = load_plan_args(plan, secrets)
            with operation("archive", wait, report):
                return lifecycle.archive(p, report).to_json()

        run(json_out, action, lambda r: print(f"{r['vsn']} archived ({len(r['removed'])} containers removed); "
                                              f"data kept under {r['data_root']}"))

    @app.command()
    def unarchive(wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Redeploy an Archived stack with its remembered plan and secrets path.

        Example: migrator unarchive --json
        """
        report = progress_printer()

        def action() -> dict:
            with operation("unarchive", wait, report):
                return lifecycle.unarchive(report).to_json()

        run(json_out, action, lambda r: print(f"{r['vsn']} is {r['stack_state']} again: {len(r['containers'])} "
                                              f"containers in {r['duration']}s"))

    @app.command()
    def cleanup(plan: Path = PlanArg, secrets: Path = SecretsOpt,
                yes: bool = typer.Option(False, "--yes", help="Do not ask for the VSN name."),
                no_snapshot: bool = typer.Option(False, "--no-snapshot", help="Skip the final snapshot."),
                to: list[str] = typer.Option(None, "--to", help="Store(s) for the final snapshot (default: the "
                                                                "plan's backup.targets)."),
                wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Remove the stack for good: final snapshot, then containers AND data dirs, deployment, schedules.

        Asks for the VSN name to be typed unless --yes; refuses (exit 2) otherwise.

        Example: migrator cleanup --yes --to file:///var/backups/final
        """
        report = progress_printer()

        def action() -> dict:
            p, _ = load_plan_args(plan, secrets)
            if not yes:
                _confirm_cleanup(p, not no_snapshot)
            with operation("cleanup", wait, report):
                return lifecycle.cleanup(p, snapshot=not no_snapshot, targets=list(to or []) or None,
                                         report=report).to_json()

        def human(r: dict) -> None:
            if r["snapshot_id"]:
                print(f"final snapshot {r['snapshot_id']} in {', '.join(r['targets'])}")
            print(f"{r['vsn']} cleaned up: {len(r['removed_containers'])} containers, "
                  f"{len(r['removed_data'])} data dirs, {len(r['removed_schedules'])} schedule file(s) removed")

        run(json_out, action, human)

    @app.command("log")
    def log(limit: int = typer.Option(20, "--limit", min=1, help="Newest N operations."),
            verb: str = typer.Option(None, "--verb", help="Only this verb (e.g. backup)."),
            json_out: bool = JsonOpt) -> None:
        """Operation history: verb, start, duration, result, exit code, snapshot id, user, arguments (redacted).

        Example: migrator log --limit 50 --verb backup
        """

        def action() -> dict:
            return {"entries": [e.to_json() for e in history.entries(limit, verb)]}

        def human(r: dict) -> None:
            if not r["entries"]:
                print("no operations recorded")
            for e in r["entries"]:
                snap = f"  snapshot {e['snapshot_id']}" if e["snapshot_id"] else ""
                why = f"  ({e['message']})" if e["message"] and e["result"] != "ok" else ""
                dur = f"{e['duration']:.1f}s" if e["duration"] is not None else "-"
                print(f"{_when(e['started'])}  {e['verb']:14} {e['result']:11} {e['exit_code']!s:>3} {dur:>8}"
                      f"  {e['user']:8} {' '.join(e['args'])}{snap}{why}")

        run(json_out, action, human)
