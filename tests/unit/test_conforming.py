"""The remembered schema verdicts (state/conforming.py): an unchanged plan skips the schema validator, any
change to its bytes is validated again, the special checks (data dirs on disk) always run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from migrator.errors import PlanInvalid
from migrator.plan import load, validate_files
from migrator.state.conforming import FILE, KEEP, ConformingDocs


@pytest.fixture()
def plan_file(tmp_path, good) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(good))
    return path


@pytest.fixture()
def schema_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = load.schema_problems

    def counting(name, doc):
        calls.append(name)
        return real(name, doc)

    monkeypatch.setattr(load, "schema_problems", counting)
    return calls


def test_second_load_of_an_unchanged_plan_skips_the_schema(tmp_path, plan_file, secrets_file, schema_calls):
    first = validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    assert schema_calls == ["plan", "secrets"]
    second = validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))  # a new process
    assert schema_calls == ["plan", "secrets"]
    assert second[0] == first[0] and second[1].values == first[1].values


def test_a_changed_plan_is_validated_again(tmp_path, plan_file, secrets_file, schema_calls):
    validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    raw = json.loads(plan_file.read_text())
    raw["volumes"][0]["name"] = "Not A Name!"
    plan_file.write_text(json.dumps(raw))
    with pytest.raises(PlanInvalid) as info:
        validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    assert schema_calls == ["plan", "secrets", "plan"]  # the unchanged secrets file is remembered
    assert any(d.startswith("volumes[0].name") for d in info.value.details)


def test_an_invalid_plan_is_never_remembered(tmp_path, plan_file, schema_calls):
    plan_file.write_text(json.dumps({"version": 1}))
    for _ in range(2):
        with pytest.raises(PlanInvalid):
            validate_files(plan_file, conforming=ConformingDocs(tmp_path))
    assert schema_calls == ["plan", "plan"]
    assert not (tmp_path / FILE).exists()


def test_special_checks_still_run_for_a_remembered_plan(tmp_path, plan_file, secrets_file):
    validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    raw = json.loads(plan_file.read_text())
    data_root = Path(raw["vsn"]["data_root"])
    data_root.mkdir()
    (data_root / raw["volumes"][0]["name"]).symlink_to("/etc")  # a data dir pointing out of the data root
    with pytest.raises(PlanInvalid) as info:
        validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    assert any("is a symlink" in d for d in info.value.details)


def test_a_damaged_memo_file_only_costs_a_validation(tmp_path, plan_file, secrets_file, schema_calls):
    (tmp_path / FILE).write_text("{not json")
    validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    (tmp_path / FILE).write_text(json.dumps({"keys": 1}))
    validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    assert schema_calls == ["plan", "secrets", "plan", "secrets"]


def test_the_memo_keeps_the_newest_keys(tmp_path):
    docs = ConformingDocs(tmp_path)
    for i in range(KEEP + 5):
        docs.add(b"schema", b"doc %d" % i)
    again = ConformingDocs(tmp_path)
    assert again.knows(b"schema", b"doc %d" % (KEEP + 4)) and not again.knows(b"schema", b"doc 0")
    assert not again.knows(b"other schema", b"doc %d" % (KEEP + 4))
    assert len(json.loads((tmp_path / FILE).read_text())) == KEEP


def test_a_verdict_of_older_validator_rules_is_validated_again(tmp_path, plan_file, secrets_file, schema_calls,
                                                               monkeypatch):
    from migrator.state import conforming

    validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    monkeypatch.setattr(conforming, "RULES", conforming.RULES + 1)  # what a migrator with new rules reads
    validate_files(plan_file, secrets_file, conforming=ConformingDocs(tmp_path))
    assert schema_calls == ["plan", "secrets", "plan", "secrets"]


def test_a_snapshot_plan_copy_is_validated_once_and_never_trusted_when_changed(tmp_path, good, schema_calls):
    """restore reads the plan copy a snapshot carries (untrusted); the same bytes again skip the schema."""
    from migrator.catalog.manifest import PLAN_COPY, Manifest
    from migrator.catalog.snapshot import Snapshot
    from migrator.ops.restore import snapshot_plan
    from migrator.storage import get_store

    store_dir = tmp_path / "store"
    copy = store_dir / "demo" / "snap-1" / PLAN_COPY
    copy.parent.mkdir(parents=True)
    copy.write_text(json.dumps(good))
    manifest = Manifest(snapshot_id="snap-1", vsn="demo", created=0.0, hostname="h", migrator_version="0",
                        plan_sha256=hashlib.sha256(copy.read_bytes()).hexdigest(), tags=[], volumes={})
    store = get_store(f"file://{store_dir}")
    snap = Snapshot(store, "demo", "snap-1", manifest)
    first = snapshot_plan(snap, ConformingDocs(tmp_path))
    assert snapshot_plan(snap, ConformingDocs(tmp_path)) == first  # a new process
    assert schema_calls == ["plan"]
    good["volumes"][0]["name"] = "Not A Name!"
    copy.write_text(json.dumps(good))
    manifest.plan_sha256 = hashlib.sha256(copy.read_bytes()).hexdigest()  # a manifest that vouches for it
    with pytest.raises(PlanInvalid):
        snapshot_plan(snap, ConformingDocs(tmp_path))
    assert schema_calls == ["plan", "plan"]
