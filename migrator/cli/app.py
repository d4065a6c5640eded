"""The `migrator` command: a Typer app assembled from one module per command group.

A run imports only the module of the command it runs (start-up is paid by every cron job and is part of
every backup's and restore's time); `--help` loads them all to list them."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from functools import cache

import typer
from typer.core import TyperGroup

from migrator import __version__
from migrator.cli.output import DEBUG

# Command -> the migrator.cli module whose register() defines it, in --help order.
# tests/unit/test_cli.py checks this against what each module really registers.
COMMAND_MODULES = {
    "validate": "plan_cmds", "check": "plan_cmds",
    "deploy": "stack_cmds", "teardown": "stack_cmds", "status": "stack_cmds", "upgrade": "stack_cmds",
    "recover": "stack_cmds", "start": "service_cmds", "stop": "service_cmds", "restart": "service_cmds",
    "backup": "snapshot_cmds", "snapshots": "snapshot_cmds", "verify": "snapshot_cmds", "prune": "snapshot_cmds",
    "restore": "snapshot_cmds", "load-dump": "snapshot_cmds", "drill": "snapshot_cmds", "key": "key_cmds",
    "move": "move_cmds",
    "health": "ops_cmds", "archive": "ops_cmds", "unarchive": "ops_cmds", "cleanup": "ops_cmds", "log": "ops_cmds",
    "os-update": "update_cmds", "agent": "agent_cmds", "cron": "ops_cmds",
    "serve": "serve_cmds", "watch": "serve_cmds",
}


@cache
def module_commands(module: str) -> dict[str, typer.core.TyperCommand | TyperGroup]:
    """The click commands one migrator.cli module registers, built on first use."""
    scratch = typer.Typer()
    importlib.import_module(f"migrator.cli.{module}").register(scratch)
    return dict(typer.main.get_group(scratch).commands)


class _LazyCommands(MutableMapping):
    """The top-level commands by name; a command's module is imported when the command is looked up."""

    def __init__(self) -> None:
        self._added: dict = {}

    def __getitem__(self, name: str):
        if name in self._added:
            return self._added[name]
        return module_commands(COMMAND_MODULES[name])[name]

    def __setitem__(self, name: str, command) -> None:
        self._added[name] = command

    def __delitem__(self, name: str) -> None:
        del self._added[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*COMMAND_MODULES, *(n for n in self._added if n not in COMMAND_MODULES)])

    def __len__(self) -> int:
        return len(set(COMMAND_MODULES) | set(self._added))


class LazyGroup(TyperGroup):
    """The top-level group: its commands come from `_LazyCommands`, listed without being built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)


app = typer.Typer(
    cls=LazyGroup,
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


def main() -> None:
    app()
