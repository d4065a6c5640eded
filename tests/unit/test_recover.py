"""`migrator recover` cleans what a killed backup left in the state dir (issue 22, item 2), without
containers: a flat plan whose volume no service mounts, a backup SIGKILLed at a kill point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from migrator.cli.app import app


def _killed_backup(tmp_path: Path, env: dict) -> Path:
    (tmp_path / "data" / "vol" / "data").mkdir(parents=True)
    (tmp_path / "data" / "vol" / "data" / "f").write_text("payload")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "version": 1,
        "vsn": {"name": "rec", "engine": "podman", "data_root": str(tmp_path / "data"),
                "socket": f"unix://{tmp_path}/no-engine.sock"},
        "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
        "services": [], "backup": {"targets": [f"file://{tmp_path / 'store'}"]}}))
    proc = subprocess.run([sys.executable, "-m", "migrator", "backup", "--plan", str(plan)],
                          env={**env, "MIGRATOR_KILL_AT": "backup.before-manifest"}, capture_output=True)
    assert proc.returncode == -9, proc.stderr
    return tmp_path / "state" / "spool"


def test_recover_removes_the_spool_of_a_killed_backup(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    spool = _killed_backup(tmp_path, dict(os.environ))
    dead = [p.name for p in spool.iterdir()]
    assert len(dead) == 1 and any((spool / dead[0]).iterdir())  # the sealed tree state at least
    preview = spool / "preview-12345"  # a restore --dry-run's work dir: it takes no lock, so not ours
    preview.mkdir()
    result = CliRunner().invoke(app, ["recover", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [p.name for p in spool.iterdir()] == ["preview-12345"]
    assert any(dead[0] in a for a in out["actions"])
    # with the journal handled already, a spool left by an older migrator still goes
    (spool / dead[0]).mkdir()
    result = CliRunner().invoke(app, ["recover"])
    assert result.exit_code == 0 and dead[0] in result.stdout
    assert not (spool / dead[0]).exists()
