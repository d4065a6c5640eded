"""Incremental snapshots against the real lab: chains across `move` and `os-update`, through S3 (moto) and
SSH stores, SIGKILLed backups and prunes, and a store damaged behind migrator's back (a tampered tree
state, a deleted object). Every restore is checked against the live tree: contents, modes, owners, file
and directory mtimes, symlinks, hard-link groups and xattrs (webdata is static between the test's edits);
dbdata, which the writer keeps appending to, must be a consistent prefix of the live data.

Plans set backup.full_when_deltas_exceed to 100 unless a test is about the policy: dbdata is a few KiB
that every incremental re-sends whole (its log grows), so under the default 0.5 it would start a new full
on its own every other backup."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.integration.test_backup_restore import counter_consistent, run_json, web_tree
from tests.integration.test_move import move
from tests.lab.docker import both_engines
from tests.lab.fingerprint import fingerprint
from tests.lab.plans import demo_plan
from tests.lab.vsn import write_json

VSN = "t"  # demo_plan's VSN name: snapshots are filed under it
KIB = 1024
BIG = 5 * 1024 * KIB + 12_345  # several 64 KiB blocks, not a multiple of one
BIG2 = 2560 * KIB + 7  # above the 2 MiB from which files get block digests
DB_LOG = 3 * 1024 * KIB


# -- data and how it is compared ----------------------------------------------------------------------

def seed(www: Path) -> None:
    """Static web content with every kind of entry a delta must carry."""
    web_tree(www, "page v0")
    (www / "flip").mkdir()
    (www / "flip" / "inside").write_text("a directory that becomes a file")
    (www / "big.bin").write_bytes(os.urandom(BIG))
    (www / "big2.bin").write_bytes(os.urandom(BIG2))


def change(www: Path, n: int) -> None:
    """Round `n` of edits: in-place block changes and a size change of the big file, a big file replaced by
    a near-identical new inode, rewritten, new,
    deleted and renamed files, mode/owner/xattr/mtime-only changes, a write through a hard link, a new or
    dropped hard link, a retargeted symlink, a file<->directory swap."""
    with open(www / "big.bin", "r+b") as fh:
        for offset in (n * 70_000, BIG // 2 + n * 999, 4 * 1024 * KIB + 5):
            fh.seek(offset)
            fh.write(os.urandom(3000))
        end = fh.seek(0, os.SEEK_END)
        if n % 2:
            fh.write(os.urandom(100_000))  # grows by a block and a bit
        else:
            fh.truncate(end - 50_000)  # shrinks
    # Rewritten as a new inode (write a copy, rename it over), mostly unchanged: a patch onto the new inode.
    blob = bytearray((www / "big2.bin").read_bytes())
    blob[n * 100_000:n * 100_000 + 500] = os.urandom(500)
    (www / ".big2.tmp").write_bytes(bytes(blob))
    os.rename(www / ".big2.tmp", www / "big2.bin")
    (www / "index.html").write_text(f"page v{n}")
    os.setxattr(www / "index.html", "user.round", str(n).encode())
    (www / f"new-{n}.txt").write_text(f"new in round {n}")
    (www / f"new-{n - 1}.txt").unlink(missing_ok=True)
    renamed = [p for p in www.iterdir() if p.name.startswith("renamed-")]
    if renamed:
        renamed[0].rename(www / f"renamed-{n}")
    else:
        (www / f"renamed-{n}").write_text("moves every round")
    os.chmod(www / "secret.conf", 0o640 if n % 2 else 0o600)
    os.chown(www / "secret.conf", 1234 + n, 5678 + n)
    os.utime(www / "dir with spaces" / "ünïcödé" / "f", ns=(1_000_000_000 * n, 1_500_000_000_000_000_000 + n))
    with open(www / "hard", "a") as fh:  # through one name: every name of the inode changes
        fh.write(f" +{n}")
    if (www / "hard3").exists():
        (www / "hard3").unlink()
    else:
        os.link(www / "hard", www / "hard3")
    (www / "sym").unlink()
    (www / "sym").symlink_to(f"new-{n}.txt")
    flip = www / "flip"
    if flip.is_dir():
        shutil.rmtree(flip)
        flip.write_text(f"a file in round {n}")
    else:
        flip.unlink()
        flip.mkdir()
        (flip / "inside").write_text(f"a directory again in round {n}")


def tree(root: Path) -> dict:
    """fingerprint() plus what it leaves out: directory mtimes, hard-link groups, extended attributes."""
    dirs, xattrs, inodes = {}, {}, defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                dirs[rel] = st.st_mtime_ns
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes[st.st_ino].append(rel)
            if not stat.S_ISLNK(st.st_mode):
                names = sorted(os.listxattr(path))
                if names:
                    xattrs[rel] = {x: os.getxattr(path, x) for x in names}
    return {"files": fingerprint(root), "dirs": dirs, "xattrs": xattrs,
            "links": sorted(sorted(group) for group in inodes.values())}


def assert_same_tree(restored: Path, live: Path) -> None:
    got, want = tree(restored), tree(live)
    for part in ("files", "dirs", "xattrs", "links"):
        assert got[part] == want[part], f"{part} of {restored} differ from {live}"


def assert_db_consistent(restored: Path, live: Path) -> None:
    """dbdata is a stopped-state copy: a prefix of the live log, with the counter of its last line."""
    data = restored / "data"
    log = (data / "log.txt").read_bytes()
    assert len(log) > DB_LOG and (live / "data" / "log.txt").read_bytes().startswith(log)
    assert counter_consistent(data)


# -- deploying and running ------------------------------------------------------------------------------

def seed_db(data: Path) -> None:
    """A database log big enough for block digests: the writer's appends then go as block patches, in the
    live first pass of an incremental and again in its stopped second pass."""
    data.mkdir(parents=True, exist_ok=True)
    line = b"0 seeded before the writer started".ljust(127, b".") + b"\n"
    (data / "log.txt").write_bytes(line * (DB_LOG // len(line)))  # exactly DB_LOG bytes


def deploy(vsn, secrets, tmp_path, targets: list[str], **backup) -> dict:
    raw = demo_plan(vsn, host=False)
    raw["backup"] = {"targets": targets, "full_when_deltas_exceed": 100, **backup}
    plan = write_json(tmp_path / "plan.json", raw)
    seed(vsn.data_root / "webdata" / "www")
    seed_db(vsn.data_root / "dbdata" / "data")
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr
    return raw


def backup(vsn, *args, kind: str | None = None, parent: str | None = None) -> dict:
    """`migrator backup --json` (progress lines kept in out["stderr"]); checks kind and parent when given."""
    result = vsn.migrator("backup", *args, "--json", env=dict(vsn.env(), MIGRATOR_PROGRESS="1"))
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    out["stderr"] = result.stderr
    if kind is not None:
        assert out["kind"] == kind, (out["full_reasons"], result.stderr)
    if parent is not None:
        assert out["parent"] == parent, (out["full_reasons"], result.stderr)
    return out


def delta_bytes(snap: dict, volume: str) -> int:
    return sum(o["uncompressed"] for o in snap["objects"] if o["volume"] == volume)


def restore_into(vsn, snapshot_id: str, into: Path, *args) -> dict:
    return run_json(vsn, "restore", snapshot_id, "--into", str(into), *args)


def check_restore(vsn, snapshot_id: str, into: Path, *args) -> dict:
    """Restore `snapshot_id` into `into`: webdata equals the live tree, dbdata a consistent prefix."""
    out = restore_into(vsn, snapshot_id, into, *args)
    assert_same_tree(into / "webdata", vsn.data_root / "webdata")
    assert_db_consistent(into / "dbdata", vsn.data_root / "dbdata")
    return out


def listed(vsn, *args) -> list[dict]:
    return run_json(vsn, "snapshots", *args)["snapshots"]


def ssh_env(vsn, host, tmp_path) -> dict:
    """The VSN's environment with a HOME whose ~/.ssh/config names the lab SSH host (alias vsn2)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700, exist_ok=True)
    (home / ".ssh" / "config").write_text(host.ssh_config_file.read_text())
    return dict(vsn.env(), HOME=str(home))


