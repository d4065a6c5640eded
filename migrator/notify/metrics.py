"""Prometheus metrics as a node_exporter textfile, rewritten atomically after each operation.

The values live in <state dir>/metrics/values.json (updated under an flock); the .prom file is rendered
from it whole, so a reader never sees a half-written file. Metrics and paths: docs/operations.md."""

from __future__ import annotations

import os
from pathlib import Path

from migrator.notify._store import locked_json
from migrator.state import registry
from migrator.state.files import atomic_write
from migrator.state.stackstate import STATES

PROM_NAME = "migrator.prom"


def metrics_file(plan_raw: dict | None = None) -> Path:
    env = os.environ.get("MIGRATOR_METRICS_FILE")
    if env:
        return Path(env)
    configured = ((plan_raw or {}).get("metrics") or {}).get("textfile")
    if configured:
        return Path(configured)
    return registry.METRICS.path / PROM_NAME


def _values_path() -> Path:
    return registry.METRICS.path / "values.json"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, samples: list[tuple[dict, object]]) -> None:
        samples = [(labels, v) for labels, v in samples if v is not None]
        if not samples:
            return
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            self.lines.append(f"{name}{{{label_text}}} {_num(value)}" if label_text else f"{name} {_num(value)}")


def render(values: dict) -> str:
    """The textfile for `values` (the structure `update` keeps). Gauges only: every value is a 'last'."""
    verbs = values.get("verbs", {})
    t = _Text()
    per_verb = [
        ("migrator_last_run_timestamp_seconds", "When the last run of the verb ended (unix time).", "last_run"),
        ("migrator_last_success_timestamp_seconds", "When the last successful run of the verb ended.", "last_success"),
        ("migrator_last_run_success", "1 if the last run of the verb succeeded.", "success"),
        ("migrator_last_run_exit_code", "Exit code of the last run of the verb.", "exit_code"),
        ("migrator_last_run_duration_seconds", "Duration of the last run of the verb.", "duration"),
        ("migrator_last_run_bytes", "Bytes written or read by the last run (snapshot size for backup).", "bytes"),
    ]
    for name, help_text, key in per_verb:
        t.family(name, help_text, [({"verb": verb}, v.get(key)) for verb, v in sorted(verbs.items())])
    t.family("migrator_backup_downtime_seconds", "Seconds each service was stopped by the last backup.",
             [({"service": s}, v) for s, v in sorted(values.get("downtime", {}).items())])
    t.family("migrator_snapshots", "Committed snapshots in the store when last listed or pruned.",
             [({"store": s}, v) for s, v in sorted(values.get("snapshots", {}).items())])
    health = values.get("health")
    if health:
        t.family("migrator_health_ok", "1 if the last health check found everything healthy.", [({}, health["ok"])])
        t.family("migrator_health_timestamp_seconds", "When the last health check ran.", [({}, health["time"])])
        t.family("migrator_health_check_ok", "1 if this check passed in the last health check.",
                 [({"check": c}, ok) for c, ok in sorted(health.get("checks", {}).items())])
    state = values.get("stack_state")
    t.family("migrator_stack_state", "1 for the stack's current lifecycle state (all 0: no stack).",
             [({"state": s}, int(s == state)) for s in STATES])
    return "\n".join(t.lines) + "\n"


def bytes_of(result: dict) -> int | None:
    for key in ("bytes", "size"):
        if isinstance(result.get(key), int) and not isinstance(result.get(key), bool):
            return result[key]
    return None


def apply(values: dict, verb: str, ended: float, duration: float, exit_code: int, result: dict | None,
          stack_state: str | None) -> dict:
    """Fold one finished operation into `values` (pure; `update` persists)."""
    result = result or {}
    entry = values.setdefault("verbs", {}).setdefault(verb, {})
    entry.update(last_run=ended, success=int(exit_code == 0), exit_code=exit_code, duration=round(duration, 3))
    if exit_code == 0:
        entry["last_success"] = ended
        nbytes = bytes_of(result)
        if nbytes is not None:
            entry["bytes"] = nbytes
    if verb == "backup" and exit_code == 0 and isinstance(result.get("downtime"), dict):
        values["downtime"] = {s: float(v) for s, v in result["downtime"].items()}
        for url in result.get("targets", []):
            if url in values.get("snapshots", {}):
                values["snapshots"][url] += 1
    for listed in result.get("stores", [result]):  # snapshots and prune: one result per store
        if verb == "snapshots" and exit_code == 0 and "store" in listed:
            values.setdefault("snapshots", {})[listed["store"]] = len(listed.get("snapshots", []))
        if verb == "prune" and exit_code == 0 and "store" in listed and not result.get("dry_run"):
            values.setdefault("snapshots", {})[listed["store"]] = len(listed.get("keep", {}))
    if verb == "health" and "checks" in result:
        values["health"] = {"time": ended, "ok": int(bool(result.get("healthy"))),
                            "checks": {c["name"]: int(c["ok"]) for c in result["checks"] if c.get("ok") is not None}}
    values["stack_state"] = stack_state
    return values


def update(verb: str, ended: float, duration: float, exit_code: int, result: dict | None,
           stack_state: str | None, plan_raw: dict | None = None) -> Path:
    """Record one operation and rewrite the textfile atomically. Returns the textfile's path."""
    target = metrics_file(plan_raw)
    with locked_json(_values_path(), {}) as values:
        apply(values, verb, ended, duration, exit_code, result, stack_state)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written under the lock, so a slower writer cannot replace a newer rendering with an older one.
        # 0644: node_exporter runs as its own user and must read the file in its textfile directory.
        atomic_write(target, render(values).encode(), mode=0o644)
    return target
