"""Signed snapshots on a file store, without containers: every backup signs its manifest with this VSN's
ed25519 key; with trusted keys, restore, verify and drill refuse (exit 6, nothing written) a snapshot a
store-side attacker changed, unsigned or re-signed, and a backup does not continue such a parent."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from migrator import jsonschemas
from migrator.catalog.listing import list_snapshots
from migrator.catalog.signing import SIGNATURE, TrustedKeys, key_text_of, sign
from migrator.cli.app import app
from migrator.errors import IntegrityError, PreflightFailed, UsageError
from migrator.ops import backup as backup_ops
from migrator.ops import snapshots as snap_ops
from migrator.ops.drill import drill
from migrator.ops.restore import restore
from migrator.plan.model import Plan, Secrets
from migrator.state import chainrecord, signkey
from migrator.storage import get_store
from tests.unit.test_archive import fingerprint

VSN = "sig"
runner = CliRunner()


def _raw(root: Path, **backup) -> dict:
    return {"version": 1, "vsn": {"name": VSN, "engine": "podman", "data_root": str(root / "data"),
                                  "socket": f"unix://{root}/no-engine.sock"},
            "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
            "services": [], "backup": {"targets": [f"file://{root / 'store'}"], **backup}}


def _plan(root: Path, **backup) -> Plan:
    return Plan.from_json(_raw(root, **backup))


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    tree = tmp_path / "data" / "vol" / "data"
    (tree / "sub").mkdir(parents=True)
    rng = random.Random(7)
    (tree / "db").write_bytes(rng.randbytes(300_000))
    for i in range(5):
        (tree / "sub" / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 3000)))
    return tmp_path, tree


def _own_key() -> str:
    return key_text_of(signkey.load_or_create()[0])


def _backup(root: Path, report=None, **backup) -> backup_ops.BackupResult:
    return backup_ops.backup(_plan(root, **backup), None, [], report or (lambda _m: None))


def _dir(root: Path, sid: str) -> Path:
    return root / "store" / VSN / sid


def _store(root: Path):
    return get_store(f"file://{root / 'store'}")


def _rewrite_manifest(root: Path, sid: str, change) -> None:
    path = _dir(root, sid) / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def _resign(root: Path, sid: str, key: Ed25519PrivateKey) -> None:
    d = _dir(root, sid)
    (d / SIGNATURE).write_bytes(sign(key, (d / "manifest.json").read_bytes()))


# -- what a store-side attacker does -----------------------------------------------------------------------


def swap_object(root: Path, sid: str) -> None:
    """(a) Another archive in place of the volume's, and the manifest's size and sha256 to match."""
    obj = next(p for p in _dir(root, sid).iterdir() if p.name.startswith("vol.") and ".tar." in p.name)
    evil = subprocess.run(["bash", "-c", f"mkdir -p {root}/evil && echo owned > {root}/evil/x && "
                                         f"tar -C {root}/evil -cf - . | zstd -q -c"],
                          check=True, capture_output=True).stdout
    obj.write_bytes(evil)

    def change(raw):
        entry = next(o for o in raw["objects"] if o["name"] == obj.name)
        entry.update(size=len(evil), sha256=hashlib.sha256(evil).hexdigest())
    _rewrite_manifest(root, sid, change)


def change_plan_copy(root: Path, sid: str) -> None:
    """(b) The plan copy points data_root elsewhere, and plan_sha256 matches it."""
    path = _dir(root, sid) / "plan.json"
    raw = json.loads(path.read_text())
    raw["vsn"]["data_root"] = str(root / "elsewhere")
    data = json.dumps(raw).encode()
    path.write_bytes(data)
    _rewrite_manifest(root, sid, lambda m: m.update(plan_sha256=hashlib.sha256(data).hexdigest()))


def drop_signature(root: Path, sid: str) -> None:
    """(c) No signature at all (as a snapshot taken before signatures)."""
    (_dir(root, sid) / SIGNATURE).unlink()


def resign_with_another_key(root: Path, sid: str) -> None:
    """(d) Both changes above, then a valid signature by the attacker's own key."""
    swap_object(root, sid)
    change_plan_copy(root, sid)
    _resign(root, sid, Ed25519PrivateKey.generate())


