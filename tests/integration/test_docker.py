"""Every flow on a real Docker Engine (dockerd 20.10 + containerd, private, in its own network namespace):
deploy flat and with a Host container running nested podman in a privileged Docker container, status,
upgrade, backup (two-phase with network holders), restore, drill, recover after a kill, teardown; and
`check` naming what a Docker VSN lacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.lab.docker import start_dockerd
from tests.lab.fingerprint import fingerprint
from tests.lab.plans import demo_plan, web_port
from tests.lab.vsn import write_json


def seed(vsn) -> None:
    www = vsn.data_root / "webdata" / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text("docker page")
    (www / "private.key").write_text("0600 and odd owner")
    (www / "private.key").chmod(0o600)
    os.chown(www / "private.key", 1234, 5678)
    (www / "link").symlink_to("index.html")
    os.link(www / "index.html", www / "hard")


def deploy(vsn, secrets, tmp_path, *, host: bool):
    raw = demo_plan(vsn, host=host)
    plan = write_json(tmp_path / "plan.json", raw)
    seed(vsn)
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    return raw, plan


def run_json(vsn, *args, expect=0, env=None):
    result = vsn.migrator(*args, "--json", env=env)
    assert result.returncode == expect, result.stderr + result.stdout
    return json.loads(result.stdout)


@pytest.mark.parametrize("host", [False, True], ids=["flat", "host"])
def test_deploy_backup_restore_upgrade_teardown_on_docker(docker_vsn, secrets, tmp_path, host):
    vsn = docker_vsn
    raw, plan = deploy(vsn, secrets, tmp_path, host=host)
    # The stack runs on the Docker daemon: flat, every container there; with a Host, only the Host (a
    # privileged Docker container whose nested podman runs the rest).
    containers = vsn.containers()
    if host:
        assert containers == {raw["host"]["name"]: "running"}
    else:
        assert {k: v for k, v in containers.items() if k in ("web", "db", "web-netns", "db-netns")} == {
            "web": "running", "db": "running", "web-netns": "running", "db-netns": "running"}
        assert containers["webdata"] == "created"  # volumes_from against a created container
    assert vsn.http_get(web_port(raw)) == "docker page"
    status = run_json(vsn, "status")
    assert status["state"] == "running"

    store = f"file://{tmp_path}/store"
    backup = run_json(vsn, "backup", "--to", store)
    snap = backup["snapshot_id"] if "snapshot_id" in backup else backup["snapshots"][0]["id"]
    before = fingerprint(vsn.data_root / "webdata")
    # Damage the live data, then restore: the tree comes back byte for byte, owners and links included.
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("defaced")
    (vsn.data_root / "webdata" / "www" / "private.key").unlink()
    restored = vsn.migrator("restore", snap, "--from", store, "--json")
    assert restored.returncode == 0, restored.stderr + restored.stdout
    assert fingerprint(vsn.data_root / "webdata") == before
    assert vsn.http_get(web_port(raw)) == "docker page"
    health = vsn.migrator("health", "--json")
    assert health.returncode == 0, health.stdout + health.stderr

    # A hotfix: the web container is replaced by one from another image; data and address stay.
    upgraded = vsn.migrator("upgrade", "web", "--image", "localhost/migrator-httpd:latest", "--json")
    assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout
    assert vsn.http_get(web_port(raw)) == "docker page"

    assert vsn.migrator("teardown").returncode == 0
    assert vsn.containers() == {}
    assert fingerprint(vsn.data_root / "webdata") == before


def test_drill_and_recover_after_a_killed_backup_on_docker(docker_vsn, secrets, tmp_path):
    vsn = docker_vsn
    raw, _ = deploy(vsn, secrets, tmp_path, host=False)
    store = f"file://{tmp_path}/store"
    run_json(vsn, "backup", "--to", store)
    drill = run_json(vsn, "drill", "--from", store)
    assert drill["ok"] is True if "ok" in drill else drill
    # Production untouched by the drill.
    assert vsn.containers()["web"] == "running" and vsn.http_get(web_port(raw)) == "docker page"

    # SIGKILL with the services stopped: recover starts them again (docker's `exited` state).
    killed = vsn.migrator("backup", "--to", store, env=dict(vsn.env(), MIGRATOR_KILL_AT="backup.services-stopped"))
    assert killed.returncode == -9
    stopped = vsn.containers()
    assert stopped["db"] != "running"
    recovered = vsn.migrator("recover")
    assert recovered.returncode == 0, recovered.stderr
    after = vsn.containers()
    assert after["db"] == "running" and after["web"] == "running"
    assert vsn.http_get(web_port(raw)) == "docker page"
    listed = run_json(vsn, "snapshots", "--from", store, "--vsn", raw["vsn"]["name"])
    assert len(listed["snapshots"]) == 1  # the killed one left nothing listed


def _check(vsn, plan, *, env=None, prefix=()):
    proc = subprocess.run([*prefix, *vsn.migrator_argv(), "check", str(plan), "--json"], env=env or vsn.env(),
                          capture_output=True, text=True, timeout=120)
    return proc, json.loads(proc.stdout)


def _without_secrets(raw: dict) -> dict:
    """`check` of a plan needs no secrets file when the plan references none."""
    for svc in raw["services"]:
        svc.pop("env_secrets", None)
    return raw


def _by_name(out) -> dict:
    """Each check by name, {ok, detail}: a passing run lists them all, a failing one its failures."""
    if "checks" in out:
        return {c["name"]: c for c in out["checks"]}
    return {line.split(": ", 1)[0]: {"ok": False, "detail": line.split(": ", 1)[1]} for line in out["details"]}


def test_check_names_what_a_docker_vsn_lacks(docker_vsn, tmp_path):
    vsn = docker_vsn
    raw = _without_secrets(demo_plan(vsn, host=True))
    plan = write_json(tmp_path / "plan.json", raw)
    proc, out = _check(vsn, plan)
    assert proc.returncode == 0, proc.stdout
    checks = _by_name(out)
    assert checks["engine storage driver"]["ok"] and checks["engine storage driver"]["detail"] == "overlay2"
    assert checks["engine cgroup driver"]["ok"] and checks["engine cgroup driver"]["detail"].startswith("cgroupfs")

    # Daemon down: no socket there.
    raw["vsn"]["socket"] = f"unix://{tmp_path}/gone.sock"
    proc, out = _check(vsn, write_json(tmp_path / "down.json", raw))
    assert proc.returncode == 4
    engine = _by_name(out)["engine docker"]
    assert not engine["ok"] and "daemon is not running" in engine["detail"] and "start dockerd" in engine["detail"]

    # Socket permission: a user who may not open the daemon's socket (mode 0660 root:root).
    raw["vsn"]["socket"] = vsn.socket_url
    public = Path(tempfile.mkdtemp(prefix="dkperm", dir="/tmp"))  # pytest's tmp_path is root's alone
    try:
        public.chmod(0o755)
        raw["vsn"]["data_root"] = str(public / "data")
        plan = write_json(public / "perm.json", raw)
        plan.chmod(0o644)
        env = dict(vsn.env(), MIGRATOR_STATE_DIR=str(public / "state"), HOME=str(public))
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                               sys.executable, "-m", "migrator", "check", str(plan), "--json"], env=env,
                              capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    engine = _by_name(json.loads(proc.stdout))["engine docker"]
    assert not engine["ok"] and "permission denied" in engine["detail"] and "root" in engine["detail"]


def test_check_refuses_a_storage_driver_the_host_container_cannot_use(tmp_path):
    """A real dockerd on vfs (no images needed: check only asks the daemon)."""
    daemon = start_dockerd(bridge=False, storage_driver="vfs")
    try:
        vsn_env = dict(os.environ, MIGRATOR_STATE_DIR=str(tmp_path / "state"))
        raw = _without_secrets(demo_plan(type("V", (), {"socket_url": daemon.socket_url, "engine": "docker",
                                                        "data_root": tmp_path / "data"})(), host=True))
        plan = write_json(tmp_path / "plan.json", raw)
        argv = [*daemon.enter(), sys.executable, "-m", "migrator", "check", str(plan), "--json"]
        proc = subprocess.run(argv, env=vsn_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        storage = _by_name(json.loads(proc.stdout))["engine storage driver"]
        assert not storage["ok"] and storage["detail"].startswith("vfs: the Host container needs")
        assert "overlay2" in storage["detail"] and "daemon.json" in storage["detail"]
        # A flat plan runs on vfs (slowly, but it runs): not a failure.
        raw.pop("host")
        proc = subprocess.run(argv[:-2] + [str(write_json(tmp_path / "flat.json", raw)), "--json"], env=vsn_env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout
        assert _by_name(json.loads(proc.stdout))["engine storage driver"] == {
            "name": "engine storage driver", "ok": True, "detail": "vfs"}
    finally:
        daemon.stop()


def test_os_update_archive_unarchive_cleanup_on_docker(docker_vsn, secrets, tmp_path):
    vsn = docker_vsn
    raw = demo_plan(vsn, host=False)
    raw["backup"] = {"targets": [f"file://{tmp_path}/store"]}
    plan = write_json(tmp_path / "plan.json", raw)
    seed(vsn)
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets)).returncode == 0
    before = fingerprint(vsn.data_root / "webdata")

    prepared = run_json(vsn, "os-update", "prepare")
    assert prepared["snapshot_id"] and vsn.containers() == {}  # containerless while the OS is updated
    finished = run_json(vsn, "os-update", "finish")
    assert finished["differences"] == [] and set(finished["health"]) == {"db", "web"}
    assert vsn.http_get(web_port(raw)) == "docker page"

    run_json(vsn, "archive")
    assert vsn.containers() == {} and fingerprint(vsn.data_root / "webdata") == before
    assert run_json(vsn, "status")["stack_state"] == "Archived"
    run_json(vsn, "unarchive")
    assert vsn.http_get(web_port(raw)) == "docker page"
    assert run_json(vsn, "status")["stack_state"] == "Running"

    run_json(vsn, "cleanup", "--yes", "--no-snapshot")
    assert vsn.containers() == {}
    assert not (vsn.data_root / "webdata").exists()


def test_the_event_stream_dependents_follow_reads_on_docker(docker_vsn, docker_daemon):
    """`serve --follow-dependents` wakes on the engine's /events: on dockerd (its own event shapes, its
    `since` replay) a labelled container's restart arrives as restart/die/start with its name, a container
    of another stack does not, and a replay from before the restart sees it again."""
    from migrator.engine.docker import DockerEngine
    from migrator.engine.watch import EventStream
    from tests.lab.plans import IMAGES

    engine = DockerEngine(docker_daemon.socket_url)
    got: list = []
    started = int(time.time()) - 1
    stream = EventStream(engine.exec_api(), {"io.migrator.stack": "evt"})
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    try:
        for name, stack in (("evt-a", "evt"), ("evt-b", "other")):
            docker_daemon.docker("run", "-d", "--name", name, "--label", f"io.migrator.stack={stack}",
                                 IMAGES["busybox"], "sleep", "600")
        docker_daemon.docker("restart", "-t", "1", "evt-b")
        docker_daemon.docker("restart", "-t", "1", "evt-a")
        deadline = time.monotonic() + 60
        while not [e for e in got if e.action == "restart"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stream.close()
        reader.join(timeout=10)
    assert {e.name for e in got} == {"evt-a"}
    actions = [e.action for e in got]
    assert actions[0] == "start" and {"die", "restart"} <= set(actions) and actions.count("start") == 2
    assert all(started <= e.at <= time.time() + 1 for e in got)

    replay = EventStream(engine.exec_api(), {"io.migrator.stack": "evt"}, since=started)
    replayed: list = []
    reader = threading.Thread(target=lambda: replayed.extend(replay), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while len(replayed) < len(got) and time.monotonic() < deadline:
        time.sleep(0.2)
    replay.close()
    reader.join(timeout=10)
    engine.close()
    assert [(e.name, e.action) for e in replayed[:len(got)]] == [(e.name, e.action) for e in got]
