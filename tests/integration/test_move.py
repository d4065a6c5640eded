"""`migrator move` between two real VSNs: this lab VSN and a second host in its own network and mount
namespaces (own podman, storage, data root), reached only over SSH."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.lab.fingerprint import fingerprint
from tests.lab.plans import demo_plan, web_port
from tests.lab.vsn import write_json


def deploy_source(vsn, secrets, tmp_path, host=True, big_bytes=0, mutate=None):
    raw = demo_plan(vsn, host=host)
    if mutate:
        mutate(raw)
    plan = write_json(tmp_path / "plan.json", raw)
    www = vsn.data_root / "webdata" / "www"
    www.mkdir(parents=True)
    (www / "index.html").write_text("moved page")
    (www / "private.key").write_text("0600 and odd owner")
    (www / "private.key").chmod(0o600)
    os.chown(www / "private.key", 1234, 5678)
    (www / "sub dir").mkdir()
    (www / "sub dir" / "hard").write_text("h")
    os.link(www / "sub dir" / "hard", www / "hard-link")
    (www / "link").symlink_to("index.html")
    if big_bytes:
        with open(www / "big.bin", "wb") as fh:
            fh.write(os.urandom(big_bytes))
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets))
    assert result.returncode == 0, result.stderr
    return raw


def move(vsn, target, *extra, env=None):
    return vsn.migrator("move", *target.move_args(), "--json", *extra, env=env)


def test_move_host_plan_with_a_writer(vsn, target_vsn, secrets, tmp_path):
    raw = deploy_source(vsn, secrets, tmp_path)
    result = move(vsn, target_vsn)
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert out["downtime_s"] > 0 and out["bytes_precopy"] > 0 and out["bytes_delta"] > 0
    assert set(out["health"]) == {"db", "web"}
    # The source is containerless, data kept; the target runs the stack and serves the moved data.
    assert vsn.containers() == {}
    assert target_vsn.containers() == {raw["host"]["name"]: "running"}
    assert target_vsn.http_get(web_port(raw)) == "moved page"
    # Data byte-identical, owners, modes and links included (webdata is static; the target's db writer
    # resumed appending to the log the source wrote).
    assert fingerprint(target_vsn.data_root / "webdata") == fingerprint(vsn.data_root / "webdata")
    moved_log = (target_vsn.data_root / "dbdata" / "data" / "log.txt").read_bytes()
    assert moved_log.startswith((vsn.data_root / "dbdata" / "data" / "log.txt").read_bytes())
    st = os.stat(target_vsn.data_root / "webdata" / "www" / "private.key")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    # Both sides say where the stack lives; the secrets went over SSH with mode 0600.
    assert json.loads((vsn.state_dir / "moved-out.json").read_text())["to"] == target_vsn.host.alias
    status = json.loads(vsn.migrator("status", "--json").stdout)
    assert status["state"] == "moved-away" and status["moved_to"]["to"] == target_vsn.host.alias
    assert "from" in json.loads((target_vsn.state_dir / "moved-in.json").read_text())
    secrets_there = target_vsn.state_dir / "incoming" / "secrets.json"
    assert secrets_there.stat().st_mode & 0o777 == 0o600
    # The target never held this stack: it remembers the copy the move sent, and the report says so.
    assert out["target_secrets"]["copy"] is True and out["target_secrets"]["path"].endswith("/incoming/secrets.json")
    assert "pa55-w0rd" not in result.stdout + result.stderr
    # The source's copy is stale now: backing it up is refused; so is a second move onto the busy target.
    stale = vsn.migrator("backup", "--to", f"file://{tmp_path}/store", "--json")
    assert stale.returncode == 4 and "moved to" in json.loads(stale.stdout)["message"]
    assert vsn.migrator("deploy", str(tmp_path / "plan.json"), "--secrets", str(secrets)).returncode == 0
    busy = move(vsn, target_vsn)
    assert busy.returncode == 4 and "already runs" in json.loads(busy.stdout)["message"]
    assert vsn.containers() == {raw["host"]["name"]: "running"}  # the source keeps running


def test_keep_source_leaves_source_stopped_not_removed(vsn, target_vsn, secrets, tmp_path):
    deploy_source(vsn, secrets, tmp_path, host=False)
    result = move(vsn, target_vsn, "--keep-source")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"].startswith("stopped")
    states = vsn.containers()
    assert states["db"] == "exited" and states["web"] == "exited" and "dbdata" in states
    assert states["db-netns"] != "running" and states["web-netns"] != "running"  # nor publish their ports
    assert target_vsn.containers()["web"] == "running"


def test_image_only_the_source_has_is_sent_before_the_stop(vsn, target_vsn, secrets, tmp_path):
    # No registry: an image tagged only on the source's engine reaches the target with the move.
    only_here = "localhost/migrator-moved-only:1"
    vsn.podman("tag", "localhost/migrator-busybox:latest", only_here)

    def use_it(raw):
        raw["volumes"][0]["image"] = only_here

    deploy_source(vsn, secrets, tmp_path, host=False, mutate=use_it)
    assert target_vsn.podman("image", "exists", only_here, check=False).returncode != 0
    result = move(vsn, target_vsn)
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert out["images_sent"] == [only_here]
    assert "images" in out["before_downtime_steps"] and "deploy" in out["downtime_steps"]
    assert target_vsn.podman("image", "exists", only_here, check=False).returncode == 0
    assert target_vsn.containers()["web"] == "running"


def test_target_disk_too_small_exits_4_and_changes_nothing(vsn, target_vsn, secrets, tmp_path):
    deploy_source(vsn, secrets, tmp_path, host=False)
    target_vsn.host.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", f"{target_vsn.path}/data"])
    try:
        result = move(vsn, target_vsn)
        assert result.returncode == 4, result.stderr
        assert "free" in json.loads(result.stdout)["message"]
        assert vsn.containers()["web"] == "running" and vsn.containers()["db"] == "running"
        assert target_vsn.containers() == {}
    finally:
        target_vsn.host.run(["umount", f"{target_vsn.path}/data"], check=False)


def test_deploy_failure_on_target_restarts_source(vsn, target_vsn, secrets, tmp_path):
    raw = deploy_source(vsn, secrets, tmp_path, host=False)
    # Something else holds the web port on the target: its deploy fails and rolls back.
    blocker = target_vsn.host.spawn(["python3", "-c", f"import socket,time;s=socket.socket();"
                                     f"s.bind(('127.0.0.1',{web_port(raw)}));s.listen();time.sleep(600)"],
                                    log_name="port-blocker")
    try:
        result = move(vsn, target_vsn)
        assert result.returncode == 7, result.stderr + result.stdout
        assert vsn.containers()["web"] == "running" and vsn.containers()["db"] == "running"
        assert target_vsn.containers() == {}  # the target rolled back to containerless
        # The copied data stays (staged) for a retry; the target's data root is as before the move.
        assert (target_vsn.data_root / ".webdata.move-incoming" / "www" / "index.html").exists()
        assert not (target_vsn.data_root / "webdata").exists()
    finally:
        blocker.kill()
        blocker.wait()
    # A retry once the port is free completes the move.
    again = move(vsn, target_vsn)
    assert again.returncode == 0, again.stderr
    assert target_vsn.http_get(web_port(raw)) == "moved page"


def _held_before(target_vsn) -> None:
    """The target VSN held this stack's data before (as a VSN a stack moved away from does)."""
    old = target_vsn.data_root / "webdata" / "www"
    old.mkdir(parents=True)
    (old / "index.html").write_text("stale page the target held")