ATTACKS = [swap_object, change_plan_copy, drop_signature, resign_with_another_key]


def test_backup_signs_the_exact_manifest_bytes_with_a_0600_key(lab):
    root, _tree = lab
    result = _backup(root)
    d = _dir(root, result.snapshot_id)
    doc = json.loads((d / SIGNATURE).read_text())
    assert doc["algorithm"] == "ed25519" and doc["key"] == result.signed_by == _own_key()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["key"][8:]))
    public.verify(base64.b64decode(doc["signature"]), (d / "manifest.json").read_bytes())  # raises if not
    path = signkey.key_path()
    assert path == root / "state" / "signing" / "ed25519.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # never in a snapshot: no store file holds a private key
    assert not [p for p in (root / "store").rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    again = _backup(root)
    assert again.signed_by == result.signed_by  # one key per VSN, made once


def test_key_show_prints_the_public_key_only(lab):
    root, _tree = lab
    shown = runner.invoke(app, ["key", "show"])
    assert shown.exit_code == 0, shown.output
    public = shown.stdout.strip()
    assert TrustedKeys.of([public]).texts == [public] and public == _own_key()
    as_json = json.loads(runner.invoke(app, ["key", "show", "--json"]).stdout)
    assert as_json["public_key"] == public and as_json["created"] is False and as_json["ok"] is True
    assert as_json["key_file"] == str(signkey.key_path())
    pem = signkey.key_path().read_bytes()
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
    private = load_pem_private_key(pem, None).private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    for out in (shown.output, json.dumps(as_json)):
        assert b"PRIVATE" not in out.encode() and base64.b64encode(private).decode() not in out
        assert pem.decode().splitlines()[1] not in out
    help_text = runner.invoke(app, ["key", "show", "--help"], terminal_width=200).output
    assert "Example:" in help_text and "migrator key show" in help_text


def test_a_key_file_others_can_read_is_refused_without_printing_it(lab):
    _own_key()
    path = signkey.key_path()
    path.chmod(0o644)
    with pytest.raises(PreflightFailed, match="readable by others") as info:
        signkey.load_or_create()
    assert "PRIVATE" not in info.value.message + info.value.hint
    path.chmod(0o600)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(PreflightFailed, match="damaged") as info:
        signkey.load_or_create()
    assert "not a key" not in info.value.message + info.value.hint


def test_signed_snapshots_restore_with_the_trusted_key_and_say_so(lab):
    root, tree = lab
    result = _backup(root)
    lines: list[str] = []
    out = restore(_store(root), VSN, result.snapshot_id, plan=_plan(root, trusted_keys=[_own_key()]),
                  into=root / "restored", report=lines.append)
    assert out.signature == "valid" and any("signature valid" in ln for ln in lines)
    assert fingerprint(root / "restored" / "vol") == fingerprint(tree.parent)
    checked = snap_ops.verify(_store(root), VSN, "latest", read_data=True, trusted=TrustedKeys.of([_own_key()]))
    assert checked.signature == "valid"


def test_without_trusted_keys_a_signed_snapshot_is_unchecked_and_an_unsigned_one_unsigned(lab):
    root, tree = lab
    first = _backup(root)
    lines: list[str] = []
    out = restore(_store(root), VSN, first.snapshot_id, plan=_plan(root), into=root / "a", report=lines.append)
    assert out.signature == "unchecked" and any("UNCHECKED" in ln for ln in lines)
    drop_signature(root, first.snapshot_id)  # as a snapshot taken before signed snapshots
    lines.clear()
    out = restore(_store(root), VSN, first.snapshot_id, plan=_plan(root), into=root / "b", report=lines.append)
    assert out.signature == "unsigned" and any("UNSIGNED" in ln for ln in lines)
    assert fingerprint(root / "b" / "vol") == fingerprint(tree.parent)
    assert snap_ops.verify(_store(root), VSN, "all", read_data=False).signature == "unsigned"


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_a_store_side_attack_is_refused_with_exit_6_and_nothing_written(lab, attack):
    root, tree = lab
    before = fingerprint(tree.parent)
    sid = _backup(root).snapshot_id
    key = _own_key()
    attack(root, sid)
    store = _store(root)
    trusted = TrustedKeys.of([key])
    # a fresh machine: no plan deployed, the key on the command line
    with pytest.raises(IntegrityError) as info:
        restore(store, VSN, sid, plan=None, trusted=trusted, into=root / "restored")
    assert info.value.exit_code == 6
    assert not (root / "restored").exists() and not (root / "elsewhere").exists()
    # this VSN, its plan trusting its own key: live data untouched, no staging dir left
    with pytest.raises(IntegrityError):
        restore(store, VSN, sid, plan=_plan(root, trusted_keys=[key]), touch_containers=False)
    with pytest.raises(IntegrityError):
        restore(store, VSN, sid, plan=_plan(root, trusted_keys=[key]), dry_run=True)
    assert fingerprint(tree.parent) == before
    assert sorted(p.name for p in (root / "data").iterdir()) == ["vol"]
    with pytest.raises(IntegrityError):
        snap_ops.verify(store, VSN, sid, read_data=True, trusted=trusted)
    with pytest.raises(IntegrityError):
        drill(store, VSN, sid, plan=None, secrets=Secrets(), trusted=trusted)
    assert not (root / "state" / "drill").exists()


def test_the_cli_refuses_an_attacked_snapshot_on_a_fresh_machine_with_exit_6(lab):
    root, _tree = lab
    sid = _backup(root).snapshot_id
    key = _own_key()
    base = ["restore", sid, "--from", f"file://{root / 'store'}", "--vsn", VSN, "--json"]
    ok = runner.invoke(app, [*base, "--into", str(root / "one"), "--trusted-key", key])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["signature"] == "valid"
    assert runner.invoke(app, [*base, "--into", str(root / "x"), "--trusted-key", "ed25519:nope"]).exit_code == 2
    change_plan_copy(root, sid)
    refused = runner.invoke(app, [*base, "--into", str(root / "two"), "--trusted-key", key])
    assert refused.exit_code == 6 and json.loads(refused.stdout)["error"] == "IntegrityError"
    assert not (root / "two").exists()
    verified = runner.invoke(app, ["verify", sid, "--from", f"file://{root / 'store'}", "--vsn", VSN,
                                   "--trusted-key", key, "--json"])
    assert verified.exit_code == 6
    unchecked = runner.invoke(app, [*base, "--into", str(root / "three")])  # no trusted keys: said, not refused
    assert unchecked.exit_code == 0 and json.loads(unchecked.stdout)["signature"] == "unchecked"


def test_an_incremental_chain_with_a_tampered_parent_manifest_is_refused(lab):
    root, tree = lab
    key = _own_key()
    first = _backup(root, trusted_keys=[key])
    (tree / "sub" / "f0").write_bytes(b"changed")
    second = _backup(root, trusted_keys=[key])
    assert second.kind == "incremental" and second.parent == first.snapshot_id
    plan = _plan(root, trusted_keys=[key])
    out = restore(_store(root), VSN, second.snapshot_id, plan=plan, into=root / "ok")
    assert out.signature == "valid" and out.to_json()["chain"]["vol"] == [first.snapshot_id, second.snapshot_id]
    swap_object(root, first.snapshot_id)  # the child's own manifest and signature untouched
    with pytest.raises(IntegrityError, match=first.snapshot_id):
        restore(_store(root), VSN, second.snapshot_id, plan=plan, into=root / "bad")
    assert not (root / "bad").exists()
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        snap_ops.verify(_store(root), VSN, second.snapshot_id, read_data=False, trusted=TrustedKeys.of([key]))
    with pytest.raises(IntegrityError, match="damaged"):
        snap_ops.verify(_store(root), VSN, "all", read_data=False, trusted=TrustedKeys.of([key]))


def test_a_parent_whose_signature_fails_makes_the_next_backup_full(lab):
    root, tree = lab
    key = _own_key()
    first = _backup(root, trusted_keys=[key])
    _resign(root, first.snapshot_id, Ed25519PrivateKey.generate())
    (tree / "sub" / "f1").write_bytes(b"changed")
    second = _backup(root, trusted_keys=[key])
    assert second.kind == "full" and "signature" in second.full_reasons["vol"]
    assert "not a trusted key" in second.full_reasons["vol"]
    (tree / "sub" / "f2").write_bytes(b"changed")
    third = _backup(root, trusted_keys=[key])  # its own signed parent: incremental again
    assert third.kind == "incremental" and third.parent == second.snapshot_id
    drop_signature(root, third.snapshot_id)
    chainrecord.forget(VSN)
    fourth = _backup(root, trusted_keys=[key])
    assert fourth.kind == "full" and "not signed" in fourth.full_reasons["vol"]
    # without trusted keys the signatures are not checked: the chain continues
    (tree / "sub" / "f3").write_bytes(b"changed")
    assert _backup(root).kind == "incremental"


def test_a_plan_that_does_not_trust_this_vsns_key_is_warned_about(lab):
    root, _tree = lab
    other = key_text_of(Ed25519PrivateKey.generate())
    lines: list[str] = []
    _backup(root, report=lines.append, trusted_keys=[other])
    assert any("not in backup.trusted_keys" in ln for ln in lines)
    result = _backup(root, trusted_keys=[other])
    assert result.kind == "full" and "not a trusted key" in result.full_reasons["vol"]


def test_rotation_several_trusted_keys(lab):
    """A new key (a new VSN after a move, or a rotated key) and the old one both listed: both restore."""
    root, _tree = lab
    old = _backup(root).snapshot_id
    old_key = _own_key()
    signkey.key_path().unlink()  # rotated: the next backup makes a new key
    new = _backup(root).snapshot_id
    new_key = _own_key()
    assert new_key != old_key
    both = _plan(root, trusted_keys=[old_key, new_key])
    for n, sid in enumerate((old, new)):
        assert restore(_store(root), VSN, sid, plan=both, into=root / f"r{n}").signature == "valid"
    with pytest.raises(IntegrityError, match="not a trusted key"):
        restore(_store(root), VSN, old, plan=_plan(root, trusted_keys=[new_key]), into=root / "r3")


def test_a_backup_killed_between_signature_and_manifest_lists_nothing(lab):
    root, _tree = lab
    first = _backup(root)
    plan = root / "plan.json"
    plan.write_text(json.dumps(_raw(root)))
    proc = subprocess.run([sys.executable, "-m", "migrator", "backup", "--plan", str(plan)],
                          env={**os.environ, "MIGRATOR_KILL_AT": "backup.signed"}, capture_output=True)
    assert proc.returncode == -9, proc.stderr
    dirs = sorted(p.name for p in (root / "store" / VSN).iterdir())
    assert len(dirs) == 2 and (_dir(root, dirs[1]) / SIGNATURE).exists()
    assert not (_dir(root, dirs[1]) / "manifest.json").exists()
    assert [m.snapshot_id for m in list_snapshots(_store(root), VSN).snapshots] == [first.snapshot_id]


def test_a_failed_backup_after_signing_leaves_no_debris(lab, monkeypatch):
    root, _tree = lab

    def boom(name: str) -> None:
        if name == "backup.signed":
            raise RuntimeError("killed")

    monkeypatch.setattr(backup_ops, "checkpoint", boom)
    with pytest.raises(RuntimeError):
        _backup(root)
    assert not list((root / "store" / VSN).iterdir())


def test_trusted_keys_in_the_plan_schema():
    key = key_text_of(Ed25519PrivateKey.generate())
    good = _raw(Path("/srv"), trusted_keys=[key])
    assert jsonschemas.errors("plan", good) == []
    for bad in ["ed25519:abc", key[:-2] + "B=", "ssh-ed25519 " + key[8:], key + "\n"]:
        errors = jsonschemas.errors("plan", _raw(Path("/srv"), trusted_keys=[bad]))
        assert [list(e.absolute_path) for e in errors] == [["backup", "trusted_keys", 0]], bad
    with pytest.raises(UsageError, match="--trusted-key is not an ed25519 public key") as info:
        TrustedKeys.of([], ["-----BEGIN PRIVATE KEY----- secret"])
    assert "secret" not in info.value.message
