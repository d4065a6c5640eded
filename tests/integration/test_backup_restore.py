"""backup -> snapshots -> verify -> restore against real podman stacks and a file:// store; faults."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.lab.docker import both_engines
from tests.lab.fingerprint import fingerprint
from tests.lab.plans import demo_plan, web_port
from tests.lab.vsn import write_json


def web_tree(www: Path, page: str) -> None:
    """Web content with the entries a snapshot must carry exactly: an owner and mode of its own, names
    with spaces and non-ASCII, hard links, a symlink, an empty directory."""
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text(page)
    (www / "secret.conf").write_text("mode 0600 file")
    (www / "secret.conf").chmod(0o600)
    os.chown(www / "secret.conf", 1234, 5678)
    (www / "dir with spaces" / "ünïcödé").mkdir(parents=True)
    (www / "dir with spaces" / "ünïcödé" / "f").write_text("x")
    (www / "hard").write_text("linked")
    os.link(www / "hard", www / "hard2")
    (www / "sym").symlink_to("index.html")
    (www / "empty").mkdir()


@pytest.fixture()
def stack(vsn, secrets, tmp_path):
    """A deployed flat demo stack (db writer + web) with static web content; returns (raw plan, store URL)."""
    raw = demo_plan(vsn, host=False)
    plan = write_json(tmp_path / "plan.json", raw)
    web_tree(vsn.data_root / "webdata" / "www", "the real page")
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr
    return raw, f"file://{tmp_path}/store"


def run_json(vsn, *args, expect=0):
    result = vsn.migrator(*args, "--json")
    assert result.returncode == expect, result.stderr + result.stdout
    return json.loads(result.stdout)


def counter_consistent(data: Path) -> bool:
    """The writer rewrites state/counter to the number of its last log line: a torn copy breaks this."""
    last = (data / "log.txt").read_text().splitlines()[-1].split()[0]
    return (data / "state" / "counter").read_text().strip() == last


def started_and_address(vsn, name: str) -> tuple[str, str]:
    fmt = "{{.State.StartedAt}}|{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    started, address = vsn.podman("inspect", "--format", fmt, name).stdout.strip().split("|")
    return started, address


def test_backup_two_phase_then_restore_round_trip(vsn, stack):
    raw, store = stack
    web_before = fingerprint(vsn.data_root / "webdata")
    db_started = started_and_address(vsn, "db")[0]
    holders = {n: started_and_address(vsn, n) for n in ("db-netns", "web-netns")}
    assert all(address.strip() for _, address in holders.values())
    snap = run_json(vsn, "backup", "--to", store, "--tag", "nightly")
    # The writers were stopped and started again; their network namespaces were not: the same holder
    # processes, the same addresses.
    assert started_and_address(vsn, "db")[0] != db_started
    assert {n: started_and_address(vsn, n) for n in holders} == holders
    assert snap["volumes"]["dbdata"]["mode"] == "two-phase"
    names = {o["name"] for o in snap["objects"]}
    assert {"dbdata.1.tar.zst", "dbdata.2.tar.zst", "webdata.1.tar.zst", "webdata.2.tar.zst"} <= names
    assert set(snap["downtime"]) == {"db", "web"}  # the manifest records each writer's downtime
    for name, steps in snap["downtime_steps"].items():  # and --json says where it went
        assert set(steps) == {"stop", "stopped", "settle", "start", "healthy"}
        assert sum(steps.values()) == pytest.approx(snap["downtime"][name], abs=0.005)
    assert vsn.containers()["db"] == "running" and vsn.containers()["web"] == "running"
    assert "pa55-w0rd" not in json.dumps(snap)

    listed = run_json(vsn, "snapshots", "--from", store)
    assert [s["id"] for s in listed["snapshots"]] == [snap["snapshot_id"]]
    assert listed["snapshots"][0]["tags"] == ["nightly"]
    # every archive object and each volume's tree state, all re-hashed
    checked = run_json(vsn, "verify", "latest", "--from", store, "--read-data")
    assert checked["objects"] == checked["read"] == len(snap["objects"]) + len(snap["volumes"])
    snap_dir = Path(store[len("file://"):]) / raw["vsn"]["name"] / snap["snapshot_id"]
    plan_copy = (snap_dir / "plan.json").read_text()
    assert "db_password" in plan_copy and "pa55-w0rd" not in plan_copy  # references only

    # Containerless, wipe everything, restore: web data exact, db data a consistent stopped-state copy.
    assert vsn.migrator("teardown").returncode == 0
    live_log = (vsn.data_root / "dbdata" / "data" / "log.txt").read_bytes()
    subprocess.run(["rm", "-rf", str(vsn.data_root / "dbdata"), str(vsn.data_root / "webdata")], check=True)
    restored = run_json(vsn, "restore", "latest", "--from", store)
    assert sorted(restored["volumes"]) == ["dbdata", "webdata"]
    assert fingerprint(vsn.data_root / "webdata") == web_before
    data = vsn.data_root / "dbdata" / "data"
    assert live_log.startswith((data / "log.txt").read_bytes())
    assert counter_consistent(data)
    assert (data / "precious").exists() is False
    www = vsn.data_root / "webdata" / "www"
    assert os.stat(www / "hard").st_ino == os.stat(www / "hard2").st_ino
    assert os.readlink(www / "sym") == "index.html"

    # Redeploy on the restored data: the page comes back.
    plan = vsn.state_dir / "plan.json"
    redeploy = vsn.migrator("deploy", str(plan), "--secrets", str(json.loads(
        (vsn.state_dir / "deployment.json").read_text())["secrets"]))
    assert redeploy.returncode == 0, redeploy.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port(raw)}/", timeout=10) as resp:
        assert resp.read() == b"the real page"


def test_restore_single_volume_into_and_on_a_fresh_machine(vsn, stack, tmp_path):
    raw, store = stack
    snap = run_json(vsn, "backup", "--to", store)
    # --into: another tree, no container touched.
    before = vsn.containers()
    out = run_json(vsn, "restore", snap["snapshot_id"], "--from", store, "--volume", "webdata",
                   "--into", str(tmp_path / "copy"))
    assert out["volumes"] == ["webdata"]
    assert fingerprint(tmp_path / "copy" / "webdata") == fingerprint(vsn.data_root / "webdata")
    assert not (tmp_path / "copy" / "dbdata").exists()
    assert vsn.containers() == before
    # A machine where nothing was ever deployed: the snapshot's own plan says where the data goes.
    fresh = dict(vsn.env(), MIGRATOR_STATE_DIR=str(tmp_path / "fresh-state"))
    result = vsn.migrator("restore", "latest", "--from", store, "--vsn", raw["vsn"]["name"],
                          "--into", str(tmp_path / "elsewhere"), "--json", env=fresh)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "dbdata" / "data" / "log.txt").exists()


@both_engines
def test_corrupted_object_exit_6_and_live_data_untouched(vsn, stack):
    raw, store = stack
    snap = run_json(vsn, "backup", "--to", store)
    obj = Path(store[len("file://"):]) / raw["vsn"]["name"] / snap["snapshot_id"] / "webdata.1.tar.zst"
    blob = bytearray(obj.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit
    obj.write_bytes(bytes(blob))
    assert vsn.migrator("verify", "latest", "--from", store).returncode == 0  # sizes still match
    assert vsn.migrator("verify", "latest", "--from", store, "--read-data").returncode == 6
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("changed after the backup")
    live = fingerprint(vsn.data_root / "webdata")
    result = vsn.migrator("restore", "latest", "--from", store, "--json")
    assert result.returncode == 6, result.stderr
    assert fingerprint(vsn.data_root / "webdata") == live
    assert not [p for p in vsn.data_root.iterdir() if "restore" in p.name]  # staging removed
    assert vsn.containers()["web"] == "running"


def test_disk_error_flushing_the_staged_data_keeps_live_data(vsn, stack):
    """The staged tree is flushed to disk (syncfs) before it replaces live data. A disk that fails that flush
    cannot be made here, so MIGRATOR_FAIL_AT makes the flush raise the kernel's EIO (faults.failpoint)."""
    raw, store = stack
    run_json(vsn, "backup", "--to", store)
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("changed after the backup")
    live = fingerprint(vsn.data_root / "webdata")
    result = vsn.migrator("restore", "latest", "--from", store, env=dict(vsn.env(), MIGRATOR_FAIL_AT="restore.sync"))
    assert result.returncode == 1, result.stderr
    assert "cannot make the staged data" in result.stderr and "durable" in result.stderr
    assert fingerprint(vsn.data_root / "webdata") == live
    assert not [p for p in vsn.data_root.iterdir() if "restore" in p.name]  # staging removed
    assert vsn.containers()["web"] == "running"
    assert not (vsn.state_dir / "journal.json").exists()


