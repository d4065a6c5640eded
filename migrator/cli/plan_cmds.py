"""`validate` and `check`: read-only commands about the plan and the VSN."""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, PlanArg, SecretsOpt
from migrator.cli.output import run
from migrator.errors import PreflightFailed
from migrator.ops import check as check_op
from migrator.plan import validate_files
from migrator.state import deployed


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(plan: Path = PlanArg, secrets: Path = SecretsOpt, json_out: bool = JsonOpt) -> None:
        """Check a plan (and secrets) against the schema and the special checks; exit 3 on any problem.

        Every problem is listed with its JSON path, e.g. services[2].volumes_from[0].

        Example: migrator validate examples/demo-plan.json --secrets examples/demo-secrets.json
        """

        def action() -> dict:
            plan_path, secrets_path = deployed.plan_and_secrets_paths(str(plan) if plan else None,
                                                                      str(secrets) if secrets else None)
            p, s = validate_files(plan_path, secrets_path)
            return {"plan": plan_path, "vsn": p.vsn.name, "volumes": len(p.volumes), "services": len(p.services),
                    "secrets": s.path, "problems": []}

        run(json_out, action, lambda r: print(f"plan {r['plan']} is valid ({r['volumes']} volumes, "
                                              f"{r['services']} services)"))

    @app.command()
    def check(plan: Path = PlanArg, secrets: Path = SecretsOpt, json_out: bool = JsonOpt) -> None:
        """VSN preflight: required commands, engine socket, root, data root, free space, data dir sizes.

        Exit 4 with what is missing.

        Example: migrator check examples/demo-plan.json
        """

        def action() -> dict:
            p = None
            if plan or (deployed.current() or {}).get("plan"):
                plan_path, secrets_path = deployed.plan_and_secrets_paths(str(plan) if plan else None,
                                                                          str(secrets) if secrets else None)
                p, _ = validate_files(plan_path, secrets_path)
            result = check_op.report(p)
            if result.failed:
                raise PreflightFailed(f"the VSN is not fit: {len(result.failed)} check(s) failed",
                                      details=[f"{r.name}: {r.detail}" for r in result.failed])
            return result.to_json()

        def human(r: dict) -> None:
            for c in r["checks"]:
                print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")

        run(json_out, action, human)
