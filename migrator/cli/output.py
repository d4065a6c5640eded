"""How every command runs and talks: progress lines on stderr (quiet when not a TTY unless asked),
human output or exactly one JSON object on stdout, MigratorError -> exit code + one line + hint."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable

import typer

from migrator.errors import MigratorError

DEBUG = {"on": False}


def progress_printer(json_out: bool) -> Callable[[str], None]:
    """Progress goes to stderr on a TTY (or with MIGRATOR_PROGRESS=1); cron and CI stay quiet."""
    show = sys.stderr.isatty() or os.environ.get("MIGRATOR_PROGRESS") == "1"

    def report(message: str) -> None:
        if show:
            print(f"migrator: {message}", file=sys.stderr, flush=True)

    return report


def emit_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def fail(exc: MigratorError, json_out: bool) -> None:
    if json_out:
        emit_json({"ok": False, **exc.to_json()})
    print(f"migrator: error: {exc.message}", file=sys.stderr)
    for line in exc.details[:200]:
        print(f"  {line}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    if DEBUG["on"]:
        traceback.print_exception(exc)
    raise typer.Exit(exc.exit_code)


def run(json_out: bool, action: Callable[[], dict], human: Callable[[dict], None] | None = None,
        exit_code: Callable[[dict], int] | None = None) -> None:
    """Run one command's action and render its result; map errors to exit codes."""
    try:
        result = action()
    except MigratorError as exc:
        fail(exc, json_out)
        return
    except KeyboardInterrupt:
        print("migrator: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: one line, traceback only with --debug
        if json_out:
            emit_json({"ok": False, "error": type(exc).__name__, "exit_code": 1, "message": str(exc)})
        print(f"migrator: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: this is a bug in migrator; rerun with --debug and report the traceback", file=sys.stderr)
        if DEBUG["on"]:
            traceback.print_exc()
        raise typer.Exit(1) from None
    code = exit_code(result) if exit_code else 0
    if json_out:
        emit_json({"ok": code == 0, **result})
    elif human:
        human(result)
    if code:
        raise typer.Exit(code)