def store_dir(tmp_path: Path, snapshot_id: str) -> Path:
    return tmp_path / "store" / VSN / snapshot_id


# -- 1. a chain across `move` ---------------------------------------------------------------------------


def full_then_incremental(vsn, secrets, tmp_path) -> tuple[str, Path, dict, dict]:
    """Deploy with a file:// store, take a full, change the web data, take an incremental on it."""
    store = f"file://{tmp_path}/store"
    deploy(vsn, secrets, tmp_path, [store])
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    change(www, 1)
    return store, www, full, backup(vsn, kind="incremental", parent=full["snapshot_id"])

def test_chain_continues_on_the_target_after_move(vsn, target_vsn, secrets, tmp_path, monkeypatch):
    """The store is an ssh:// store on the target host: the source reaches it over SSH, the target reaches
    itself. After the move the target has no local chain record: its first backup reads the parent's tree
    state from the store and continues the chain the source started."""
    host = target_vsn.host
    url = host.url(f"moved-{tmp_path.name}")
    env = ssh_env(vsn, host, tmp_path)
    monkeypatch.setattr(vsn, "env", lambda: dict(env))
    deploy(vsn, secrets, tmp_path, [url])
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    change(www, 1)
    inc = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    assert delta_bytes(inc, "webdata") < BIG // 4  # big.bin went as block patches, not whole

    moved = move(vsn, target_vsn)
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert not (target_vsn.state_dir / "chain").exists()  # no local record travels with the stack
    there = target_vsn.data_root / "webdata" / "www"
    change(there, 2)
    migrator = ["env", f"HOME={env['HOME']}", "MIGRATOR_PROGRESS=1", *shlex.split(target_vsn.remote_migrator())]
    result = host.run([*migrator, "backup", "--json"], check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert out["kind"] == "incremental" and out["parent"] == inc["snapshot_id"], (out["full_reasons"], result.stderr)
    assert out["full_reasons"] == {}
    assert "webdata: incremental on" in result.stderr and "tree state from the store" in result.stderr
    # Only the changed blocks of big.bin travel, though every file there is a new inode (the move copied it).
    assert delta_bytes(out, "webdata") < BIG // 4
    assert (target_vsn.state_dir / "chain" / VSN / "record.json").exists()  # the target records it now

    into = tmp_path / "restored-on-target"
    restored = host.run([*migrator, "restore", out["snapshot_id"], "--into", str(into), "--json"], check=False)
    assert restored.returncode == 0, restored.stderr + restored.stdout
    chain = json.loads(restored.stdout)["chain"]
    assert chain["webdata"] == [full["snapshot_id"], inc["snapshot_id"], out["snapshot_id"]]
    assert_same_tree(into / "webdata", target_vsn.data_root / "webdata")
    assert_db_consistent(into / "dbdata", target_vsn.data_root / "dbdata")


# -- 2. across os-update --------------------------------------------------------------------------------

def test_chain_continues_across_os_update(vsn, secrets, tmp_path):
    store = f"file://{tmp_path}/store"
    deploy(vsn, secrets, tmp_path, [store])
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    change(www, 1)
    prepared = run_json(vsn, "os-update", "prepare")
    assert vsn.containers() == {}
    at_prepare = {v: tree(vsn.data_root / v) for v in ("webdata", "dbdata")}  # containerless: all static
    rows = {r["id"]: r for r in listed(vsn)}
    pre = rows[prepared["snapshot_id"]]
    assert pre["tags"] == ["pre-update"] and pre["kind"] == "incremental" and pre["parent"] == full["snapshot_id"]
    # Something touches the data during the update: finish refuses, then restores the (incremental)
    # pre-update snapshot in place and proves the data equal to the fingerprint taken at prepare.
    (www / "index.html").write_text("touched by the update")
    (www / "new-1.txt").unlink()
    refused = run_json(vsn, "os-update", "finish", expect=6)
    assert any("index.html" in d for d in refused["details"])
    finished = run_json(vsn, "os-update", "finish", "--restore-on-mismatch")
    assert finished["restored"] is True and finished["differences"]
    assert tree(vsn.data_root / "webdata") == at_prepare["webdata"]
    assert vsn.containers()["web"] == "running"

    change(www, 2)
    after = backup(vsn, kind="incremental", parent=prepared["snapshot_id"])
    check_restore(vsn, after["snapshot_id"], tmp_path / "after")
    # The pre-update snapshot itself restores exactly what the update saw (both volumes: nothing ran).
    restore_into(vsn, prepared["snapshot_id"], tmp_path / "pre")
    for volume, want in at_prepare.items():
        assert tree(tmp_path / "pre" / volume) == want, volume


# -- 3. S3 and SSH stores -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["s3", "ssh"])
def test_incremental_through_s3_and_ssh(vsn, secrets, tmp_path, kind, request, monkeypatch):
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url = bucket.url("incr")
        extra = {"s3": {"endpoint_url": bucket.endpoint_url, "region": "us-east-1"}}
        env = vsn.env()  # the s3_bucket fixture put the lab's AWS credentials in this environment
    else:
        host = request.getfixturevalue("ssh_host")
        url = host.url(f"incr-{tmp_path.name}")
        extra = {}
        env = ssh_env(vsn, host, tmp_path)
    monkeypatch.setattr(vsn, "env", lambda: dict(env))
    deploy(vsn, secrets, tmp_path, [url], **extra)
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    assert full["parent"] is None and set(full["full_reasons"]) == {"dbdata", "webdata"}
    change(www, 1)
    inc = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    assert inc["full_reasons"] == {} and all(v["incremental"] for v in inc["volumes"].values())
    assert delta_bytes(inc, "webdata") < BIG // 4
    assert delta_bytes(inc, "dbdata") < DB_LOG // 4  # the growing log: its new blocks only
    assert "tree state from the local record" in inc["stderr"]

    restored = check_restore(vsn, inc["snapshot_id"], tmp_path / "back")
    assert restored["kind"] == "incremental"
    assert restored["chain"] == {v: [full["snapshot_id"], inc["snapshot_id"]] for v in ("dbdata", "webdata")}
    verified = run_json(vsn, "verify", "latest", "--read-data")
    # every archive object of the chain, plus the latest snapshot's own tree states
    assert verified["objects"] == verified["read"] == len(full["objects"]) + len(inc["objects"]) + 2
    assert run_json(vsn, "verify", "all", "--read-data-subset", "50%")["snapshots"] == 2

    rows = listed(vsn)
    assert [(r["id"], r["kind"], r["parent"]) for r in rows] == [
        (full["snapshot_id"], "full", None), (inc["snapshot_id"], "incremental", full["snapshot_id"])]
    assert rows[0]["restore_size"] == sum(o["size"] for o in full["objects"])
    assert rows[1]["restore_size"] == sum(o["size"] for o in full["objects"] + inc["objects"])
    assert rows[1]["added"] == inc["size"] < rows[1]["restore_size"]

    # A machine that never saw this VSN (fresh state dir, nothing deployed) rebuilds it from the store alone.
    fresh = dict(env, MIGRATOR_STATE_DIR=str(tmp_path / "fresh-state"))
    result = vsn.migrator("restore", "latest", "--from", url, "--vsn", VSN, "--into", str(tmp_path / "fresh"),
                          "--json", env=fresh)
    assert result.returncode == 0, result.stderr
    assert_same_tree(tmp_path / "fresh" / "webdata", tmp_path / "back" / "webdata")
    assert_same_tree(tmp_path / "fresh" / "dbdata", tmp_path / "back" / "dbdata")

    # --dry-run names what restoring the latest snapshot would undo in the live dir, and changes nothing.
    change(www, 2)
    before = tree(vsn.data_root / "webdata")
    dry = run_json(vsn, "restore", "latest", "--dry-run", "--volume", "webdata")
    web = dry["volumes"]["webdata"]
    assert "www/new-2.txt" in web["paths"]["removed"] and "www/new-1.txt" in web["paths"]["added"]
    assert {"www/index.html", "www/big.bin", "www/sym"} <= set(web["paths"]["changed"])
    assert tree(vsn.data_root / "webdata") == before


def test_parent_is_the_newest_snapshot_every_target_holds(vsn, secrets, tmp_path, s3_bucket, ssh_host, monkeypatch):
    """Two targets; one snapshot went to S3 only: the next backup to both continues the newest common one,
    reading its tree state from the store (the local record names the S3-only snapshot)."""
    s3_url, ssh_url = s3_bucket.url("both"), ssh_host.url(f"both-{tmp_path.name}")
    env = ssh_env(vsn, ssh_host, tmp_path)
    monkeypatch.setattr(vsn, "env", lambda: dict(env))
    deploy(vsn, secrets, tmp_path, [s3_url, ssh_url],
           s3={"endpoint_url": s3_bucket.endpoint_url, "region": "us-east-1"})
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    change(www, 1)
    only_s3 = backup(vsn, "--to", s3_url, kind="incremental", parent=full["snapshot_id"])
    change(www, 2)
    both = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    assert "tree state from the store" in both["stderr"] and only_s3["snapshot_id"] in both["stderr"]
    for url in (s3_url, ssh_url):
        rows = listed(vsn, "--from", url)
        assert (rows[-1]["id"], rows[-1]["parent"]) == (both["snapshot_id"], full["snapshot_id"])
        into = tmp_path / f"from-{url.split(':')[0]}"
        out = check_restore(vsn, both["snapshot_id"], into, "--from", url)
        assert out["chain"]["webdata"] == [full["snapshot_id"], both["snapshot_id"]]


@both_engines
def test_restore_in_place_then_the_chain_goes_on(vsn, secrets, tmp_path):
    """Back in time: restore the full in place over newer data, then back up. The local record still names
    the newest snapshot, whose tree state the restored data differs from in every inode; the delta must
    undo round 1's edits. web uses quiesce "stop" here: its volume is captured in one stopped pass."""
    store = f"file://{tmp_path}/store"
    raw = demo_plan(vsn, host=False)
    next(s for s in raw["services"] if s["name"] == "web")["quiesce"] = "stop"
    raw["backup"] = {"targets": [store], "full_when_deltas_exceed": 100}
    plan = write_json(tmp_path / "plan.json", raw)
    seed(vsn.data_root / "webdata" / "www")
    seed_db(vsn.data_root / "dbdata" / "data")
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets)).returncode == 0
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    assert full["volumes"]["webdata"]["mode"] == "stop"
    at_full = tree(vsn.data_root / "webdata")
    change(www, 1)
    inc = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    assert {o["name"] for o in inc["objects"] if o["volume"] == "webdata"} == {"webdata.tar.zst"}
    run_json(vsn, "restore", full["snapshot_id"], "--volume", "webdata")
    assert tree(vsn.data_root / "webdata") == at_full
    back = backup(vsn, kind="incremental", parent=inc["snapshot_id"])
    check_restore(vsn, back["snapshot_id"], tmp_path / "back")
    change(www, 2)
    nxt = backup(vsn, kind="incremental", parent=back["snapshot_id"])
    check_restore(vsn, nxt["snapshot_id"], tmp_path / "next")


