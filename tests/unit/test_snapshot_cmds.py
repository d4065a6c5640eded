"""`snapshots`, `verify` and `prune` without --from, on a plan with two targets (issue 22, item 6): they
say which store they read, `snapshots` lists each target, `prune` acts on every target (or on `--to`).
No containers: a flat plan whose volume no service mounts, file:// stores in tmp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.ops import backup as backup_ops
from migrator.plan.model import Plan
from migrator.state import deployed

runner = CliRunner()


@pytest.fixture()
def two_stores(tmp_path, monkeypatch) -> tuple[Plan, str, str]:
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    tree = tmp_path / "data" / "vol" / "data"
    tree.mkdir(parents=True)
    (tree / "f").write_text("payload")
    first, second = f"file://{tmp_path / 'a'}", f"file://{tmp_path / 'b'}"
    plan = Plan.from_json({
        "version": 1, "vsn": {"name": "two", "engine": "podman", "data_root": str(tmp_path / "data")},
        "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
        "services": [], "backup": {"targets": [first, second]}})
    deployed.record(plan.raw, None)
    return plan, first, second


def _backup(plan: Plan, targets: list[str] | None = None) -> str:
    return backup_ops.backup(plan, targets, [], full=True).snapshot_id


def _json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _human(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_snapshots_lists_every_target_and_names_each_store(two_stores):
    plan, first, second = two_stores
    both = _backup(plan)
    only_first = _backup(plan, [first])
    out = _json("snapshots")
    # the first target stays at the top level, as before; every target is in "stores"
    assert out["store"] == first and [r["id"] for r in out["snapshots"]] == [both, only_first]
    assert [(s["store"], [r["id"] for r in s["snapshots"]]) for s in out["stores"]] == [
        (first, [both, only_first]), (second, [both])]
    text = _human("snapshots")
    assert first in text and second in text
    assert text.index(first) < text.index(only_first) < text.index(second)
    one = _json("snapshots", "--from", second)
    assert [s["store"] for s in one["stores"]] == [second] and one["store"] == second
    assert second in _human("snapshots", "--from", second)


def test_verify_says_which_store_it_read(two_stores):
    plan, first, second = two_stores
    _backup(plan)
    out = _json("verify")
    assert out["store"] == first and out["not_verified"] == [second]
    text = _human("verify")
    assert first in text and second in text  # the target it did not read is named too
    assert _json("verify", "--from", second)["not_verified"] == []
    assert second in _human("verify", "--from", second)


def test_prune_acts_on_every_target_or_on_to(two_stores):
    plan, first, second = two_stores
    ids = [_backup(plan) for _ in range(3)]
    dry = _json("prune", "--keep-last", "2", "--dry-run")
    assert [(s["store"], s["remove"]) for s in dry["stores"]] == [(first, [ids[0]]), (second, [ids[0]])]
    text = _human("prune", "--keep-last", "2")
    assert first in text and second in text
    from migrator.state.paths import state_dir

    metrics = (state_dir() / "metrics" / "migrator.prom").read_text()  # the count of every store pruned
    assert f'migrator_snapshots{{store="{first}"}} 2\n' in metrics
    assert f'migrator_snapshots{{store="{second}"}} 2\n' in metrics
    assert [r["id"] for r in _json("snapshots", "--from", second)["snapshots"]] == ids[1:]
    assert [r["id"] for r in _json("snapshots", "--from", first)["snapshots"]] == ids[1:]
    out = _json("prune", "--keep-last", "1", "--to", second)
    assert [s["store"] for s in out["stores"]] == [second] and out["remove"] == [ids[1]]
    assert len(_json("snapshots", "--from", first)["snapshots"]) == 2
    out = _json("prune", "--keep-last", "1", "--to", first, "--to", second)
    assert [(s["store"], s["remove"]) for s in out["stores"]] == [(first, [ids[1]]), (second, [])]
    refused = runner.invoke(app, ["prune", "--keep-last", "1", "--from", first, "--to", second])
    assert refused.exit_code == 2


def test_prune_without_targets_needs_a_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    result = runner.invoke(app, ["prune", "--keep-last", "1", "--vsn", "x"])
    assert result.exit_code == 2 and "--to" in result.output
    assert Path(tmp_path / "state").exists()
