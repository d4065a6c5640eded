"""The `migrator` command: a Typer app assembled from one module per command group."""

from __future__ import annotations

import typer

from migrator import __version__
from migrator.cli import agent_cmds, move_cmds, ops_cmds, plan_cmds, snapshot_cmds, stack_cmds, update_cmds
from migrator.cli.output import DEBUG

app = typer.Typer(
    name="migrator",
    help="Keep a small container deployment alive across its data lifecycle: deploy, snapshot, restore, "
         "move, OS update.\n\nExit codes: 0 done, 1 unexpected failure (or: unhealthy, for health), 2 bad command line, 3 plan invalid, 4 preflight "
         "failed, 5 locked, 6 integrity failure, 7 deploy rolled back, 8 store/remote unreachable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"migrator {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Global options."""
    DEBUG["on"] = debug


plan_cmds.register(app)
stack_cmds.register(app)
snapshot_cmds.register(app)
update_cmds.register(app)
move_cmds.register(app)
agent_cmds.register(app)
ops_cmds.register(app)


def main() -> None:
    app()