def test_missing_object_exit_6(vsn, stack):
    raw, store = stack
    snap = run_json(vsn, "backup", "--to", store)
    (Path(store[len("file://"):]) / raw["vsn"]["name"] / snap["snapshot_id"] / "dbdata.2.tar.zst").unlink()
    assert vsn.migrator("verify", "latest", "--from", store).returncode == 6
    assert vsn.migrator("restore", "latest", "--from", store).returncode == 6


def test_killed_backup_leaves_no_snapshot_and_services_come_back(vsn, stack):
    raw, store = stack
    for point in ("backup.services-stopped", "backup.before-manifest"):
        env = dict(vsn.env(), MIGRATOR_KILL_AT=point)
        killed = vsn.migrator("backup", "--to", store, env=env)
        assert killed.returncode == -9, (point, killed.stderr)
        if point == "backup.services-stopped":
            assert vsn.containers()["db"] in ("stopped", "exited")  # the dead run left the writer stopped
        assert run_json(vsn, "snapshots", "--from", store)["snapshots"] == []  # nothing half-written listed
        recovered = run_json(vsn, "recover")
        assert recovered["recovered"] is True
        assert vsn.containers()["db"] == "running" and vsn.containers()["web"] == "running"
        assert list((vsn.state_dir / "spool").glob("2*")) == [], point  # its local spool is gone too
    # The next backup works and lists exactly one snapshot; prune removes old debris only when asked.
    run_json(vsn, "backup", "--to", store)
    assert len(run_json(vsn, "snapshots", "--from", store)["snapshots"]) == 1