def test_data_the_target_held_is_removed_once_the_stack_runs_there(vsn, target_vsn, secrets, tmp_path):
    """Issue 22, item 1: the target's old data is set aside only for the rollback; the output says so."""
    raw = deploy_source(vsn, secrets, tmp_path, host=False)
    _held_before(target_vsn)
    result = move(vsn, target_vsn)
    assert result.returncode == 0, result.stderr + result.stdout
    old = json.loads(result.stdout)["target_old_data"]
    assert old["kept"] is False and [os.path.basename(p).split(".pre-move-")[0] for p in old["paths"]] == ["webdata"]
    assert not list(target_vsn.data_root.glob("*.pre-move-*"))
    assert target_vsn.http_get(web_port(raw)) == "moved page"
    assert "old-data" in json.loads(result.stdout)["target_steps"]


def test_keep_old_keeps_the_data_the_target_held_and_says_where(vsn, target_vsn, secrets, tmp_path):
    deploy_source(vsn, secrets, tmp_path, host=False)
    _held_before(target_vsn)
    result = vsn.migrator("move", *target_vsn.move_args(), "--keep-old")
    assert result.returncode == 0, result.stderr + result.stdout
    (kept,) = target_vsn.data_root.glob("webdata.pre-move-*")
    assert (kept / "www" / "index.html").read_text() == "stale page the target held"
    assert f"kept (--keep-old): {target_vsn.path}/data/{kept.name}" in result.stdout


