"""`migrator agent …`: the target side of `migrator move`, run over SSH by the source.

Hidden from --help: operators never call it by hand (the `Example:` lines are for the help test and for
debugging)."""

from __future__ import annotations

import typer

from migrator.cli.options import JsonOpt
from migrator.cli.output import run
from migrator.ops import move_target
from migrator.ops.recover import operation

agent = typer.Typer(help="Target side of `migrator move` (run over SSH by the source).", hidden=True,
                    no_args_is_help=True)
RootOpt = typer.Option(..., "--data-root", help="The plan's data root on this VSN.")


@agent.command()
def info(data_root: str = RootOpt, json_out: bool = JsonOpt) -> None:
    """Version, root, free space and state dir of this VSN.

    Example: migrator agent info --data-root /srv/data --json
    """
    run(json_out, lambda: move_target.info(data_root).to_json(), print)


@agent.command()
def receive(volume: str = typer.Option(..., "--volume"), data_root: str = RootOpt,
            fresh: bool = typer.Option(False, "--fresh", help="Start from an empty staging dir."),
            json_out: bool = JsonOpt) -> None:
    """Extract an archive stream from stdin into the volume's staging dir.

    Example: migrator agent receive --volume db --data-root /srv/data --fresh --json < db.tar.zst
    """
    run(json_out, lambda: move_target.receive(data_root, volume, fresh).to_json(), print)


@agent.command()
def cutover(plan: str = typer.Option(..., "--plan", help="The plan the source put here."),
            secrets: str = typer.Option(None, "--secrets", help="The secrets the source put here (0600)."),
            source: str = typer.Option(..., "--from", help="The source VSN's name (remembered in moved-in.json)."),
            heartbeat: bool = typer.Option(False, "--heartbeat", help="Install incoming/last_backup.json once healthy."),
            keep_old: bool = typer.Option(False, "--keep-old", help="Keep the data this VSN held before (set "
                                          "aside as <volume>.pre-move-<ts>) once healthy, instead of removing it."),
            json_out: bool = JsonOpt) -> None:
    """The whole cut-over in one process: say `ready`, receive the delta streams framed on stdin, report
    fingerprints, commit staging, deploy, probe health; one JSON event line per step on stdout, then the
    result. Holds this VSN's operation lock throughout.

    Example: migrator agent cutover --plan /var/lib/migrator/incoming/plan.json --from vsn1 --json
    """

    def action() -> dict:
        with operation("move (target side)", 0.0):
            return move_target.cutover(plan, secrets, source, heartbeat, keep_old=keep_old).to_json()

    run(json_out, action, print)


def register(app: typer.Typer) -> None:
    app.add_typer(agent, name="agent")