def test_any_next_command_recovers_first(vsn, stack):
    raw, store = stack
    env = dict(vsn.env(), MIGRATOR_KILL_AT="backup.services-stopped")
    assert vsn.migrator("backup", "--to", store, env=env).returncode == -9
    # Its processes are gone; podman's clean-up may still be finishing ("stopped") when the run died.
    assert vsn.containers()["db"] in ("stopped", "exited")
    run_json(vsn, "backup", "--to", store)  # recovers, then backs up
    assert vsn.containers()["db"] == "running"


@both_engines
def test_killed_restore_is_entirely_old_or_entirely_new(vsn, stack):
    raw, store = stack
    run_json(vsn, "backup", "--to", store)
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("newer than the snapshot")
    old = fingerprint(vsn.data_root / "webdata")
    env = dict(vsn.env(), MIGRATOR_KILL_AT="restore.swapped")
    assert vsn.migrator("restore", "latest", "--from", store, "--volume", "webdata", env=env).returncode == -9
    run_json(vsn, "recover")
    assert fingerprint(vsn.data_root / "webdata") == old  # the unconfirmed swap was undone
    assert not [p for p in vsn.data_root.iterdir() if "restore" in p.name]
    assert vsn.containers()["web"] == "running"


def test_unreachable_store_exit_8_nothing_stopped(vsn, stack):
    result = vsn.migrator("backup", "--to", "ssh://nobody@127.0.0.1:1/backups", "--json")
    assert result.returncode == 8, result.stderr
    assert vsn.containers()["db"] == "running"


