"""The options the command groups share, and the plan and secrets a command works on.

Kept apart from the command modules so that a command imports only its own module (cli/app.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.errors import UsageError
from migrator.plan import validate_files
from migrator.plan.model import Plan, Secrets
from migrator.state import conforming, deployed

PlanArg = typer.Argument(None, help="Deployment plan (JSON). Default: the plan deployed on this VSN.")
PlanOpt = typer.Option(None, "--plan", help="Plan (default: the one deployed on this VSN).")
SecretsOpt = typer.Option(None, "--secrets", "-s", help="Secrets file (JSON, mode 0600).")
JsonOpt = typer.Option(False, "--json", help="Print exactly one JSON object on stdout.")
WaitOpt = typer.Option(0.0, "--wait", help="Seconds to wait for another operation's lock (default: exit 5 at once).")


def load_plan_args(plan: Path | None, secrets: Path | None, required: bool = True) -> tuple[Plan | None, Secrets | None]:
    """The plan and secrets a command works on: the given files, else the ones deployed on this VSN.
    With `required=False` and nothing given or deployed, (None, None).

    Every check runs every time, except that the JSON schema verdict of a document already seen to
    conform (same bytes, same schema) is remembered in the state dir: routine commands (backup from
    cron, health) then skip loading the schema validator."""
    if plan is None and not (deployed.current() or {}).get("plan"):
        if required:
            raise UsageError("no plan given and none deployed on this VSN", hint="pass the plan (and --secrets FILE)")
        return None, None
    plan_path, secrets_path = deployed.plan_and_secrets_paths(str(plan) if plan else None,
                                                              str(secrets) if secrets else None)
    return validate_files(plan_path, secrets_path, conforming=conforming.remembered())
