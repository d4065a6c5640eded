"""`migrator status` on a stack without containers, and a closed stdout (issue 22, item 7): an archived
or moved-away stack expects its containers absent, a missing Host means its REST containers are missing
(not "unknown"), and a reader that stops early (`status | head -1`) is not an error. The engine is a
fake with no containers; the real one runs in tests/integration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.stack import topology as stack_mod
from migrator.state import deployed, stackstate

runner = CliRunner()


class NoContainers:
    """An engine that answers and holds nothing."""

    def get(self, name):
        return None

    def list(self, labels):
        return []


@pytest.fixture()
def archived(tmp_path, monkeypatch, good, secrets_file):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(stack_mod, "outer_engine", lambda plan: NoContainers())
    deployed.record(good, str(secrets_file))
    stackstate.transition(stackstate.DELETE_PENDING, "archive")
    stackstate.transition(stackstate.ARCHIVED, "archive")
    return good


def test_archived_stack_expects_its_containers_absent(archived):
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["state"] == "containerless" and out["stack_state"] == "Archived"
    rows = {c["name"]: (c["state"], c["expected"]) for c in out["containers"]}
    assert len(rows) > 3 and set(rows.values()) == {("missing", "not running"), ("missing", "absent")}, rows
    assert rows["admin"] == ("missing", "absent")  # disabled in the demo plan: absent in any case
    text = runner.invoke(app, ["status"]).stdout
    assert "unknown" not in text and "expected running" not in text


class StoppedContainers(NoContainers):
    """What `move --keep-source` leaves: every container there, stopped (flat plan: no Host)."""

    def __init__(self, names):
        self.names = names

    def list(self, labels):
        from migrator.engine.base import ContainerInfo

        return [ContainerInfo(name=n, image="img", state="exited", labels=labels) for n in self.names]


def test_a_source_kept_stopped_by_move_is_moved_away_not_degraded(archived, monkeypatch, secrets_file):
    from migrator.state.files import write_json
    from migrator.state.paths import state_dir

    del archived["host"]
    deployed.record(archived, str(secrets_file))
    deployed.forget()
    write_json(state_dir() / "moved-out.json", {"to": "root@vsn2", "at": 1.0})
    names = [v["name"] for v in archived["volumes"]] + [s["name"] for s in archived["services"]
                                                        if s.get("enabled", True)]
    monkeypatch.setattr(stack_mod, "outer_engine", lambda plan: StoppedContainers(names))
    result = runner.invoke(app, ["status", "--json"])
    out = json.loads(result.stdout)
    assert out.get("state") == "moved-away", result.output
    assert out["moved_to"]["to"] == "root@vsn2"
    assert {c["expected"] for c in out["containers"]} == {"not running", "absent"}  # admin: disabled


def test_a_missing_host_means_missing_containers_not_unknown(archived):
    stackstate.transition(stackstate.CREATE_PENDING, "deploy")
    stackstate.transition(stackstate.FAILURE, "deploy")  # meant to run, but nothing is there
    out = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    services = [c for c in out["containers"] if c["role"] == "service"]
    assert services and all(c["state"] == "missing" for c in services)
    assert {c["expected"] for c in services} == {"running", "absent"}  # the demo's admin is disabled


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["human", "json"])
def test_a_closed_stdout_is_not_an_error(tmp_path, good, secrets_file, args):
    """`migrator … | head -1` where head has exited before migrator writes: exit 0, nothing on stderr."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(good))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "migrator", "validate", str(plan), "--secrets",
                               str(secrets_file), *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MIGRATOR_STATE_DIR": str(tmp_path / "state")})
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")