def test_second_backup_while_one_runs_exits_5(vsn, stack):
    import fcntl

    raw, store = stack
    fd = os.open(vsn.state_dir / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert vsn.migrator("backup", "--to", store).returncode == 5
    finally:
        os.close(fd)


def test_prune_gfs_and_dry_run(vsn, stack):
    raw, store = stack
    # Full snapshots: GFS alone (chain-aware prune, which keeps a kept snapshot's parents, is
    # test_incremental's; whether these small backups went incremental depended on their sizes).
    ids = [run_json(vsn, "backup", "--to", store, "--full")["snapshot_id"] for _ in range(3)]
    dry = run_json(vsn, "prune", "--from", store, "--keep-last", "1", "--dry-run")
    assert dry["remove"] == [ids[1], ids[0]]
    assert len(run_json(vsn, "snapshots", "--from", store)["snapshots"]) == 3
    run_json(vsn, "prune", "--from", store, "--keep-last", "1")
    assert [s["id"] for s in run_json(vsn, "snapshots", "--from", store)["snapshots"]] == [ids[2]]
    assert vsn.migrator("prune", "--from", store).returncode in (2,)  # no retention anywhere: refused


@both_engines
def test_encrypted_snapshot_round_trip(vsn, secrets, tmp_path):
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line)
    raw = demo_plan(vsn, host=False)
    raw["backup"] = {"targets": [f"file://{tmp_path}/store"], "encryption": {"age_recipients": [recipient]}}
    plan = write_json(tmp_path / "plan.json", raw)
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets)).returncode == 0
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("encrypted page")
    snap = run_json(vsn, "backup")
    assert snap["encrypted"] and all(o["name"].endswith(".age") for o in snap["objects"])
    obj = tmp_path / "store" / raw["vsn"]["name"] / snap["snapshot_id"] / "webdata.1.tar.zst.age"
    assert b"encrypted page" not in obj.read_bytes()
    no_key = vsn.migrator("restore", "latest", "--into", str(tmp_path / "x"))
    assert no_key.returncode == 2 and "identity" in no_key.stderr
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    wrong = vsn.migrator("restore", "latest", "--into", str(tmp_path / "y"), "--identity", str(other))
    assert wrong.returncode != 0 and not (tmp_path / "y" / "webdata").exists()
    ok = vsn.migrator("restore", "latest", "--into", str(tmp_path / "z"), "--identity", str(key))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "z" / "webdata" / "www" / "index.html").read_text() == "encrypted page"


def test_host_container_plan_backup_and_in_place_restore(vsn, secrets, tmp_path):
    raw = demo_plan(vsn, host=True)
    plan = write_json(tmp_path / "plan.json", raw)
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets))
    assert result.returncode == 0, result.stderr
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("version 1")
    store = f"file://{tmp_path}/store"
    run_json(vsn, "backup", "--to", store)
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("version 2")
    url = f"http://127.0.0.1:{web_port(raw)}/"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"version 2"
    out = run_json(vsn, "restore", "latest", "--from", store, "--volume", "webdata")
    assert "web" in out["downtime"]  # the service mounting webdata was stopped for the swap
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"version 1"  # the running service sees the swapped-in data
    assert not [p for p in vsn.data_root.iterdir() if "pre-restore" in p.name]  # old dir removed


def test_drill_passes_on_healthy_snapshot_without_touching_production(vsn, stack):
    raw, store = stack
    run_json(vsn, "backup", "--to", store)
    before = {n: vsn.podman("inspect", "--format", "{{.Id}}", n).stdout.strip() for n in ("db", "web")}
    live = fingerprint(vsn.data_root / "webdata")
    out = run_json(vsn, "drill", "--from", store)
    assert out["ok"] is True
    assert out["rto_data_s"] <= out["rto_healthy_s"]
    assert all(r["ok"] for r in out["services"].values()) and len(out["services"]) == 2
    # Production untouched; the drill stack and its scratch data are gone.
    assert {n: vsn.podman("inspect", "--format", "{{.Id}}", n).stdout.strip() for n in ("db", "web")} == before
    assert set(vsn.containers()) == {"db", "web", "dbdata", "webdata", "db-netns", "web-netns"}
    assert fingerprint(vsn.data_root / "webdata") == live
    assert not Path(out["scratch"]).exists()