# -- 4. killed backups and a killed prune ---------------------------------------------------------------

@pytest.mark.parametrize("point", ["backup.phase1-done", "backup.services-stopped", "backup.before-manifest"])
def test_killed_incremental_backup(vsn, secrets, tmp_path, point):
    store = f"file://{tmp_path}/store"
    deploy(vsn, secrets, tmp_path, [store])
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    at_full = tree(vsn.data_root / "webdata")
    change(www, 1)
    killed = vsn.migrator("backup", "--json", env=dict(vsn.env(), MIGRATOR_KILL_AT=point, MIGRATOR_PROGRESS="1"))
    assert killed.returncode == -9, killed.stderr
    assert f"incremental on {full['snapshot_id']}" in killed.stderr  # it died inside an incremental
    run_json(vsn, "recover")
    assert vsn.containers()["db"] == "running" and vsn.containers()["web"] == "running"
    assert [r["id"] for r in listed(vsn)] == [full["snapshot_id"]]  # nothing new listed
    # The parent still restores exactly.
    restore_into(vsn, full["snapshot_id"], tmp_path / "parent")
    assert tree(tmp_path / "parent" / "webdata") == at_full
    # The next backup continues the old parent, and its restore holds the data as it is now.
    again = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    assert delta_bytes(again, "webdata") < BIG // 4
    check_restore(vsn, again["snapshot_id"], tmp_path / "again")
    assert run_json(vsn, "verify", "all", "--read-data")["snapshots"] == 2
    # Nothing of the dead run stays in the state dir (its phase-2 spool, its sealed tree states).
    assert list((vsn.state_dir / "spool").iterdir()) == []


