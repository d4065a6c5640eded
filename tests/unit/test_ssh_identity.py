"""`backup.ssh.identity_file` (issue 22, item 11): the plan names the key an ssh:// store connects with,
so a cron job (no agent, no ~/.ssh/config) reaches the store. The lab test that connects with it is
tests/integration/test_stores.py::test_ssh_identity_file_from_the_plan_without_agent_or_config."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from migrator.cli.app import app
from migrator.errors import Unreachable
from migrator.storage import open_stores


def _validate(tmp_path, good, secrets_file, identity) -> dict:
    good["backup"]["ssh"] = {"identity_file": identity}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(good))
    result = CliRunner().invoke(app, ["validate", str(plan), "--secrets", str(secrets_file), "--json"])
    return {"exit_code": result.exit_code, **json.loads(result.stdout)}


def test_identity_file_is_a_plan_field_and_must_be_absolute(tmp_path, good, secrets_file):
    assert _validate(tmp_path, good, secrets_file, "/root/.ssh/backup_ed25519")["exit_code"] == 0
    refused = _validate(tmp_path, good, secrets_file, "backup_ed25519")
    assert refused["exit_code"] == 3 and any(d.startswith("backup.ssh.identity_file") for d in refused["details"])


def test_the_ssh_store_connects_with_the_plans_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config
    key = tmp_path / "backup_ed25519"
    key.write_text("not read here")
    store, = open_stores(["ssh://backup@store.example/srv/backups"], {"ssh": {"identity_file": str(key)}},
                         writable=False)
    assert store.resolve()["key_filename"] == [str(key)]
    missing, = open_stores(["ssh://backup@store.example/srv/backups"],
                           {"ssh": {"identity_file": str(tmp_path / "gone")}}, writable=False)
    with pytest.raises(Unreachable, match="backup.ssh.identity_file") as info:
        missing.check()  # refused before any connection: the name of the plan field, not a paramiko error
    assert str(tmp_path / "gone") in info.value.message
