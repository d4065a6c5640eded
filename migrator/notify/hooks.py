"""What happens after every command: history row, metrics textfile, failure (and recovery) mail.

All of it is bookkeeping: it never changes a command's outcome. A part that fails (a full disk, an SMTP
server down) comes back as a warning line for the CLI to print."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from migrator.errors import MigratorError
from migrator.notify import metrics
from migrator.plan import load_secrets
from migrator.state import deployed, history, registry, stackstate
from migrator.state.files import read_json, write_json

# Read-only queries are not operations: they stay out of the history (health is recorded when its
# outcome changes; see `_health_changed`).
NOT_RECORDED = {"validate", "check", "status", "snapshots", "log", "cron show"}
# Metrics are kept for recorded operations plus these (health status, snapshot counts).
EXTRA_METRICS = {"health", "snapshots"}
# Failures of these mail the plan's health.notify address (health --notify mails by itself).
NOTIFY_VERBS = {"backup", "drill", "prune", "move", "os-update"}


def _secret_values(path: str | None) -> list[str]:
    try:
        values = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return []
    return [v for v in values.values() if isinstance(v, str)] if isinstance(values, dict) else []


class Around:
    """Created when a command starts (`verb` as typed: "backup", "cron install"); `finish` once when it ends,
    called from cli/output.run with the exit code and the result or error."""

    def __init__(self, verb: str | None) -> None:
        self.verb = verb
        self.started = time.time()
        self.t0 = time.monotonic()

    def finish(self, code: int, result: dict | None = None, error: BaseException | None = None) -> list[str]:
        if self.verb is None or (self.verb in NOT_RECORDED and self.verb not in EXTRA_METRICS):
            return []  # not run by the CLI (a direct call in a test), or a read-only query
        ended, duration = time.time(), time.monotonic() - self.t0
        message = (error.message if isinstance(error, MigratorError) else f"{type(error).__name__}: {error}"
                   if error is not None else None)
        warnings: list[str] = []
        plan_raw, secrets_path = None, None
        try:
            plan_raw, secrets_path = deployed.remembered()
        except (OSError, ValueError) as exc:
            warnings.append(f"could not read the remembered plan: {exc}")
        top = self.verb.split()[0]

        def attempt(what: str, fn) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not change the command's outcome
                warnings.append(f"could not {what}: {getattr(exc, 'message', None) or exc}")

        # A dry run did nothing: it must neither look like a fresh success nor end a failure mail episode.
        acted = not (result or {}).get("dry_run")
        if self.verb not in NOT_RECORDED:
            attempt("record the operation history",
                    lambda: self._record(code, result, message, ended, secrets_path))
        if acted:
            attempt("write the metrics file", lambda: metrics.update(
                self.verb, ended, duration, code, result, stackstate.current(), plan_raw))
        if top in NOTIFY_VERBS and code != 130 and acted:
            attempt("send the failure mail", lambda: self._notify(top, code, message, plan_raw, secrets_path,
                                                                  warnings))
        return warnings

    def _record(self, code: int, result: dict | None, message: str | None, ended: float,
                secrets_path: str | None) -> None:
        result = result or {}
        if self.verb == "health":
            if "checks" in result:
                message = "healthy" if result["healthy"] else "unhealthy: " + "; ".join(result["failures"])
            if not _health_changed(result, message):
                return
        downtime = result.get("downtime") if isinstance(result.get("downtime"), dict) else None
        nbytes = metrics.bytes_of(result)
        history.record(history.Entry(
            verb=self.verb, started=self.started, ended=ended,
            result="ok" if code == 0 else "interrupted" if code == 130 else "failed", exit_code=code,
            args=history.redact_args(sys.argv[1:], _secret_values(secrets_path)),
            snapshot_id=result.get("snapshot_id"), downtime=downtime, bytes=nbytes, message=message))

    def _notify(self, source: str, code: int, message: str | None, plan_raw: dict | None,
                secrets_path: str | None, warnings: list[str]) -> None:
        notify_cfg = ((plan_raw or {}).get("health") or {}).get("notify")
        if not notify_cfg:
            return
        from migrator.notify import alerts  # with its mail code: only for plans that mail

        secrets = None
        if secrets_path and Path(secrets_path).exists():
            secrets = load_secrets(secrets_path)
        failures = {} if code == 0 else {source: f"exit {code}: {message or 'failed'}"}
        out = alerts.notify(source, failures, notify_cfg, plan_raw["vsn"]["name"], secrets, what=f"migrator {source}")
        if out["error"]:
            warnings.append(f"could not mail {notify_cfg['email']}: {out['error']}")


def _health_changed(result: dict, message: str | None) -> bool:
    """Health runs every few minutes: record a row only when the set of failing checks (or the error that
    kept it from checking) changed."""
    if "checks" in result:
        failing = sorted(c["name"] for c in result["checks"] if c.get("ok") is False)
    else:
        failing = [f"error: {message}"]
    path = registry.HEALTH_LAST.path
    previous = read_json(path)
    if previous is not None and previous.get("failing") == failing:
        return False
    write_json(path, {"failing": failing})
    return True
