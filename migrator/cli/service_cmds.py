"""`start`, `stop`, `restart`: act on the services `health` reports, in depends_on order, under the lock."""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, PlanOpt, SecretsOpt, WaitOpt, load_plan_args
from migrator.cli.output import progress_printer, run
from migrator.ops.recover import operation

ServicesArg = typer.Argument(..., metavar="SERVICE...", help="Service(s) of the deployed plan.")

HELP = {
    "start": ("Start stopped services, and what they depend on, in depends_on order; wait until healthy.",
              "A service `migrator health` reports stopped (exited) comes back with its network holder; its address, "
              "name and published ports are as deployed.", "migrator start web", "migrator start db web --json"),
    "stop": ("Stop services in reverse depends_on order; they stay down (health reports them) until started.",
             "The network holders keep the services' addresses. A stop killed half-way is undone by `migrator "
             "recover` (the services start again).", "migrator stop web", "migrator stop web db --wait 60"),
    "restart": ("Stop, then start services (and start what they depend on) in depends_on order; wait until healthy.",
                "For a service whose probe fails (health names it). A restart killed half-way has its services "
                "started by `migrator recover`.", "migrator restart web", "migrator restart db web --json"),
}


def _command(app: typer.Typer, verb: str) -> None:
    summary, detail, example, example2 = HELP[verb]

    def command(services: list[str] = ServicesArg, plan: Path = PlanOpt, secrets: Path = SecretsOpt,
                wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        report = progress_printer()

        def action() -> dict:
            from migrator.ops.services import act

            p, _ = load_plan_args(plan, secrets)
            with operation(verb, wait, report):
                return act(p, verb, list(services), report).to_json()

        def human(r: dict) -> None:
            if r["stopped"]:
                print(f"stopped: {', '.join(r['stopped'])}")
            if r["started"]:
                print(f"started: {', '.join(r['started'])}")
            if not r["stopped"] and not r["started"]:
                print(f"nothing to {verb}: {', '.join(r['services'])} "
                      + ("already stopped" if verb == "stop" else "already running"))
            for name, detail in r["health"].items():
                print(f"  {name}: {detail}")

        run(json_out, action, human)

    command.__doc__ = f"{summary}\n\n{detail}\n\nExample: {example}\n\nExample: {example2}\n"
    app.command(verb)(command)


def register(app: typer.Typer) -> None:
    for verb in HELP:
        _command(app, verb)
