"""`migrator agent …`: the target side of `migrator move`, run over SSH by the source. Hidden from --help:
operators never call it by hand (the `Example:` lines are for the help test and for debugging)."""

from __future__ import annotations

import typer

from migrator.cli.output import run
from migrator.cli.plan_cmds import JsonOpt
from migrator.ops import move_target

agent = typer.Typer(help="Target side of `migrator move` (run over SSH by the source).", hidden=True,
                    no_args_is_help=True)
RootOpt = typer.Option(..., "--data-root", help="The plan's data root on this VSN.")


@agent.command()
def info(data_root: str = RootOpt, json_out: bool = JsonOpt) -> None:
    """Version, root, free space and state dir of this VSN.

    Example: migrator agent info --data-root /srv/data --json
    """
    run(json_out, lambda: move_target.info(data_root), print)


@agent.command()
def receive(volume: str = typer.Option(..., "--volume"), data_root: str = RootOpt,
            fresh: bool = typer.Option(False, "--fresh", help="Start from an empty staging dir."),
            json_out: bool = JsonOpt) -> None:
    """Extract an archive stream from stdin into the volume's staging dir.

    Example: migrator agent receive --volume db --data-root /srv/data --fresh --json < db.tar.zst
    """
    run(json_out, lambda: move_target.receive(data_root, volume, fresh), print)


@agent.command("fingerprint")
def fingerprint_cmd(volume: str = typer.Option(..., "--volume"), data_root: str = RootOpt,
                    json_out: bool = JsonOpt) -> None:
    """Metadata fingerprint of a staged volume.

    Example: migrator agent fingerprint --volume db --data-root /srv/data --json
    """
    run(json_out, lambda: move_target.staged_fingerprint(data_root, volume), print)


@agent.command()
def commit(volume: list[str] = typer.Option(..., "--volume"), data_root: str = RootOpt,
           json_out: bool = JsonOpt) -> None:
    """Swap the staged volumes into the data root.

    Example: migrator agent commit --volume db --volume web --data-root /srv/data --json
    """
    run(json_out, lambda: move_target.commit(data_root, list(volume)), print)


@agent.command("mark-moved")
def mark_moved(source: str = typer.Option(..., "--from"), json_out: bool = JsonOpt) -> None:
    """Remember where the stack came from.

    Example: migrator agent mark-moved --from vsn1 --json
    """
    run(json_out, lambda: move_target.mark_moved(source), print)


def register(app: typer.Typer) -> None:
    app.add_typer(agent, name="agent")
