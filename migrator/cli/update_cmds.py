"""`os-update prepare|finish|run`: the six-monthly OS update without data loss."""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, PlanOpt, SecretsOpt, WaitOpt, load_plan_args
from migrator.cli.output import progress_printer, run
from migrator.ops import osupdate
from migrator.ops.recover import operation

os_update = typer.Typer(help="Carry the VSN through an OS update: pre-update snapshot, containerless, update, "
                             "redeploy, prove the data unchanged.", no_args_is_help=True)
ToOpt = typer.Option(None, "--to", help="Snapshot target (repeatable). Default: the plan's backup.targets.")
RestoreOpt = typer.Option(False, "--restore-on-mismatch", help="Restore the pre-update snapshot if the data changed.")


def data_outcome(finished: dict) -> str:
    """What finish did to the data: nothing, or restored the pre-update snapshot over a changed one."""
    if not finished["restored"]:
        return "data unchanged"
    count = len(finished["differences"])
    return (f"the data differed from the pre-update fingerprint ({count} difference(s)): restored the pre-update "
            f"snapshot {finished['snapshot_id']}, now identical")


@os_update.command()
def prepare(plan: Path = PlanOpt, secrets: Path = SecretsOpt, to: list[str] = ToOpt, wait: float = WaitOpt,
            json_out: bool = JsonOpt) -> None:
    """Containerless, snapshot tagged pre-update, fingerprint the data, leave a marker.

    Example: migrator os-update prepare && dnf -y upgrade && reboot
    """
    report = progress_printer()

    def action() -> dict:
        p, s = load_plan_args(plan, secrets)
        with operation("os-update", wait, report):
            return osupdate.prepare(p, s, list(to or []) or None, report).to_json()

    run(json_out, action, lambda r: print(f"ready for the OS update: snapshot {r['snapshot_id']}, "
                                          f"{r['files']} paths fingerprinted; run `migrator os-update finish` after"))


@os_update.command()
def finish(restore_on_mismatch: bool = RestoreOpt,
           identity: Path = typer.Option(None, "--identity", help="age identity for an encrypted snapshot."),
           wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
    """Check the data against the pre-update fingerprint (exit 6 on any difference), redeploy, probe health.

    Example: migrator os-update finish
    """
    report = progress_printer()

    def action() -> dict:
        with operation("os-update", wait, report):
            return osupdate.finish(restore_on_mismatch, identity, report).to_json()

    run(json_out, action, lambda r: print(f"OS update finished: {data_outcome(r)}; stack redeployed "
                                          f"({', '.join(r['health'])} healthy)"))


@os_update.command("run")
def run_cmd(command: str = typer.Option(..., "--command", help="The update command line (run with bash)."),
            plan: Path = PlanOpt, secrets: Path = SecretsOpt, to: list[str] = ToOpt,
            restore_on_mismatch: bool = RestoreOpt, wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
    """prepare -> the update command -> finish, for updates without a reboot.

    Example: migrator os-update run --command "apt-get update && apt-get -y upgrade"
    """
    report = progress_printer()

    def action() -> dict:
        p, s = load_plan_args(plan, secrets)
        with operation("os-update", wait, report):
            return osupdate.run_update(p, s, command, list(to or []) or None, restore_on_mismatch, report).to_json()

    run(json_out, action, lambda r: print(f"OS update done (command exit {r['command_exit']}); "
                                          f"{data_outcome(r['finished'])}; stack redeployed"))


def register(app: typer.Typer) -> None:
    app.add_typer(os_update, name="os-update")
