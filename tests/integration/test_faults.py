"""Fault injection (issue 8): migrator SIGKILLed at every instrumented step, store faults, local faults,
engine faults. After each, the promises hold: services come back, no half-written snapshot is listed,
live data is entirely old or entirely new, nothing outside staging is touched."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time

import pytest

from tests.lab.docker import both_engines
from tests.lab.fingerprint import fingerprint
from tests.lab.plans import demo_plan
from tests.lab.vsn import LAB, write_json


def deployed(vsn, secrets, tmp_path, *, host=False, mutate=None, big=0):
    raw = demo_plan(vsn, host=host)
    if mutate:
        mutate(raw)
    plan = write_json(tmp_path / "plan.json", raw)
    www = vsn.data_root / "webdata" / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text("page")
    if big:
        (www / "big.bin").write_bytes(os.urandom(big))
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr
    return raw, plan


def containers_up(vsn) -> bool:
    c = vsn.containers()
    return c.get("db") == "running" and c.get("web") == "running"


# --- SIGKILL at every instrumented step --------------------------------------------------------------

DEPLOY_POINTS = ["deploy.dropped", "deploy.host-started", "deploy.volumes-created", "deploy.service-healthy.db"]


@both_engines
@pytest.mark.parametrize("point", DEPLOY_POINTS)
def test_killed_deploy_is_rolled_back_by_recover(vsn, secrets, tmp_path, point):
    raw = demo_plan(vsn, host=True)
    plan = write_json(tmp_path / "plan.json", raw)
    (vsn.data_root / "dbdata" / "data").mkdir(parents=True)
    (vsn.data_root / "dbdata" / "data" / "old.db").write_bytes(b"old data" * 100)
    before = fingerprint(vsn.data_root / "dbdata" / "data")
    env = dict(vsn.env(), MIGRATOR_KILL_AT=point)
    killed = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), env=env)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((vsn.state_dir / "journal.json").read_text())["verb"] == "deploy"
    recovered = vsn.migrator("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert "containerless" in " ".join(json.loads(recovered.stdout)["actions"])
    assert vsn.containers() == {}
    assert not (vsn.state_dir / "journal.json").exists()
    after = fingerprint(vsn.data_root / "dbdata" / "data")
    assert {k: v for k, v in after.items() if k in before} == before
    # And the next deploy works.
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets)).returncode == 0


@both_engines
@pytest.mark.parametrize("point", ["backup.phase1-done", "backup.services-stopped", "backup.before-manifest"])
def test_killed_backup_lists_nothing_and_services_return(vsn, secrets, tmp_path, point):
    deployed(vsn, secrets, tmp_path)
    store = f"file://{tmp_path}/store"
    killed = vsn.migrator("backup", "--to", store, env=dict(vsn.env(), MIGRATOR_KILL_AT=point))
    assert killed.returncode == -9
    listed = json.loads(vsn.migrator("snapshots", "--from", store, "--vsn", "t", "--json").stdout)
    assert listed["snapshots"] == []
    assert vsn.migrator("recover").returncode == 0
    assert containers_up(vsn)


@pytest.mark.parametrize("point", ["restore.staged", "restore.swapped"])
def test_killed_restore_leaves_old_data_and_no_debris(vsn, secrets, tmp_path, point):
    deployed(vsn, secrets, tmp_path)
    store = f"file://{tmp_path}/store"
    assert vsn.migrator("backup", "--to", store).returncode == 0
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("newer")
    live = fingerprint(vsn.data_root / "webdata")
    killed = vsn.migrator("restore", "latest", "--from", store, env=dict(vsn.env(), MIGRATOR_KILL_AT=point))
    assert killed.returncode == -9
    assert vsn.migrator("recover").returncode == 0
    assert fingerprint(vsn.data_root / "webdata") == live
    assert [p.name for p in vsn.data_root.iterdir() if "restore" in p.name] == []
    assert containers_up(vsn)


# --- store faults ------------------------------------------------------------------------------------

def s3_plan(bucket_or_proxy_url, bucket):
    def mutate(raw):
        raw["backup"] = {"targets": [bucket.url("faults")], "s3": {"endpoint_url": bucket_or_proxy_url,
                                                                   "region": "us-east-1"}}
    return mutate


def aws_env(vsn):
    return dict(vsn.env(), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")})


def test_s3_transient_faults_are_retried_then_succeed(vsn, secrets, tmp_path, s3_bucket, s3_fault_proxy):
    deployed(vsn, secrets, tmp_path, mutate=s3_plan(s3_fault_proxy.endpoint_url, s3_bucket), big=40 * 1024 * 1024)
    s3_fault_proxy.fail("UploadPart", 2, "503")
    s3_fault_proxy.fail("UploadPart", 1, "reset")
    s3_fault_proxy.fail("PutObject", 1, "500")
    result = vsn.migrator("backup", "--json", env=aws_env(vsn))
    assert result.returncode == 0, result.stderr
    assert s3_fault_proxy.injected["UploadPart"] == 3 and s3_fault_proxy.injected["PutObject"] == 1
    assert vsn.migrator("verify", "latest", "--read-data", env=aws_env(vsn)).returncode == 0
    assert containers_up(vsn)


def test_s3_permanent_fault_commits_nothing_and_keeps_services(vsn, secrets, tmp_path, s3_bucket, s3_fault_proxy):
    deployed(vsn, secrets, tmp_path, mutate=s3_plan(s3_fault_proxy.endpoint_url, s3_bucket), big=40 * 1024 * 1024)
    s3_fault_proxy.fail("CompleteMultipartUpload", 50, "500")
    result = vsn.migrator("backup", "--json", env=aws_env(vsn))
    assert result.returncode == 8, result.stderr
    assert "s3://" in json.loads(result.stdout)["message"]
    listed = vsn.migrator("snapshots", "--json", env=aws_env(vsn))
    assert json.loads(listed.stdout)["snapshots"] == []
    assert containers_up(vsn)
    client = s3_bucket.client()
    assert not client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads")  # aborted, no debris parts


# --- local faults ------------------------------------------------------------------------------------

def test_unreadable_file_is_named_and_services_restart(vsn, secrets, tmp_path):
    def stop_mode(raw):
        for svc in raw["services"]:
            svc["quiesce"] = "stop"  # writers are stopped when the archive fails: they must come back
    deployed(vsn, secrets, tmp_path, mutate=stop_mode)
    secret_file = vsn.data_root / "webdata" / "www" / "locked.db"
    secret_file.write_text("unreadable")
    secret_file.chmod(0o000)
    os.chown(secret_file, 1, 1)
    # Root reads everything; drop the capabilities that let it, as on a filesystem that refuses reads.
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
            "-dac_override,-dac_read_search", "--", *vsn.migrator_argv(), "backup", "--to",
            f"file://{tmp_path}/store", "--json"]
    result = subprocess.run(argv, env=vsn.env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "locked.db" in json.loads(result.stdout)["message"]
    assert containers_up(vsn)


def test_restore_refused_when_the_disk_is_too_small(vsn, secrets, tmp_path):
    deployed(vsn, secrets, tmp_path, big=8 * 1024 * 1024)
    store = f"file://{tmp_path}/store"
    assert vsn.migrator("backup", "--to", store).returncode == 0
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        result = vsn.migrator("restore", "latest", "--from", store, "--into", str(small / "x"), "--json")
        assert result.returncode == 4, result.stderr
        assert "not enough space" in json.loads(result.stdout)["message"]
        assert not any((small / "x").iterdir()) if (small / "x").exists() else True
    finally:
        subprocess.run(["umount", str(small)], check=False)


# --- engine faults -----------------------------------------------------------------------------------

def test_engine_socket_gone_mid_deploy_then_recover(vsn, secrets, tmp_path):
    raw = demo_plan(vsn, host=False)
    web = next(s for s in raw["services"] if s["name"] == "web")
    web["health"].update({"expect_status": 418, "timeout": 60})  # deploy waits here ...
    plan = write_json(tmp_path / "plan.json", raw)
    proc = subprocess.Popen([*vsn.migrator_argv(), "deploy", str(plan), "--secrets", str(secrets), "--json"],
                            env=vsn.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while vsn.containers().get("web") != "running":  # ... while we take its engine away
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    pid = int((vsn.base / "service.pid").read_text())
    os.kill(pid, 9)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (4, 7), err  # engine gone: deploy failed; the rollback could not finish
    assert json.loads((vsn.state_dir / "journal.json").read_text())["verb"] == "deploy"
    restarted = subprocess.run([str(LAB / "vsn.sh"), "start", str(vsn.base)], capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr
    recovered = vsn.migrator("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert vsn.containers() == {}


@both_engines
def test_container_that_ignores_sigterm_is_stopped_by_timeout(vsn, secrets, tmp_path):
    def stubborn(raw):
        db = next(s for s in raw["services"] if s["name"] == "db")
        db["command"] = ["sh", "-c", "trap '' TERM; while :; do echo x >> /data/log.txt; sleep 0.2; done"]
        db["health"] = {"type": "cmd", "command": ["test", "-s", "/data/log.txt"], "timeout": 30}
        db["ports"] = []
        db["stop_timeout"] = 1
        db["quiesce"] = "stop"
    deployed(vsn, secrets, tmp_path, mutate=stubborn)
    result = vsn.migrator("backup", "--to", f"file://{tmp_path}/store", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["downtime"]["db"] >= 1.0  # SIGKILL came after the stop timeout
    assert containers_up(vsn)


# --- remote ------------------------------------------------------------------------------------------

def test_move_refuses_unknown_host_key_and_nonsense_versions(vsn, target_vsn, secrets, tmp_path):
    deployed(vsn, secrets, tmp_path)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(target_vsn.host.ssh_config_file.read_text().replace(
        str(target_vsn.host.known_hosts_file), str(empty)))
    args = ["move", "--to", target_vsn.host.alias, "--ssh-config", str(config), "--remote-migrator",
            target_vsn.remote_migrator(), "--json"]
    unknown = vsn.migrator(*args)
    assert unknown.returncode == 8 and "unknown" in json.loads(unknown.stdout)["message"]
    fake = shlex.join(["python3", "-c", "import json; print(json.dumps({'version': '9.1.0', 'euid': 0, "
                                        "'free_bytes': 1, 'state_dir': '/x'}))"])
    nonsense = vsn.migrator("move", *target_vsn.move_args()[:4], "--remote-migrator", fake, "--json")
    assert nonsense.returncode == 4 and "9.1.0" in json.loads(nonsense.stdout)["message"]
    garbage = vsn.migrator("move", *target_vsn.move_args()[:4], "--remote-migrator", "sh -c 'echo hello' --", "--json")
    assert garbage.returncode == 6 and "nonsense" in json.loads(garbage.stdout)["message"]
    assert containers_up(vsn) and target_vsn.containers() == {}


def test_store_full_fails_cleanly(vsn, secrets, tmp_path):
    deployed(vsn, secrets, tmp_path, big=6 * 1024 * 1024)
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], check=True)
    try:
        result = vsn.migrator("backup", "--to", f"file://{full}/store", "--json")
        assert result.returncode in (1, 8), result.stderr
        message = json.loads(result.stdout)["message"]
        assert "space" in message.lower() or "full" in message.lower(), message
        listed = vsn.migrator("snapshots", "--from", f"file://{full}/store", "--vsn", "t", "--json")
        assert json.loads(listed.stdout)["snapshots"] == []
        assert containers_up(vsn)
        leftovers = [p for p in full.rglob("*") if p.is_file()]
        assert leftovers == [], leftovers  # partial objects were removed
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_ssh_store_connection_dropped_mid_upload(vsn, secrets, tmp_path, ssh_host):
    url = ssh_host.url(f"drop-{tmp_path.name}")

    def to_ssh(raw):
        raw["backup"] = {"targets": [url]}
    deployed(vsn, secrets, tmp_path, mutate=to_ssh, big=200 * 1024 * 1024)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(ssh_host.ssh_config_file.read_text())
    env = dict(vsn.env(), HOME=str(home))
    proc = subprocess.Popen([*vsn.migrator_argv(), "backup", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Wait for an upload in progress (a partial object appears on the store host), then cut SSH.
    remote = ssh_host.local(url[len(f"ssh://{ssh_host.alias}"):])
    deadline = time.monotonic() + 120
    while not any(".partial-" in p.name for p in remote.rglob("*")) if remote.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.05)
    ssh_host.drop_ssh_sessions()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 8, err + out
    assert containers_up(vsn)
    listed = vsn.migrator("snapshots", "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout)["snapshots"] == []
