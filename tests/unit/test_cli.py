"""CLI contract: every command has --help with an example; exit codes per error class; --json shape."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from migrator import errors
from migrator.cli.app import app

runner = CliRunner()
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_commands_are_registered():
    assert {"validate", "check", "deploy", "teardown", "status", "upgrade", "recover", "backup", "snapshots",
            "verify", "prune", "restore", "drill"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Example:" in result.output and f"migrator {command}" in result.output


def test_bad_command_line_exits_2():
    assert runner.invoke(app, ["deploy"]).exit_code == 2  # missing PLAN
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(app, ["prune", "--keep-last", "-1"]).exit_code == 2


EXIT_CODES = {
    errors.MigratorError: 1, errors.UsageError: 2, errors.PlanInvalid: 3, errors.PreflightFailed: 4,
    errors.EngineUnreachable: 4, errors.LockHeld: 5, errors.IntegrityError: 6, errors.DeployFailed: 7,
    errors.Unreachable: 8,
}


@pytest.mark.parametrize("cls,code", EXIT_CODES.items(), ids=[c.__name__ for c in EXIT_CODES])
def test_error_classes_carry_their_exit_code(cls, code):
    assert cls("x").exit_code == code
    assert cls("x").to_json()["exit_code"] == code


def test_json_failure_is_one_object_with_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 2  # nothing deployed, no PLAN given
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["exit_code"] == 2 and out["hint"]


def test_snapshot_id_argument_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    store = tmp_path / "store"
    store.mkdir()
    result = runner.invoke(app, ["verify", "../../etc", "--from", f"file://{store}", "--vsn", "demo", "--json"])
    assert result.exit_code == 2
    assert "not a snapshot id" in json.loads(result.stdout)["message"]
