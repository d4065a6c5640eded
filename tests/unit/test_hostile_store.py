"""A store written by someone else (issue 21, items 3, 5-8), on a file store without containers: damaged
manifests are listed as damaged and leave every other snapshot listable, restorable and prunable; an
object that decompresses beyond its manifest's count, or a plan copy that does not match the manifest's
plan_sha256, is refused with exit 6 and nothing is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.catalog.manifest import Manifest
from migrator.cli.app import app
from migrator.errors import IntegrityError
from migrator.ops import backup as backup_ops
from migrator.plan.model import Plan

VSN = "hostile"
runner = CliRunner()


def _plan(root: Path) -> Plan:
    return Plan.from_json({
        "version": 1, "vsn": {"name": VSN, "engine": "podman", "data_root": str(root / "data")},
        "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
        "services": [], "backup": {"targets": [f"file://{root / 'store'}"]}})


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    tree = tmp_path / "data" / "vol" / "data"
    tree.mkdir(parents=True)
    (tree / "a").write_bytes(b"a" * 5000)
    return tmp_path


def _backup(root: Path, full: bool = True) -> str:
    (root / "data" / "vol" / "data" / f"f{len(list((root / 'store').glob('*/*')))}").write_text("x")
    return backup_ops.backup(_plan(root), None, [], full=full).snapshot_id


def _cli(root: Path, *args: str) -> tuple[int, dict | None, str]:
    result = runner.invoke(app, [*args, "--from", f"file://{root / 'store'}", "--vsn", VSN, "--json"])
    try:
        out = json.loads(result.stdout)
    except ValueError:
        out = None
    return result.exit_code, out, result.output


def _human(root: Path, *args: str):
    return runner.invoke(app, [*args, "--from", f"file://{root / 'store'}", "--vsn", VSN])


def _manifest(root: Path, sid: str) -> Path:
    return root / "store" / VSN / sid / "manifest.json"


DEEP = "[" * 100_000 + "]" * 100_000
DAMAGE = {
    "nested deep": lambda text: text.replace('"tags": []', f'"tags": {DEEP}'),
    "5000 digits": lambda text: re.sub(r'"created": [^,]+,', '"created": ' + "9" * 5000 + ",", text),
    "created NaN": lambda text: re.sub(r'"created": [^,]+,', '"created": NaN,', text),
    "created Infinity": lambda text: re.sub(r'"created": [^,]+,', '"created": Infinity,', text),
    "created 1e300": lambda text: re.sub(r'"created": [^,]+,', '"created": 1e300,', text),
    "duplicate key": lambda text: text.replace('"hostname":', '"vsn": "other", "hostname":'),
}


# -- 3 and 5: manifests are strict JSON --------------------------------------------------------------------

@pytest.mark.parametrize("label", DAMAGE)
def test_manifest_parse_refuses_with_integrity_error(lab, label):
    sid = _backup(lab)
    text = _manifest(lab, sid).read_text()
    damaged = DAMAGE[label](text)
    assert damaged != text
    Manifest.parse(text.encode(), "m")
    with pytest.raises(IntegrityError) as info:
        Manifest.parse(damaged.encode(), "m")
    if label == "duplicate key":
        assert "vsn: duplicate key" in info.value.message
    if label == "created NaN":
        assert "created: NaN" in info.value.message


# -- 6: one bad manifest does not break the store ------------------------------------------------------------

@pytest.mark.parametrize("label", DAMAGE)
def test_a_damaged_manifest_leaves_the_others_listable_restorable_prunable(lab, label):
    first, bad, last = _backup(lab), _backup(lab), _backup(lab)
    path = _manifest(lab, bad)
    path.write_text(DAMAGE[label](path.read_text()))

    code, out, output = _cli(lab, "snapshots")
    assert code == 0, output
    assert [r["id"] for r in out["snapshots"]] == [first, last]
    assert [d["id"] for d in out["damaged"]] == [bad] and out["damaged"][0]["why"]
    assert out["uncommitted"] == 0

    human = _human(lab, "snapshots")
    assert human.exit_code == 0 and "Traceback" not in human.output, human.output
    assert bad in human.output and "damaged" in human.output.lower()

    code, out, output = _cli(lab, "prune", "--keep-last", "1", "--dry-run")
    assert code == 0, output
    assert list(out["keep"]) == [last] and out["remove"] == [first]
    assert bad not in out["debris_removed"] and [d["id"] for d in out["damaged"]] == [bad]
    human = _human(lab, "prune", "--keep-last", "1", "--dry-run")
    assert human.exit_code == 0 and bad in human.output, human.output

    for sid in (first, last, "latest"):
        code, out, output = _cli(lab, "verify", sid, "--read-data")
        assert code == 0, output
    code, out, output = _cli(lab, "verify", bad)
    assert code == 6 and "Traceback" not in output, output
    code, out, output = _cli(lab, "verify", "all")
    assert code == 6 and bad in out["message"] + " ".join(out["details"]), output

    code, out, output = _cli(lab, "restore", first, "--into", str(lab / "restored"))
    assert code == 0, output
    assert (lab / "restored" / "vol" / "data" / "a").read_bytes() == b"a" * 5000
    code, out, output = _cli(lab, "restore", bad, "--into", str(lab / "restored-bad"))
    assert code == 6 and not (lab / "restored-bad").exists(), output

    code, out, output = _cli(lab, "prune", "--keep-last", "1")
    assert code == 0, output
    assert not (lab / "store" / VSN / first).exists()
    assert path.exists(), "prune leaves a damaged snapshot in place for a human to look at"


def test_a_damaged_parent_fails_its_children_with_exit_6(lab):
    parent = _backup(lab)
    child = _backup(lab, full=False)
    path = _manifest(lab, parent)
    path.write_text(DAMAGE["created NaN"](path.read_text()))
    code, out, output = _cli(lab, "snapshots")
    assert code == 0, output
    assert out["snapshots"][0]["id"] == child and out["snapshots"][0]["restore_size"] is None
    human = _human(lab, "snapshots")
    assert human.exit_code == 0 and "BROKEN" in human.output, human.output
    code, out, output = _cli(lab, "restore", child, "--into", str(lab / "restored"))
    assert code == 6 and "Traceback" not in output, output
    assert not (lab / "restored").exists()
    code, out, output = _cli(lab, "verify", child)
    assert code == 6, output
    code, out, output = _cli(lab, "prune", "--keep-last", "1", "--dry-run")
    assert code == 0 and list(out["keep"]) == [child], output


# -- 7: an object may not decompress to one byte more than its manifest says ----------------------------------

def test_an_object_expanding_beyond_its_manifest_count_by_one_byte_is_refused(lab):
    sid = _backup(lab)
    code, out, output = _cli(lab, "restore", sid, "--into", str(lab / "exact"))
    assert code == 0, output  # `uncompressed` counts the tar stream exactly as written, padding included
    path = _manifest(lab, sid)
    raw = json.loads(path.read_text())
    raw["objects"][0]["uncompressed"] -= 1
    path.write_text(json.dumps(raw))
    code, out, output = _cli(lab, "restore", sid, "--into", str(lab / "restored"))
    assert code == 6 and "expands beyond" in out["message"], output
    assert not list((lab / "restored").iterdir())


# -- 8: the plan copy must be the one the manifest names ----------------------------------------------------

def _tamper_plan_copy(root: Path, sid: str, **vsn) -> None:
    path = root / "store" / VSN / sid / "plan.json"
    raw = json.loads(path.read_text())
    raw["vsn"].update(vsn)
    path.write_text(json.dumps(raw))


def test_the_plan_copy_restores_where_no_plan_is_deployed(lab):
    sid = _backup(lab)
    live = lab / "data" / "vol" / "data"
    (live / "a").write_bytes(b"changed")
    code, out, output = _cli(lab, "restore", sid)
    assert code == 0, output
    assert (live / "a").read_bytes() == b"a" * 5000


def test_a_tampered_plan_copy_is_refused_and_nothing_is_written(lab):
    sid = _backup(lab)
    _tamper_plan_copy(lab, sid, data_root=str(lab / "elsewhere"))
    live = lab / "data" / "vol" / "data"
    (live / "a").write_bytes(b"changed")
    before = sorted(p.name for p in (lab / "data" / "vol").iterdir())
    code, out, output = _cli(lab, "restore", sid)
    assert code == 6 and "plan_sha256" in out["message"], output
    assert not (lab / "elsewhere").exists()
    assert (live / "a").read_bytes() == b"changed"
    assert sorted(p.name for p in (lab / "data" / "vol").iterdir()) == before
    assert sorted(p.name for p in (lab / "data").iterdir()) == ["vol"]
    code, out, output = _cli(lab, "restore", sid, "--dry-run")
    assert code == 6, output


# -- 2 and 3 for tree states read from a store -----------------------------------------------------------------

@pytest.mark.parametrize("row", [b"[" * 30_000 + b"]" * 30_000, b'["a", "f", NaN, 1, 1, 1, 1, 1, 1, 1, 1, null]',
                                 b'["a", "f", ' + b"9" * 5000 + b', 1, 1, 1, 1, 1, 1, 1, 1, null]'],
                         ids=["nested deep", "NaN", "5000 digits"])
def test_an_untrusted_tree_state_line_is_an_integrity_error(tmp_path, row):
    import zstandard

    from migrator.archive.treestate import BLOCK_SIZE, FORMAT, VERSION, TreeState

    header = json.dumps({"format": FORMAT, "version": VERSION, "block_size": BLOCK_SIZE, "count": 1, "blocks": 0,
                         "started_ns": 0}).encode()
    path = tmp_path / "tree.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(header + b"\n" + row + b"\n"))
    with pytest.raises(IntegrityError):
        TreeState.load(path, untrusted=True)


# -- 3 for the state dir's own files ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ['{"age": NaN}', '{"age": -Infinity}', '{"a": 1, "a": 2}'])
def test_state_files_are_read_as_strict_json(tmp_path, text):
    from migrator.state.files import read_json, write_json

    (tmp_path / "s.json").write_text(text)
    with pytest.raises(ValueError):
        read_json(tmp_path / "s.json")
    with pytest.raises(ValueError):
        write_json(tmp_path / "t.json", {"age": float("nan")})
    assert not (tmp_path / "t.json").exists()
    write_json(tmp_path / "t.json", {"age": 1.5})
    assert read_json(tmp_path / "t.json") == {"age": 1.5}
