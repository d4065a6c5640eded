"""`os-update finish` says what it did to the data (issue 22, item 9). No containers: a flat plan whose
volume no service mounts, a file:// store; the stack's teardown and redeploy are replaced by stubs, the
snapshot, fingerprint and restore are the real ones."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.ops import osupdate

runner = CliRunner()


def _flat_vsn(tmp_path, monkeypatch, health: list[str]) -> tuple:
    """A flat plan with one volume and no services; teardown and deploy stubbed (no containers here)."""
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(osupdate, "teardown", lambda plan, report: SimpleNamespace(removed=[]))
    monkeypatch.setattr(osupdate, "deploy", lambda plan, secrets, report: SimpleNamespace(health=health))
    tree = tmp_path / "data" / "vol" / "data"
    tree.mkdir(parents=True)
    (tree / "db").write_text("before the update")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "version": 1, "vsn": {"name": "upd", "engine": "podman", "data_root": str(tmp_path / "data")},
        "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
        "services": [], "backup": {"targets": [f"file://{tmp_path / 'store'}"]}}))
    return tree, plan


@pytest.fixture()
def prepared(tmp_path, monkeypatch):
    tree, plan = _flat_vsn(tmp_path, monkeypatch, ["web"])
    result = runner.invoke(app, ["os-update", "prepare", "--plan", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    return tree, json.loads(result.stdout)["snapshot_id"]


def test_finish_says_it_restored_the_pre_update_snapshot(prepared):
    tree, snapshot_id = prepared
    (tree / "db").write_text("changed by the update")
    result = runner.invoke(app, ["os-update", "finish", "--restore-on-mismatch"])
    assert result.exit_code == 0, result.output
    assert (tree / "db").read_text() == "before the update"
    assert "data unchanged" not in result.stdout
    assert f"restored the pre-update snapshot {snapshot_id}" in result.stdout
    assert "1 difference" in result.stdout


def test_finish_on_unchanged_data_says_so(prepared):
    result = runner.invoke(app, ["os-update", "finish", "--restore-on-mismatch"])
    assert result.exit_code == 0, result.output
    assert "data unchanged" in result.stdout and "restored" not in result.stdout


def test_run_says_it_restored_when_the_update_changed_the_data(tmp_path, monkeypatch):
    tree, plan = _flat_vsn(tmp_path, monkeypatch, [])
    result = runner.invoke(app, ["os-update", "run", "--plan", str(plan), "--restore-on-mismatch",
                                 "--command", f"echo clobbered > {tree / 'db'}"])
    assert result.exit_code == 0, result.output
    assert "restored the pre-update snapshot" in result.stdout and "data unchanged" not in result.stdout
    assert (tree / "db").read_text() == "before the update"
    failed = runner.invoke(app, ["os-update", "run", "--plan", str(plan), "--restore-on-mismatch",
                                 "--command", f"echo again > {tree / 'db'}; exit 3"])
    assert failed.exit_code == 1 and "data restored from the pre-update snapshot" in failed.output