def test_killed_prune_never_breaks_a_listed_chain(vsn, secrets, tmp_path, s3_bucket):
    """Prune has no kill point: it is SIGKILLed from here as soon as it says it removes the second snapshot
    (the first is gone by then; a kill on the first line lands before anything is deleted). Whatever it
    got done, every listed snapshot's chain is intact, the kept chain restores exactly, and a second
    prune finishes the job."""
    url = s3_bucket.url("prune")
    deploy(vsn, secrets, tmp_path, [url], s3={"endpoint_url": s3_bucket.endpoint_url, "region": "us-east-1"})
    www = vsn.data_root / "webdata" / "www"
    old = [backup(vsn, kind="full")]
    for n in (1, 2):
        change(www, n)
        old.append(backup(vsn, kind="incremental", parent=old[-1]["snapshot_id"]))
    change(www, 3)
    new_full = backup(vsn, "--full", kind="full")
    assert all("--full" in why for why in new_full["full_reasons"].values())
    change(www, 4)
    latest = backup(vsn, kind="incremental", parent=new_full["snapshot_id"])
    keep = [new_full["snapshot_id"], latest["snapshot_id"]]

    dry = run_json(vsn, "prune", "--keep-last", "1", "--dry-run")
    assert dry["remove"] == [s["snapshot_id"] for s in reversed(old)]  # children before parents
    assert dry["keep"][new_full["snapshot_id"]] == [f"parent of {latest['snapshot_id']}"]

    proc = subprocess.Popen([*vsn.migrator_argv(), "prune", "--keep-last", "1", "--json"],
                            env=dict(vsn.env(), MIGRATOR_PROGRESS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:
        said.append(line)
        if sum("removing" in s for s in said) == 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, "".join(said) + err  # killed inside prune, not after it
    first, second = (line.split()[-1] for line in said if "removing" in line)
    assert [first, second] == [old[2]["snapshot_id"], old[1]["snapshot_id"]]

    run_json(vsn, "recover")
    rows = listed(vsn)
    ids = [r["id"] for r in rows]
    # The second line comes only once the first removal is done; the kill lands in or after the second.
    assert first not in ids and ids[-2:] == keep and set(ids) <= {old[0]["snapshot_id"], second, *keep}
    assert all(r.get("broken") is None and r["restore_size"] for r in rows)
    assert run_json(vsn, "verify", "all")["snapshots"] == len(rows)  # every listed chain is whole
    at_latest = tree(vsn.data_root / "webdata")
    restore_into(vsn, latest["snapshot_id"], tmp_path / "kept")
    assert tree(tmp_path / "kept" / "webdata") == at_latest

    done = run_json(vsn, "prune", "--keep-last", "1")
    assert set(done["remove"]) == set(ids[:-2])
    assert [r["id"] for r in listed(vsn)] == keep
    nxt = backup(vsn, kind="incremental", parent=latest["snapshot_id"])
    check_restore(vsn, nxt["snapshot_id"], tmp_path / "next")


# -- 5. a tampered tree state ---------------------------------------------------------------------------

def flip_bytes(path: Path) -> None:
    """Overwrite bytes in the middle of a stored object; its size stays the same."""
    blob = bytearray(path.read_bytes())
    for i in range(len(blob) // 2, min(len(blob), len(blob) // 2 + 8)):
        blob[i] ^= 0xA5
    path.write_bytes(bytes(blob))


def test_tampered_tree_state_without_local_record_forces_a_full(vsn, secrets, tmp_path):
    store, www, full, inc = full_then_incremental(vsn, secrets, tmp_path)
    for volume in ("webdata", "dbdata"):
        flip_bytes(store_dir(tmp_path, inc["snapshot_id"]) / f"{volume}.tree.zst")
    shutil.rmtree(vsn.state_dir / "chain" / VSN)  # as on a fresh state dir: the store's copy is all there is
    change(www, 2)
    out = backup(vsn, kind="full")
    assert out["parent"] is None
    for volume in ("webdata", "dbdata"):
        why = out["full_reasons"][volume]
        assert "tree state" in why and inc["snapshot_id"] in why and "sha256" in why, why
    check_restore(vsn, out["snapshot_id"], tmp_path / "back")
    # The new chain goes on from the new full.
    change(www, 3)
    nxt = backup(vsn, kind="incremental", parent=out["snapshot_id"])
    check_restore(vsn, nxt["snapshot_id"], tmp_path / "next")


def test_tampered_tree_state_with_local_record_is_not_read(vsn, secrets, tmp_path):
    """Observed behaviour: with the local record naming the parent and the manifest's sha256, backup takes
    the tree state from the record and checks the store's copy for presence and size only. A same-size
    tampered copy therefore does not stop an incremental (whose restore is right: restore never reads
    tree states); `verify --read-data` of the parent is what finds it, and a `restore --dry-run` of it
    refuses it."""
    store, www, full, inc = full_then_incremental(vsn, secrets, tmp_path)
    tampered = store_dir(tmp_path, inc["snapshot_id"]) / "webdata.tree.zst"
    flip_bytes(tampered)
    change(www, 2)
    out = backup(vsn, kind="incremental", parent=inc["snapshot_id"])
    assert out["full_reasons"] == {}
    assert "webdata: incremental on" in out["stderr"] and "tree state from the local record" in out["stderr"]
    check_restore(vsn, out["snapshot_id"], tmp_path / "back")
    assert run_json(vsn, "verify", "latest", "--read-data")["ok"] is True  # the latest's own trees are fine
    damaged = run_json(vsn, "verify", inc["snapshot_id"], "--read-data", expect=6)
    assert "webdata.tree.zst" in damaged["message"] and "sha256" in damaged["message"]
    assert run_json(vsn, "verify", "all", "--read-data", expect=6)["message"].count("webdata.tree.zst") == 1
    dry = run_json(vsn, "restore", inc["snapshot_id"], "--dry-run", expect=6)
    assert "webdata.tree.zst" in dry["message"]
    # A truncated copy (size no longer the manifest's) is caught even with the record: the record's
    # snapshot is then no longer continued.
    newest = store_dir(tmp_path, out["snapshot_id"]) / "webdata.tree.zst"
    newest.write_bytes(newest.read_bytes()[:-1])
    change(www, 3)
    last = backup(vsn, kind="incremental", parent=out["snapshot_id"])
    assert "tree state" in last["full_reasons"]["webdata"]
    assert last["volumes"]["dbdata"]["incremental"] is True and last["volumes"]["webdata"]["incremental"] is False
    check_restore(vsn, last["snapshot_id"], tmp_path / "last")


def test_manifest_rewritten_with_another_tree_state_disagrees_with_the_record(vsn, secrets, tmp_path):
    """Someone with write access to the store replays an older genuine tree state in the newest snapshot
    and rewrites its manifest to match (size, sha256): the store is self-consistent, but this VSN's record
    of that snapshot names another tree state, so the volume is captured whole."""
    store, www, full, inc = full_then_incremental(vsn, secrets, tmp_path)
    older, newest = store_dir(tmp_path, full["snapshot_id"]), store_dir(tmp_path, inc["snapshot_id"])
    shutil.copyfile(older / "webdata.tree.zst", newest / "webdata.tree.zst")
    manifest = json.loads((newest / "manifest.json").read_text())
    replayed = next(t for t in json.loads((older / "manifest.json").read_text())["trees"] if t["volume"] == "webdata")
    manifest["trees"] = [replayed if t["volume"] == "webdata" else t for t in manifest["trees"]]
    (newest / "manifest.json").write_text(json.dumps(manifest))
    assert run_json(vsn, "verify", "latest", "--read-data")["ok"] is True  # nothing in the store tells
    change(www, 2)
    out = backup(vsn, parent=inc["snapshot_id"])
    assert out["volumes"]["webdata"]["incremental"] is False and out["volumes"]["dbdata"]["incremental"] is True
    assert "another tree state" in out["full_reasons"]["webdata"], out["full_reasons"]
    check_restore(vsn, out["snapshot_id"], tmp_path / "back")


def test_encrypted_chain_read_from_the_store_needs_the_identity(vsn, secrets, tmp_path):
    """Encrypted snapshots: without the local record the tree state comes from the store, decrypted with
    backup.encryption.identity_file; a plan without an identity cannot read it and takes a full."""
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line)
    store = f"file://{tmp_path}/store"
    raw = deploy(vsn, secrets, tmp_path, [store], encryption={"age_recipients": [recipient],
                                                              "identity_file": str(key)})
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    change(www, 1)
    inc = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    tree_object = store_dir(tmp_path, inc["snapshot_id"]) / "webdata.tree.zst.age"
    assert b"new-1.txt" not in tree_object.read_bytes()  # the tree state names paths: sealed like the data
    shutil.rmtree(vsn.state_dir / "chain" / VSN)
    change(www, 2)
    again = backup(vsn, kind="incremental", parent=inc["snapshot_id"])
    assert "tree state from the store" in again["stderr"] and again["full_reasons"] == {}
    check_restore(vsn, again["snapshot_id"], tmp_path / "back")

    del raw["backup"]["encryption"]["identity_file"]
    no_identity = write_json(tmp_path / "plan-no-identity.json", raw)
    shutil.rmtree(vsn.state_dir / "chain" / VSN)
    change(www, 3)
    result = vsn.migrator("backup", "--plan", str(no_identity), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["kind"] == "full" and out["parent"] is None
    assert all("identity" in why for why in out["full_reasons"].values()), out["full_reasons"]
    check_restore(vsn, out["snapshot_id"], tmp_path / "full", "--identity", str(key))


# -- 6. a parent object deleted behind migrator's back --------------------------------------------------

def test_missing_parent_object(vsn, secrets, tmp_path):
    store, www, full, inc = full_then_incremental(vsn, secrets, tmp_path)
    (store_dir(tmp_path, full["snapshot_id"]) / "webdata.1.tar.zst").unlink()
    change(www, 2)
    out = backup(vsn)  # the local record names `inc`: it must not stand in for the store's objects
    why = out["full_reasons"]["webdata"]
    assert f"{full['snapshot_id']}/webdata.1.tar.zst" in why and "missing" in why, why
    assert out["volumes"]["webdata"]["incremental"] is False
    # dbdata's chain is intact: it continues (a per-volume decision)
    assert out["volumes"]["dbdata"]["incremental"] is True and out["parent"] == inc["snapshot_id"]
    restored = check_restore(vsn, out["snapshot_id"], tmp_path / "back")
    assert restored["chain"]["webdata"] == [out["snapshot_id"]]
    damaged = vsn.migrator("restore", inc["snapshot_id"], "--into", str(tmp_path / "damaged"), "--json")
    assert damaged.returncode == 6, damaged.stderr
    message = json.loads(damaged.stdout)["message"]
    assert "webdata.1.tar.zst" in message and full["snapshot_id"] in message
    assert not (tmp_path / "damaged" / "webdata").exists()
    rows = {r["id"]: r for r in listed(vsn)}
    assert rows[inc["snapshot_id"]]["restore_size"] is not None  # sizes come from manifests
    assert run_json(vsn, "verify", inc["snapshot_id"], expect=6)["message"].count("webdata.1.tar.zst") == 1


# -- the policy -----------------------------------------------------------------------------------------

def test_policy_full_when_deltas_exceed_and_full_every(vsn, secrets, tmp_path):
    store = f"file://{tmp_path}/store"
    deploy(vsn, secrets, tmp_path, [store], full_when_deltas_exceed=0.5)
    www = vsn.data_root / "webdata" / "www"
    full = backup(vsn, kind="full")
    (www / "big.bin").write_bytes(os.urandom(BIG))  # rewritten whole: the delta is as big as the full
    inc = backup(vsn, kind="incremental", parent=full["snapshot_id"])
    assert delta_bytes(inc, "webdata") > BIG
    change(www, 1)
    out = backup(vsn)
    assert out["volumes"]["webdata"]["incremental"] is False
    assert "add up to" in out["full_reasons"]["webdata"], out["full_reasons"]
    check_restore(vsn, out["snapshot_id"], tmp_path / "back")
    # full_every 0: every snapshot is full
    raw = json.loads((vsn.state_dir / "plan.json").read_text())
    raw["backup"]["full_every"] = 0
    plan = write_json(tmp_path / "plan0.json", raw)
    change(www, 2)
    result = vsn.migrator("backup", "--plan", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr
    zero = json.loads(result.stdout)
    assert zero["kind"] == "full" and all("full_every is 0" in w for w in zero["full_reasons"].values())