@both_engines
def test_drill_fails_when_a_service_cannot_become_healthy(vsn, secrets, tmp_path):
    # web probes /health.html from its volume; the snapshot is taken after that file was deleted, so the
    # restored service can never become healthy (quiesce "none": the backup itself does not restart it).
    raw = demo_plan(vsn, host=False)
    web = next(s for s in raw["services"] if s["name"] == "web")
    web["health"].update({"path": "/health.html", "timeout": 5})
    web["quiesce"] = "none"
    (vsn.data_root / "webdata" / "www").mkdir(parents=True)
    (vsn.data_root / "webdata" / "www" / "health.html").write_text("ok")
    plan = write_json(tmp_path / "plan.json", raw)
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets)).returncode == 0
    (vsn.data_root / "webdata" / "www" / "health.html").unlink()
    store = f"file://{tmp_path}/store"
    run_json(vsn, "backup", "--to", store)
    result = vsn.migrator("drill", "--from", store, "--json")
    assert result.returncode != 0
    out = json.loads(result.stdout)
    assert out["ok"] is False and "health.html" in out["message"]
    assert set(vsn.containers()) == {"db", "web", "dbdata", "webdata", "db-netns", "web-netns"}  # drill stack removed
    last = json.loads((vsn.state_dir / "last_drill.json").read_text())
    assert last["ok"] is False and "error" in last


@pytest.mark.parametrize("kind", ["s3", "ssh"])
def test_round_trip_through_s3_and_ssh_stores(vsn, secrets, tmp_path, kind, request):
    """Backup to a real S3 server over HTTP / a real sshd in another network namespace, then restore."""
    raw = demo_plan(vsn, host=False)
    env = vsn.env()
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url = bucket.url("vsn-backups")
        raw["backup"] = {"targets": [url], "s3": {"endpoint_url": bucket.endpoint_url, "region": "us-east-1",
                                                  "sse": "AES256", "storage_class": "STANDARD_IA"}}
        env = dict(vsn.env(), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    else:
        host = request.getfixturevalue("ssh_host")
        url = host.url(f"backups-{tmp_path.name}")
        raw["backup"] = {"targets": [url]}
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "config").write_text(host.ssh_config_file.read_text())
        env = dict(vsn.env(), HOME=str(home))
    plan = write_json(tmp_path / "plan.json", raw)
    (vsn.data_root / "webdata" / "www").mkdir(parents=True)
    (vsn.data_root / "webdata" / "www" / "index.html").write_text(f"stored in {kind}")
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets), env=env).returncode == 0
    backup = vsn.migrator("backup", "--json", env=env)
    assert backup.returncode == 0, backup.stderr
    snap = json.loads(backup.stdout)
    assert snap["targets"] == [url]
    if kind == "s3":
        head = bucket.client().head_object(Bucket=bucket.name,
                                           Key=f"vsn-backups/{raw['vsn']['name']}/{snap['snapshot_id']}/manifest.json")
        assert head["ServerSideEncryption"] == "AES256" and head["StorageClass"] == "STANDARD_IA"
    verify = vsn.migrator("verify", "latest", "--read-data", "--json", env=env)
    assert verify.returncode == 0, verify.stderr
    restored = vsn.migrator("restore", "latest", "--into", str(tmp_path / "back"), "--json", env=env)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(tmp_path / "back" / "webdata") == fingerprint(vsn.data_root / "webdata")
    assert (tmp_path / "back" / "webdata" / "www" / "index.html").read_text() == f"stored in {kind}"