def test_ssh_dropped_during_transfer(vsn, target_vsn, secrets, tmp_path):
    deploy_source(vsn, secrets, tmp_path, host=False, big_bytes=300 * 1024 * 1024)
    proc = subprocess.Popen([*vsn.migrator_argv(), "move", *target_vsn.move_args(), "--json"], env=vsn.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until the target is receiving (an observable state, not a sleep), then cut the SSH sessions.
    deadline = time.monotonic() + 120
    while target_vsn.host.run(["pgrep", "-f", "agent receive"], check=False).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, "receiver never started"
        time.sleep(0.05)
    target_vsn.host.drop_ssh_sessions()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 8, err + out
    assert "dropped" in json.loads(out)["message"] or "connect" in json.loads(out)["message"]
    assert vsn.containers()["web"] == "running" and vsn.containers()["db"] == "running"
    assert target_vsn.containers() == {}


@pytest.mark.parametrize("point,expect_target", [("move.source-stopped", False), ("move.target-healthy", True)])
def test_killed_move_is_finished_or_undone(vsn, target_vsn, secrets, tmp_path, point, expect_target):
    deploy_source(vsn, secrets, tmp_path, host=False)
    env = dict(vsn.env(), MIGRATOR_KILL_AT=point)
    killed = move(vsn, target_vsn, env=env)
    assert killed.returncode == -9, killed.stderr
    recovered = vsn.migrator("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    if expect_target:
        assert vsn.containers() == {}  # the stack runs on the target: the source was finished off
        assert target_vsn.containers()["web"] == "running"
    else:
        assert vsn.containers()["web"] == "running"  # never both down: the source runs again
        assert target_vsn.containers() == {}


def test_recover_waits_for_the_targets_decision_before_restarting_the_source(vsn, target_vsn, secrets, tmp_path):
    """Issue 22, item 3: the source dies right after the target committed, while the target deploys and
    decides. `recover` at once must not restart the source while the target may still keep the stack: it
    waits for the target's decision (here a rollback: the target could not tell the source it is healthy)."""
    deploy_source(vsn, secrets, tmp_path, host=False)
    killed = move(vsn, target_vsn, env=dict(vsn.env(), MIGRATOR_KILL_AT="move.committed"))
    assert killed.returncode == -9, killed.stderr
    recovered = vsn.migrator("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr + recovered.stdout
    assert target_vsn.containers() == {}  # decided (rolled back) before the source came back
    assert vsn.containers()["web"] == "running" and vsn.containers()["db"] == "running"
    assert any("undid an interrupted move" in a for a in json.loads(recovered.stdout)["actions"])


def test_install_puts_this_migrator_on_a_target_without_one(vsn, target_vsn, secrets, tmp_path):
    raw = deploy_source(vsn, secrets, tmp_path, host=False)
    # The target has no migrator on the PATH the source uses there (only <VSN dir>/bin, empty so far).
    remote_path = f"PATH={target_vsn.path}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert target_vsn.host.run(["env", remote_path, "sh", "-c", "command -v migrator"], check=False).returncode != 0
    missing = vsn.migrator("move", *target_vsn.move_args(installed=True), "--json")
    assert missing.returncode == 4, missing.stderr
    refused = json.loads(missing.stdout)
    assert "not installed" in refused["message"] and "--install" in refused["hint"]
    assert vsn.containers()["web"] == "running" and target_vsn.containers() == {}

    # --install: a wheelhouse built from this environment (cached here) goes over SFTP into a venv there;
    # pip runs offline (the target's namespace has no route anywhere but to us anyway).
    home, link = f"{target_vsn.path}/opt-migrator", f"{target_vsn.path}/bin/migrator"
    env = dict(vsn.env(), MIGRATOR_WHEELHOUSE_CACHE=str(tmp_path / "wheelhouse-cache"))
    result = vsn.migrator("move", *target_vsn.move_args(installed=True), "--install", "--install-dir", home,
                          "--install-link", link, "--json", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert out["installed"]["venv"] == f"{home}/venv"
    assert target_vsn.containers()["web"] == "running" and vsn.containers() == {}
    assert target_vsn.http_get(web_port(raw)) == "moved page"
    # What ran there is the installed copy, not this checkout: its own site-packages, its own pip.
    site = target_vsn.local / "opt-migrator" / "venv" / "lib"
    assert list(site.glob("python3.*/site-packages/migrator/ops/move_target.py"))
    assert list(site.glob("python3.*/site-packages/paramiko"))
    assert os.readlink(target_vsn.local / "bin" / "migrator") == f"{home}/venv/bin/migrator"
    version = target_vsn.host.run(["sh", "-c", f"{target_vsn.remote_migrator(installed=True)} agent info "
                                               f"--data-root /tmp --json"])
    assert json.loads(version.stdout)["version"] == json.loads(
        vsn.migrator("agent", "info", "--data-root", "/tmp", "--json").stdout)["version"]
    assert list((tmp_path / "wheelhouse-cache").glob("*/wheelhouse.tar"))  # cached for the next target


def test_lab_stopping_the_target_vsn_leaves_the_source_serving(vsn, target_vsn, secrets, tmp_path):
    """The lab itself: the target VSN lives at the source's path in another mount namespace, so
    `lab/vsn.sh stop` there must tell the source's conmons and containers from its own (it used to kill
    them, leaking their network namespaces)."""
    import urllib.request

    from tests.lab.vsn import LAB

    raw = deploy_source(vsn, secrets, tmp_path, host=False)
    target_vsn.host.run([str(LAB / "vsn.sh"), "stop", target_vsn.path])
    states = vsn.containers()
    assert states["db"] == "running" and states["web"] == "running", states
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port(raw)}/", timeout=10) as answer:
        assert answer.read().decode() == "moved page"
