"""state/registry: every state file by name. The verbs (ops/) and notify/ never spell a path in the state
dir, and `cleanup` removes exactly the files that belong to the stack."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import migrator
from migrator.ops import lifecycle
from migrator.state import registry

ROOT = Path(migrator.__file__).parent


def test_no_state_file_is_spelled_in_ops_or_notify():
    spelled = []
    for path in sorted([*(ROOT / "ops").rglob("*.py"), *(ROOT / "notify").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"state_dir\(\)\s*/", line):
                spelled.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert spelled == []


def test_entries_are_named_once_and_live_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    assert len({e.name for e in registry.ENTRIES.values()}) == len(registry.ENTRIES)
    assert registry.LAST_BACKUP.path == tmp_path / "state" / "last_backup.json"
    assert registry.cron_log("backup") == tmp_path / "state" / "cron-backup.log"


def test_cleanup_forgets_the_stack_files_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    files = [e for e in registry.ENTRIES.values() if e.name.endswith((".json", ".jsonl", ".sqlite"))]
    for entry in files:
        entry.path.write_text("{}")
    lifecycle._forget_stack(SimpleNamespace(vsn=SimpleNamespace(name="vsn-x")))
    left = {e.name for e in files if e.path.exists()}
    assert {e.name for e in registry.PER_STACK} == {
        "plan.json", "deployment.json", "last_backup.json", "last_drill.json", "notify_state.json",
        "health_last.json", "cron.json"}
    assert left == {e.name for e in files} - {e.name for e in registry.PER_STACK}
    assert "history.sqlite" in left and "moved-out.json" in left
