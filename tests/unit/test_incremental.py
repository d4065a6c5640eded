"""Incremental snapshots end to end on a file store, without containers: a flat plan whose volumes no
service mounts (nothing to stop), driven through the real backup, restore, verify and prune code with
real GNU tar, zstd and age. The lab tests (tests/integration/test_incremental.py) add podman, move,
os-update, S3, SSH and kill points."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.catalog.listing import list_snapshots, open_snapshot
from migrator.catalog.manifest import new_snapshot_id
from migrator.catalog.retention import Policy
from migrator.errors import IntegrityError
from migrator.ops import backup as backup_ops
from migrator.ops import snapshots as snap_ops
from migrator.ops.restore import restore
from migrator.plan.model import Plan
from migrator.state import chainrecord
from migrator.storage import get_store
from tests.unit.test_archive import fingerprint

MIB = 1024 * 1024
VSN = "inc"


def _plan(root: Path, **backup) -> Plan:
    return Plan.from_json({
        "version": 1, "vsn": {"name": VSN, "engine": "podman", "data_root": str(root / "data")},
        "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
        "services": [], "backup": {"targets": [f"file://{root / 'store'}"], **backup}})


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    tree = tmp_path / "data" / "vol" / "data"
    tree.mkdir(parents=True)
    return tmp_path, tree


def _seed(tree: Path, rng: random.Random) -> None:
    (tree / "db").write_bytes(rng.randbytes(4 * MIB))
    (tree / "sub").mkdir()
    for i in range(12):
        (tree / "sub" / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 3000)))
    os.symlink("sub/f1", tree / "link")
    os.link(tree / "sub" / "f2", tree / "hard")


def _backup(root: Path, **kw) -> backup_ops.BackupResult:
    return backup_ops.backup(_plan(root, **kw.pop("backup", {})), None, [], **kw)


def _restored(root: Path, sid: str, name: str) -> dict:
    out = root / "restored" / name
    restore(get_store(f"file://{root / 'store'}"), VSN, sid, plan=_plan(root), into=out)
    try:
        return fingerprint(out / "vol")
    finally:
        shutil.rmtree(out)


def _continues(root: Path, tree: Path, result: backup_ops.BackupResult, parent: str) -> None:
    """`result` is an incremental on `parent`, and restores to exactly the live tree."""
    assert result.kind == "incremental" and result.parent == parent
    assert _restored(root, result.snapshot_id, result.snapshot_id) == fingerprint(tree.parent)


# -- the change steps ------------------------------------------------------------------------------------


def _files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def change(tree: Path, rng: random.Random, kind: str) -> None:
    files = _files(tree)
    target = rng.choice(files) if files else None
    if kind == "append" and target:
        with open(target, "ab") as fh:
            fh.write(rng.randbytes(rng.randint(1, 70_000)))
    elif kind == "inplace" and target:
        size = target.stat().st_size
        with open(target, "r+b") as fh:
            fh.seek(rng.randint(0, max(0, size - 1)))
            fh.write(rng.randbytes(rng.randint(1, 9000)))
    elif kind == "truncate" and target:
        os.truncate(target, rng.randint(0, target.stat().st_size))
    elif kind == "delete" and target:
        target.unlink()
    elif kind == "rename" and target:
        target.rename(target.with_name(f"r{rng.randint(0, 999)}-{target.name}"))
    elif kind == "chmod" and target:
        target.chmod(rng.choice([0o600, 0o644, 0o755, 0o400]))
    elif kind == "chown" and target:
        os.chown(target, rng.randint(1000, 1005), rng.randint(1000, 1005))
    elif kind == "hardlink" and target:
        os.link(target, tree / f"h{rng.randint(0, 99999)}")
    elif kind == "symlink":
        link = tree / "link"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(rng.choice(["sub", "db", "nowhere", "sub/f3"]), link)
    elif kind == "newfile":
        (tree / "sub").mkdir(exist_ok=True)
        (tree / "sub" / f"n{rng.randint(0, 99999)}").write_bytes(rng.randbytes(rng.randint(0, 5000)))
    elif kind == "newdir":
        d = tree / f"d{rng.randint(0, 999)}"
        d.mkdir(exist_ok=True)
        (d / "x").write_bytes(rng.randbytes(100))
    elif kind == "rmdir":
        dirs = [p for p in tree.iterdir() if p.is_dir() and not p.is_symlink()]
        if dirs:
            shutil.rmtree(rng.choice(dirs))
    elif kind == "bigwrite":
        db = tree / "db"
        if db.exists() and not db.is_symlink():
            with open(db, "r+b") as fh:
                for _ in range(3):
                    fh.seek(rng.randint(0, db.stat().st_size))
                    fh.write(rng.randbytes(4096))


KINDS = ["append", "inplace", "truncate", "delete", "rename", "chmod", "chown", "hardlink", "symlink", "newfile",
         "newdir", "rmdir", "bigwrite"]
steps = st.lists(st.one_of(st.tuples(st.just("change"), st.lists(st.sampled_from(KINDS), min_size=1, max_size=4)),
                           st.tuples(st.just("backup"), st.booleans()),
                           st.tuples(st.just("prune"), st.integers(1, 3))),
                 min_size=3, max_size=9)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps, seed=st.integers(0, 2**16))
def test_every_kept_snapshot_restores_exactly_after_every_prune(tmp_path_factory, script, seed):
    """Random changes, backups (some --full) and prunes: every snapshot kept restores byte-identical (with
    metadata and hard links) to the tree as it was backed up, and nothing unreferenced stays in the store."""
    root = tmp_path_factory.mktemp("prop")
    os.environ["MIGRATOR_STATE_DIR"] = str(root / "state")
    try:
        tree = root / "data" / "vol" / "data"
        tree.mkdir(parents=True)
        rng = random.Random(seed)
        _seed(tree, rng)
        recorded: dict[str, dict] = {}
        store = get_store(f"file://{root / 'store'}")
        for op, arg in [("backup", False), *script, ("backup", False), ("prune", 2)]:
            if op == "change":
                for kind in arg:
                    change(tree, rng, kind)
            elif op == "backup":
                # Long chains on purpose: the share rule would cut them at the first hard link to "db".
                result = _backup(root, full=arg, backup={"full_when_deltas_exceed": 100})
                assert result.kind == ("full" if arg or not recorded else "incremental")
                recorded[result.snapshot_id] = fingerprint(tree.parent)
            else:
                newest = [m.snapshot_id for m in list_snapshots(store, VSN).snapshots][-arg:]
                snap_ops.prune(store, VSN, Policy(keep_last=arg), dry_run=False)
                listing = list_snapshots(store, VSN)
                kept = {m.snapshot_id for m in listing.snapshots}
                assert set(store.list_dir(VSN)) == kept  # no debris, nothing half-deleted
                needed = set().union(*(listing.handle(s).needs() for s in newest))
                assert kept == needed  # the newest `arg` and exactly what they need
                for sid in sorted(newest):
                    assert _restored(root, sid, sid) == recorded[sid], sid
    finally:
        del os.environ["MIGRATOR_STATE_DIR"]


# -- the chain rules -------------------------------------------------------------------------------------


def test_incremental_stores_changed_blocks_only_and_restore_reads_the_chain(lab):
    root, tree = lab
    _seed(tree, random.Random(1))
    first = _backup(root)
    with open(tree / "db", "r+b") as fh:
        fh.seek(MIB)
        fh.write(b"x" * 100)
    second = _backup(root)
    assert (first.kind, second.kind, second.parent) == ("full", "incremental", first.snapshot_id)
    assert second.size < 200_000 < 4 * MIB < first.size  # one 64 KiB block of "db", not 4 MiB
    assert second.objects[0]["files"] >= 1
    store = get_store(f"file://{root / 'store'}")
    snap = open_snapshot(store, VSN, second.snapshot_id)
    assert [link.id for link in snap.chain("vol")] == [first.snapshot_id, second.snapshot_id]
    assert _restored(root, second.snapshot_id, "b") == fingerprint(tree.parent)
    rows = {r["id"]: r for r in snap_ops.snapshots(store, VSN).snapshots}
    assert rows[second.snapshot_id]["kind"] == "incremental"
    parent = open_snapshot(store, VSN, first.snapshot_id).manifest
    assert rows[second.snapshot_id]["restore_size"] == sum(o.size for o in parent.objects + snap.manifest.objects)


def test_a_deleted_parent_object_makes_the_next_backup_full_and_the_damaged_one_unrestorable(lab):
    root, tree = lab
    _seed(tree, random.Random(2))
    first = _backup(root)
    (tree / "sub" / "f0").write_bytes(b"changed")
    second = _backup(root)
    (root / "store" / VSN / first.snapshot_id / "vol.tar.zst").unlink()
    (tree / "sub" / "f1").write_bytes(b"changed too")
    third = _backup(root)
    assert third.kind == "full" and "vol.tar.zst is missing" in third.full_reasons["vol"]
    assert _restored(root, third.snapshot_id, "c") == fingerprint(tree.parent)
    with pytest.raises(IntegrityError, match="vol.tar.zst"):
        _restored(root, second.snapshot_id, "d")
    with pytest.raises(IntegrityError, match="missing"):
        snap_ops.verify(get_store(f"file://{root / 'store'}"), VSN, second.snapshot_id, read_data=False)


def test_a_tampered_tree_state_in_the_store_costs_a_full_snapshot_never_a_wrong_one(lab):
    root, tree = lab
    _seed(tree, random.Random(3))
    first = _backup(root)
    chainrecord.forget(VSN)  # as on another machine: the tree state must come from the store
    obj = root / "store" / VSN / first.snapshot_id / "vol.tree.zst"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    (tree / "sub" / "f0").write_bytes(b"changed")
    second = _backup(root)
    assert second.kind == "full" and "tree state" in second.full_reasons["vol"]
    assert _restored(root, second.snapshot_id, "e") == fingerprint(tree.parent)


def test_a_manifest_that_disagrees_with_the_local_record_costs_a_full_snapshot(lab):
    root, tree = lab
    _seed(tree, random.Random(12))
    first = _backup(root)
    manifest = root / "store" / VSN / first.snapshot_id / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["trees"][0]["sha256"] = "0" * 64  # a forger would also replace the object: the record catches both
    manifest.write_text(json.dumps(raw))
    second = _backup(root)
    assert second.kind == "full" and "this VSN recorded" in second.full_reasons["vol"]


def test_an_older_tree_state_replayed_into_a_newer_snapshot_costs_a_full_snapshot(lab):
    # Replaying an older genuine tree state would hide a block changed and changed back since then.
    root, tree = lab
    _seed(tree, random.Random(13))
    first = _backup(root)
    (tree / "sub" / "f0").write_bytes(b"changed")
    second = _backup(root)
    chainrecord.forget(VSN)
    old = root / "store" / VSN / first.snapshot_id / "vol.tree.zst"
    new = root / "store" / VSN / second.snapshot_id / "vol.tree.zst"
    new.write_bytes(old.read_bytes())
    manifest = new.with_name("manifest.json")
    raw = json.loads(manifest.read_text())
    raw["trees"][0].update(size=old.stat().st_size, sha256=hashlib.sha256(old.read_bytes()).hexdigest())
    manifest.write_text(json.dumps(raw))
    third = _backup(root)
    assert third.kind == "full" and f"tree of '{VSN}/{first.snapshot_id}/vol'" in third.full_reasons["vol"]


def test_without_the_local_record_the_chain_continues_from_the_store(lab):
    root, tree = lab
    _seed(tree, random.Random(4))
    first = _backup(root)
    shutil.rmtree(root / "state")  # a fresh state dir (another machine, after move)
    (tree / "sub" / "f5").write_bytes(b"new content")
    _continues(root, tree, _backup(root), first.snapshot_id)


def test_a_copied_tree_continues_the_chain_with_block_patches_not_whole_files(lab):
    """After `move` every inode and ctime differs: small files go again, big ones only as (empty) patches."""
    root, tree = lab
    _seed(tree, random.Random(5))
    _backup(root)
    copy = tree.parent.with_name("vol.copy")
    subprocess.run(["cp", "-a", str(tree.parent), str(copy)], check=True)
    shutil.rmtree(tree.parent)
    copy.rename(tree.parent)
    second = _backup(root)
    assert second.kind == "incremental" and second.size < MIB
    assert _restored(root, second.snapshot_id, "g") == fingerprint(tree.parent)


def test_encrypted_chain_without_record_or_identity_takes_a_full_snapshot(lab, tmp_path):
    root, tree = lab
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = next(ln.split(": ")[1] for ln in key.read_text().splitlines() if "public key" in ln)
    enc = {"encryption": {"age_recipients": [public]}}
    _seed(tree, random.Random(6))
    first = _backup(root, backup=enc)
    (tree / "sub" / "f0").write_bytes(b"one")
    second = _backup(root, backup=enc)  # the local record: no identity needed
    assert second.kind == "incremental" and second.encrypted
    chainrecord.forget(VSN)
    (tree / "sub" / "f0").write_bytes(b"two")
    third = _backup(root, backup=enc)
    assert third.kind == "full" and "no age identity" in third.full_reasons["vol"]
    chainrecord.forget(VSN)
    (tree / "sub" / "f0").write_bytes(b"three")
    fourth = _backup(root, backup={"encryption": {"age_recipients": [public], "identity_file": str(key)}})
    assert fourth.kind == "incremental" and fourth.parent == third.snapshot_id
    out = root / "restored" / "enc"
    restore(get_store(f"file://{root / 'store'}"), VSN, fourth.snapshot_id, plan=_plan(root), into=out,
            identity=key)
    assert fingerprint(out / "vol") == fingerprint(tree.parent)
    assert first.kind == "full"


@pytest.mark.parametrize(("backup", "why"), [
    ({"full_every": 0}, "full_every is 0"),
    ({"full_when_deltas_exceed": 0}, "add up to"),
])
def test_policy_starts_a_new_full(lab, backup, why):
    root, tree = lab
    _seed(tree, random.Random(7))
    _backup(root, backup=backup)
    (tree / "sub" / "f0").write_bytes(b"changed")
    if "full_when" in json.dumps(backup):
        assert _backup(root, backup=backup).kind == "incremental"  # no delta yet: 0 bytes <= 0
        (tree / "sub" / "f0").write_bytes(b"changed again")
    again = _backup(root, backup=backup)
    assert again.kind == "full" and why in again.full_reasons["vol"]


def test_an_old_full_starts_a_new_chain(lab, monkeypatch):
    root, tree = lab
    _seed(tree, random.Random(8))
    first = _backup(root, backup={"full_every": 2})
    store_manifest = root / "store" / VSN / first.snapshot_id / "manifest.json"
    raw = json.loads(store_manifest.read_text())
    raw["created"] -= 3 * 86400
    store_manifest.write_text(json.dumps(raw))
    again = _backup(root, backup={"full_every": 2})
    assert again.kind == "full" and "days old" in again.full_reasons["vol"]


def test_a_failed_incremental_leaves_no_snapshot_and_the_chain_intact(lab, monkeypatch):
    root, tree = lab
    _seed(tree, random.Random(9))
    first = _backup(root)

    def boom(name: str) -> None:
        if name == "backup.before-manifest":
            raise RuntimeError("killed")

    monkeypatch.setattr(backup_ops, "checkpoint", boom)
    (tree / "sub" / "f0").write_bytes(b"lost")
    with pytest.raises(RuntimeError):
        _backup(root)
    monkeypatch.undo()
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(root / "state"))
    store = get_store(f"file://{root / 'store'}")
    assert [m.snapshot_id for m in list_snapshots(store, VSN).snapshots] == [first.snapshot_id]
    assert chainrecord.load(VSN).snapshot_id == first.snapshot_id
    _continues(root, tree, _backup(root), first.snapshot_id)


def test_verify_reads_a_subset_of_the_chain(lab):
    root, tree = lab
    _seed(tree, random.Random(10))
    _backup(root)
    for i in range(3):
        (tree / "sub" / f"f{i}").write_bytes(b"v%d" % i)
        _backup(root)
    store = get_store(f"file://{root / 'store'}")
    full = snap_ops.verify(store, VSN, "latest", read_data=True)
    assert full.objects == 4 + 1 and full.read == 5  # 4 archive objects of the chain, its tree state
    part = snap_ops.verify(store, VSN, "latest", read_data=False, subset=0.2, rng=random.Random(1))
    assert part.read == 1 and part.objects == 5
    everything = snap_ops.verify(store, VSN, "all", read_data=False)
    assert everything.snapshots == 4 and everything.objects == 8
    assert snap_ops.parse_subset("10%") == pytest.approx(0.1)
    with pytest.raises(Exception, match="percentage"):
        snap_ops.parse_subset("0%")


def test_restore_dry_run_lists_what_would_change(lab):
    root, tree = lab
    _seed(tree, random.Random(11))
    result = _backup(root)
    (tree / "sub" / "f0").write_bytes(b"edited")
    (tree / "sub" / "extra").write_bytes(b"new")
    (tree / "hard").unlink()
    preview = restore(get_store(f"file://{root / 'store'}"), VSN, result.snapshot_id, plan=_plan(root),
                      dry_run=True)
    vol = preview.to_json()["volumes"]["vol"]
    assert "data/sub/f0" in vol["paths"]["changed"] and vol["paths"]["removed"] == ["data/sub/extra"]
    assert vol["paths"]["added"] == ["data/hard"]
    assert (tree / "sub" / "extra").exists()  # nothing touched


def test_ids_sort_after_the_parent_even_within_one_second():
    parent = "20261207T120000Z-fffff0"
    for _ in range(50):
        sid = new_snapshot_id(now=1.0, after=parent)
        assert sid > parent
    assert new_snapshot_id(now=1.0, after="20261207T120000Z-ffffff") > "20261207T120000Z-ffffff"


def _plan_file(root: Path) -> Path:
    path = root / "plan.json"
    path.write_text(json.dumps(_plan(root).raw))
    return path


@pytest.mark.parametrize("seed", range(8))
def test_sigkill_at_a_random_moment_of_an_incremental_backup(lab, seed):
    """A real `migrator backup` process SIGKILLed at a random moment once it has chosen its parent (its
    first progress line): no new listed snapshot, the parent chain intact, and the next backup continues
    it. Seeded: every moment is reproducible in kind, not to the microsecond."""
    root, tree = lab
    rng = random.Random(seed)
    _seed(tree, rng)
    (tree / "big").write_bytes(rng.randbytes(24 * MIB))
    first = _backup(root)
    for kind in KINDS:
        change(tree, rng, kind)
    env = {**os.environ, "MIGRATOR_PROGRESS": "1"}
    argv = [sys.executable, "-m", "migrator", "backup", "--plan", str(_plan_file(root))]
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL) as proc:
        assert b"incremental on" in proc.stderr.readline()
        try:  # the random moment: a timeout, not a synchronisation
            proc.wait(timeout=rng.uniform(0, 0.4))
        except subprocess.TimeoutExpired:
            proc.kill()
    store = get_store(f"file://{root / 'store'}")
    listed = [m.snapshot_id for m in list_snapshots(store, VSN).snapshots]
    if len(listed) == 2:  # committed before the kill (or done): whole, and the chain goes on from it
        assert _restored(root, listed[1], "committed") == fingerprint(tree.parent)
        (tree / "sub").mkdir(exist_ok=True)
        (tree / "sub" / "after").write_bytes(b"after the kill")
        _continues(root, tree, _backup(root), listed[1])
        return
    assert proc.returncode == -9 and listed == [first.snapshot_id]
    snap_ops.verify(store, VSN, first.snapshot_id, read_data=True)
    _continues(root, tree, _backup(root), first.snapshot_id)
    assert not [p for p in (root / "state" / "spool").iterdir() if p.name[:8].isdigit()]
