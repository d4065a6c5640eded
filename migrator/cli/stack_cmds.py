"""`deploy`, `teardown`, `status`, `upgrade`, `recover`: commands that change or show the stack."""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, PlanArg, SecretsOpt, WaitOpt, load_plan_args
from migrator.cli.output import progress_printer, run
from migrator.ops import recover as recover_op
from migrator.ops.deploy import deploy as deploy_op
from migrator.ops.recover import operation
from migrator.ops.status import container_ok
from migrator.ops.status import status as status_op
from migrator.ops.teardown import teardown as teardown_op
from migrator.ops.upgrade import upgrade as upgrade_op
from migrator.plan import validate_files


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(plan: Path = typer.Argument(..., help="Deployment plan (JSON)."), secrets: Path = SecretsOpt,
               dry_run: bool = typer.Option(False, "--dry-run", help="Print the steps without acting."),
               wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Deploy a plan: drop the stopped stack, create missing data dirs, start the Host
        container, volume and service containers, wait for health.

        Any error rolls back to the containerless state with every data dir untouched (exit 7).
        Refuses while the Host container runs.

        Example: migrator deploy examples/demo-plan.json --secrets examples/demo-secrets.json
        """
        report = progress_printer()

        def action() -> dict:
            p, s = validate_files(plan, secrets)
            if dry_run:
                return deploy_op(p, s, dry_run=True).to_json()
            with operation("deploy", wait, report):
                return deploy_op(p, s, report=report).to_json()

        def human(r: dict) -> None:
            if r["dry_run"]:
                for i, step in enumerate(r["steps"], 1):
                    print(f"{i:2}. {step}")
                return
            print(f"deployed {r['vsn']}: {len(r['containers'])} containers in {r['duration']}s")
            for name, detail in r["health"].items():
                print(f"  {name}: {detail}")

        run(json_out, action, human)

    @app.command()
    def teardown(plan: Path = PlanArg, secrets: Path = SecretsOpt, wait: float = WaitOpt,
                 json_out: bool = JsonOpt) -> None:
        """Bring the VSN to the containerless state: remove the Host and REST containers; data kept.

        Example: migrator teardown
        """
        report = progress_printer()

        def action() -> dict:
            p, _ = load_plan_args(plan, secrets)
            with operation("teardown", wait, report):
                return teardown_op(p, report).to_json()

        run(json_out, action, lambda r: print(f"{r['vsn']} is containerless ({len(r['removed'])} removed); "
                                              f"data kept under {r['data_root']}"))

    @app.command()
    def status(plan: Path = PlanArg, secrets: Path = SecretsOpt, json_out: bool = JsonOpt) -> None:
        """Show each container of the stack, its state and the expected one.

        Example: migrator status --json
        """

        def action() -> dict:
            p, _ = load_plan_args(plan, secrets)
            return status_op(p).to_json()

        def human(r: dict) -> None:
            print(f"stack {r['vsn']}: {r['state']} (stack state {r.get('stack_state') or 'absent'})")
            for c in r["containers"]:
                mark = "ok " if container_ok(c) else "   "
                print(f"  {mark}{c['role']:8} {c['name']:24} {c['state']:10} (expected {c['expected']}) {c['image']}")
            if r.get("last_snapshot"):
                print(f"last snapshot: {r['last_snapshot']['snapshot_id']} -> {', '.join(r['last_snapshot']['targets'])}")
            if r.get("last_drill"):
                d = r["last_drill"]
                print(f"last drill: {'passed' if d['ok'] else 'FAILED'} ({d.get('snapshot_id')})")
            if r.get("moved_to"):
                print(f"moved to {r['moved_to']['to']}")

        run(json_out, action, human)

    @app.command()
    def upgrade(service: str = typer.Argument(..., help="Service to replace."),
                image: str = typer.Option(..., "--image", help="New image for the service."),
                plan: Path = typer.Option(None, "--plan", help="Plan (default: the deployed one)."),
                secrets: Path = SecretsOpt, wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Replace one service container with a new image (hotfix); others and data untouched.

        The old container is kept aside until the new one is healthy, and comes back on failure.

        Example: migrator upgrade web --image registry.example/web:1.2.4
        """
        report = progress_printer()

        def action() -> dict:
            p, s = load_plan_args(plan, secrets)
            with operation("upgrade", wait, report):
                return upgrade_op(p, s, service, image, report).to_json()

        run(json_out, action, lambda r: print(f"{r['service']} now runs {r['image']} ({r['health']})"))

    @app.command()
    def recover(wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Finish or undo what a killed run left behind (journal): restart services, roll back deploys.

        Example: migrator recover
        """
        report = progress_printer()

        def action() -> dict:
            with operation("recover", wait, report, auto_recover=False):
                return recover_op.recover(report).to_json()

        def human(r: dict) -> None:
            if not r["actions"]:
                print("nothing to recover")
            for a in r["actions"]:
                print(a)

        run(json_out, action, human)
