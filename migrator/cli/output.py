"""How every command runs and talks: stderr progress, stdout human output or one JSON object, exit codes.

Progress is quiet when not a TTY unless asked; a MigratorError becomes its exit code, one line and a hint."""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable

import typer

from migrator.errors import MigratorError
from migrator.notify import hooks, opevents

DEBUG = {"on": False}
_LIVE: list = []  # progress bars showing now: stopped before a command prints its result


class Progress:
    """Progress on stderr: step lines, and on a TTY a live bar (bytes, rate) for the current archive.
    Quiet when stderr is not a TTY (cron, CI) unless MIGRATOR_PROGRESS=1 asks for the step lines."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.show = self.tty or os.environ.get("MIGRATOR_PROGRESS") == "1"
        self._bar = None
        self._task = None

    def __call__(self, message: str) -> None:
        op = opevents.current()
        if op is not None:
            op.step(message)
        if not self.show:
            return
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        print(f"migrator: {message}", file=sys.stderr, flush=True)

    def bytes(self, done: int) -> None:
        """Cumulative bytes of the archive being written or read (called often: keep it cheap)."""
        op = opevents.current()
        if op is not None:
            op.progress(done)
        if not self.tty:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import DownloadColumn, Progress, TimeElapsedColumn, TransferSpeedColumn

            self._bar = Progress(DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.start()
            _LIVE.append(self)
            self._task = self._bar.add_task("bytes", total=None)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_printer() -> Progress:
    return Progress()


def emit_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def fail(exc: MigratorError, json_out: bool, warnings: list[str] | None = None) -> None:
    if json_out:
        try:
            emit_json({"ok": False, **exc.to_json(), **({"warnings": warnings} if warnings else {})})
            sys.stdout.flush()
        except BrokenPipeError:
            _discard_stdout()
    print(f"migrator: error: {exc.message}", file=sys.stderr)
    for line in exc.details[:200]:
        print(f"  {line}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    if DEBUG["on"]:
        traceback.print_exception(exc)
    raise typer.Exit(exc.exit_code)


def _stop_live_progress() -> None:
    while _LIVE:
        _LIVE.pop().close()


def command_verb() -> str | None:
    """The command being run, e.g. "backup" or "cron install", from the CLI framework's context (Typer
    0.2x+ vendors click as typer._click; older Typer uses click itself)."""
    ctx = None
    for module in ("typer._click.globals", "click"):
        try:
            ctx = importlib.import_module(module).get_current_context(silent=True)
        except ImportError:
            continue
        if ctx is not None:
            break
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(names)) or None


def _after(around: hooks.Around, code: int, result: dict | None = None,
           error: BaseException | None = None) -> list[str]:
    """Operation history, metrics, failure mail (notify/hooks.py), the finished event, pings and webhooks
    (notify/opevents.py); their problems are warnings only: on stderr, and in the JSON output as
    `warnings` (a mail that could not be sent must not go unnoticed)."""
    warnings = around.finish(code, result, error)
    warnings += opevents.finish(code, result, error)
    for line in warnings:
        print(f"migrator: warning: {line}", file=sys.stderr)
    return warnings


def run(json_out: bool, action: Callable[[], dict], human: Callable[[dict], None] | None = None,
        exit_code: Callable[[dict], int] | None = None) -> None:
    """Run one command's action and render its result; map errors to exit codes."""
    around = hooks.Around(command_verb())
    opevents.begin(around.verb)
    try:
        try:
            result = action()
        finally:
            _stop_live_progress()
    except MigratorError as exc:
        fail(exc, json_out, _after(around, exc.exit_code, error=exc))
        return
    except KeyboardInterrupt as exc:
        _after(around, 130, error=exc)
        print("migrator: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: one line, traceback only with --debug
        _after(around, 1, error=exc)
        if json_out:
            emit_json({"ok": False, "error": type(exc).__name__, "exit_code": 1, "message": str(exc)})
        print(f"migrator: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: this is a bug in migrator; rerun with --debug and report the traceback", file=sys.stderr)
        if DEBUG["on"]:
            traceback.print_exc()
        raise typer.Exit(1) from None
    code = exit_code(result) if exit_code else 0
    warnings = _after(around, code, result=result)
    try:
        if json_out:
            emit_json({"ok": code == 0, **result, **({"warnings": warnings} if warnings else {})})
        elif human:
            human(result)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
    if code:
        raise typer.Exit(code)


def _discard_stdout() -> None:
    """The reader of stdout went away (`migrator status | head -1`): that is not a failure of the
    command. What is left to write goes nowhere, also the flush at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
