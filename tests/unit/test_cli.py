"""CLI contract: every command has --help with an example; exit codes per error class; --json shape."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from migrator import errors
from migrator.cli.app import COMMAND_MODULES, app, module_commands

runner = CliRunner()
# Plain commands (not groups such as `cron`), each from the module that defines it.
COMMANDS = sorted(name for name, module in COMMAND_MODULES.items()
                  if not hasattr(module_commands(module)[name], "commands"))


def test_commands_are_registered():
    assert {"validate", "check", "deploy", "teardown", "status", "upgrade", "recover", "backup", "snapshots",
            "verify", "prune", "restore", "drill", "move", "health", "log"} <= set(COMMANDS)


def test_command_map_names_exactly_what_each_module_registers():
    """cli/app.py imports only the invoked command's module: its map must match the modules' register()."""
    for module in set(COMMAND_MODULES.values()):
        assert set(module_commands(module)) == {n for n, m in COMMAND_MODULES.items() if m == module}, module


def test_a_command_run_imports_only_its_own_module():
    """`migrator backup` must not pay for importing the move, OS-update or agent code (or jsonschema,
    when the plan's schema verdict is known)."""
    import subprocess
    import sys

    code = ("import sys; from migrator.cli import app; app.module_commands('snapshot_cmds'); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('migrator.cli.', 'jsonschema')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "migrator.cli.snapshot_cmds" in loaded
    assert not {"migrator.cli.move_cmds", "migrator.cli.update_cmds", "migrator.cli.agent_cmds",
                "migrator.cli.ops_cmds", "migrator.cli.stack_cmds", "jsonschema"} & set(loaded)


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


def test_reading_commands_do_not_need_a_writable_store(tmp_path, monkeypatch):
    """snapshots/verify/restore/drill only read: a store that refuses the write probe (read-only drill
    credentials) still serves them; prune writes, so it is still probed."""
    from migrator.errors import Unreachable
    from migrator.storage.local import LocalStore

    def refuse(self):
        raise Unreachable(f"store {self.url} is not writable: read-only")

    monkeypatch.setattr(LocalStore, "check", refuse)
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    store = tmp_path / "store"
    store.mkdir()
    listed = runner.invoke(app, ["snapshots", "--from", f"file://{store}", "--vsn", "demo", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout)["snapshots"] == []
    pruned = runner.invoke(app, ["prune", "--keep-last", "1", "--from", f"file://{store}", "--vsn", "demo", "--json"])
    assert pruned.exit_code == 8 and "not writable" in json.loads(pruned.stdout)["message"]


def test_check_json(tmp_path, monkeypatch):
    """`migrator check --json`: every check and the count of failed ones; a failed one exits 4."""
    from migrator.ops import check

    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    results = [check.CheckResult("command tar", True, "/usr/bin/tar"), check.CheckResult("root", True, "running as root")]
    monkeypatch.setattr(check, "run", lambda plan: results)
    out = runner.invoke(app, ["check", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"ok": True, "failed": 0, "checks": [
        {"name": "command tar", "ok": True, "detail": "/usr/bin/tar"},
        {"name": "root", "ok": True, "detail": "running as root"}]}
    results.append(check.CheckResult("free space", False, "1 KiB free"))
    bad = runner.invoke(app, ["check", "--json"])
    assert bad.exit_code == 4 and json.loads(bad.stdout)["details"] == ["free space: 1 KiB free"]
    assert check.report(None).to_json()["failed"] == 1
