"""Health freshness and disk checks (no containers needed), the new commands' CLI contract, the
after-command hook (history, metrics) and cleanup's confirmation."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.ops import health
from migrator.plan.model import Plan
from migrator.state import history
from tests.lab.plans import secrets_file
from tests.lab.vsn import REPO

runner = CliRunner()
DEMO = json.loads((REPO / "tests" / "lab" / "writer-plan.json").read_text())


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MIGRATOR_METRICS_FILE", raising=False)
    (tmp_path / "state").mkdir(mode=0o700)
    return tmp_path / "state"


def plan(tmp_path, **backup) -> Plan:
    raw = copy.deepcopy(DEMO)
    raw["vsn"]["data_root"] = str(tmp_path / "data")
    raw["backup"].update(backup)
    return Plan.from_json(raw)


def test_backup_age(tmp_path, state):
    p, now = plan(tmp_path, max_age_hours=26), time.time()
    assert health.backup_check(p, now).ok is False  # no backup yet
    (state / "last_backup.json").write_text(json.dumps({"snapshot_id": "s1", "time": now - 3 * 3600, "ok": True}))
    ok = health.backup_check(p, now)
    assert ok.ok and "3.0h old" in ok.detail
    (state / "last_backup.json").write_text(json.dumps({"snapshot_id": "s1", "time": now - 27 * 3600, "ok": True}))
    old = health.backup_check(p, now)
    assert old.ok is False and "limit 26h" in old.detail
    raw = copy.deepcopy(DEMO)
    raw.pop("backup")
    assert health.backup_check(Plan.from_json(raw), now) is None  # no backups planned: no heartbeat


def test_drill_result(state):
    assert health.drill_check() is None
    (state / "last_drill.json").write_text(json.dumps({"ok": False, "time": 1.0, "error": "web unhealthy"}))
    assert health.drill_check().ok is False and "web unhealthy" in health.drill_check().detail
    (state / "last_drill.json").write_text(json.dumps({"ok": True, "time": 1.0, "snapshot_id": "s"}))
    assert health.drill_check().ok


def test_disk_free(tmp_path):
    raw = copy.deepcopy(DEMO)
    raw["vsn"]["data_root"] = str(tmp_path / "not" / "yet")  # measured on the nearest existing parent
    raw["health"]["min_free"] = "1K"
    assert health.disk_check(Plan.from_json(raw)).ok
    raw["health"]["min_free"] = "999999T"
    bad = health.disk_check(Plan.from_json(raw))
    assert bad.ok is False and "need" in bad.detail


NEW_COMMANDS = [["health"], ["archive"], ["unarchive"], ["cleanup"], ["log"], ["cron"], ["cron", "install"],
                ["cron", "show"], ["cron", "remove"]]


@pytest.mark.parametrize("command", NEW_COMMANDS, ids=" ".join)
def test_new_commands_have_help_with_example_and_json(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Example:" in result.output and f"migrator {command[0]}" in result.output
    if command != ["cron"]:
        assert "--json" in result.output


def test_log_records_operations_but_not_queries(state, tmp_path):
    raw = copy.deepcopy(DEMO)
    raw["vsn"]["data_root"] = str(tmp_path / "data")
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    given = ["--plan", str(tmp_path / "plan.json"), "--secrets", str(secrets_file(tmp_path / "s.json"))]
    assert runner.invoke(app, ["validate", *given[1:]]).exit_code == 0
    res = runner.invoke(app, ["cron", "install", *given, "--file", str(tmp_path / "cron"), "--json"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["cron", "show", *given, "--file", str(tmp_path / "cron")]).exit_code == 0
    out = json.loads(runner.invoke(app, ["log", "--json"]).stdout)
    assert [e["verb"] for e in out["entries"]] == ["cron install"]  # validate, cron show, log: queries
    assert out["entries"][0]["result"] == "ok" and out["entries"][0]["exit_code"] == 0
    prom = (state / "metrics" / "migrator.prom").read_text()
    assert 'migrator_last_run_success{verb="cron install"} 1' in prom


def test_failed_operation_is_logged_with_its_exit_code(state, tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    res = runner.invoke(app, ["cron", "install", "--plan", str(tmp_path / "bad.json"), "--file", str(tmp_path / "c")])
    assert res.exit_code == 3
    (entry,) = history.entries()
    assert entry.verb == "cron install" and entry.result == "failed" and entry.exit_code == 3
    assert "invalid" in entry.message


def test_cleanup_refuses_without_confirmation(state, tmp_path):
    raw = copy.deepcopy(DEMO)
    raw["vsn"]["data_root"] = str(tmp_path / "data")
    (tmp_path / "data" / "dbdata").mkdir(parents=True)
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    secrets = str(secrets_file(tmp_path / "s.json"))
    for stdin in ("", "wrong-name\n", "DEMO\n"):
        res = runner.invoke(app, ["cleanup", str(tmp_path / "plan.json"), "--secrets", secrets, "--json"], input=stdin)
        assert res.exit_code == 2, res.output
        assert "not confirmed" in res.output
    assert (tmp_path / "data" / "dbdata").is_dir()


def test_dry_run_is_logged_but_not_a_metrics_success(state, tmp_path, monkeypatch):
    raw = copy.deepcopy(DEMO)
    raw["vsn"]["data_root"] = str(tmp_path / "data")
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    args = ["deploy", str(tmp_path / "plan.json"), "--secrets", str(secrets_file(tmp_path / "s.json")), "--dry-run",
            "--json"]
    monkeypatch.setattr("sys.argv", ["migrator", *args])  # the history records argv as typed
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (entry,) = history.entries()
    assert entry.verb == "deploy" and "--dry-run" in entry.args and entry.result == "ok"
    assert not (state / "metrics" / "migrator.prom").exists()


def test_health_result_json_and_a_mail_that_did_not_go_out():
    """`health --json` keys; a failed mail of this run replaces an earlier mail check and makes it unhealthy."""
    checks = (health.Check("disk", True, "1 GiB free"), health.Check("drill", None, "skipped"),
              health.Check("mail", False, "mail not sent (retried on the next run): backup: refused"),
              health.Check("probe:web", False, "HTTP 500", "`migrator restart web` restarts it"))
    result = health.HealthResult("demo", "Running", None, checks, 5.0)
    out = result.to_json()
    assert set(out) == {"vsn", "healthy", "stack_state", "stack_state_error", "checks", "failures", "hints", "time"}
    assert out["healthy"] is False and out["checks"][1] == {"name": "drill", "ok": None, "detail": "skipped",
                                                            "hint": None}
    assert out["failures"] == ["mail: mail not sent (retried on the next run): backup: refused", "probe:web: HTTP 500"]
    assert out["hints"] == ["probe:web: `migrator restart web` restarts it"]
    mailed = health.add_mail_failure(replace(result, notify={"sent": None, "error": "no route"}), "no route")
    out = mailed.to_json()
    assert out["notify"] == {"sent": None, "error": "no route"}
    assert out["failures"] == ["probe:web: HTTP 500", "mail: mail not sent (retried on the next run): health: no route"]
    assert [c["name"] for c in out["checks"]] == ["disk", "drill", "probe:web", "mail"]
    fine = health.HealthResult("demo", "Running", None, checks[:2], 5.0)
    assert fine.healthy and health.add_mail_failure(fine, "x").healthy is False
