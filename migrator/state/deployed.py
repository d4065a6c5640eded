"""The deployment this VSN remembers: plan copy, secrets path, when.

Lets `backup`, `status`, `move` run without arguments after `deploy`; secrets are never copied, only their path."""

from __future__ import annotations

import json
import time
from pathlib import Path

from migrator.errors import UsageError
from migrator.state import registry
from migrator.state.files import atomic_write, read_json, write_json


def record(plan_raw: dict, secrets_path: str | None) -> None:
    """A deploy here: the stack lives on this VSN (again), so a moved-out record no longer applies."""
    atomic_write(registry.PLAN.path, json.dumps(plan_raw, indent=2, sort_keys=True).encode() + b"\n")
    write_json(registry.DEPLOYMENT.path, {
        "plan": str(registry.PLAN.path),
        "secrets": str(Path(secrets_path).resolve()) if secrets_path else None,
        "deployed_at": time.time(),
    })
    (registry.MOVED_OUT.path).unlink(missing_ok=True)


def forget() -> None:
    """Containerless again: keep the plan copy (for redeploy) but mark it not deployed."""
    info = read_json(registry.DEPLOYMENT.path)
    if info is not None:
        info["deployed_at"] = None
        write_json(registry.DEPLOYMENT.path, info)


def current() -> dict | None:
    return read_json(registry.DEPLOYMENT.path)


def remembered(*, deployed_only: bool = False) -> tuple[dict | None, str | None]:
    """The remembered plan copy as raw JSON (not re-validated: for bookkeeping) and the secrets path. The
    plan is None when there is none or it is not a JSON object, and with `deployed_only` also once the
    stack was torn down or archived. A plan copy that is not JSON raises ValueError."""
    info = current() or {}
    plan = Path(info["plan"]) if info.get("plan") and (info.get("deployed_at") or not deployed_only) else None
    raw = read_json(plan) if plan is not None and plan.exists() else None
    return (raw if isinstance(raw, dict) else None), info.get("secrets")


def plan_and_secrets_paths(plan: str | None, secrets: str | None) -> tuple[str, str | None]:
    """Explicit arguments win; otherwise the remembered ones."""
    if plan:
        return plan, secrets
    info = current()
    if not info or not Path(info["plan"]).exists():
        raise UsageError("no plan given and none remembered on this VSN",
                         hint="pass PLAN (and --secrets FILE), or deploy first")
    return info["plan"], secrets if secrets else info.get("secrets")


def moved_away() -> dict | None:
    """Where the stack went, when it was moved off this VSN and not deployed here since."""
    moved = read_json(registry.MOVED_OUT.path)
    info = current() or {}
    return moved if moved and not info.get("deployed_at") else None
