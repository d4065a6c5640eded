"""deploy / teardown / status / upgrade against real podman: a nested Host container and a flat plan."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.lab.fingerprint import fingerprint
from tests.lab.plans import demo_plan, web_port
from tests.lab.vsn import write_json


def deploy(vsn, plan_path, secrets, *extra):
    return vsn.migrator("deploy", str(plan_path), "--secrets", str(secrets), "--json", *extra)


def seed_data(vsn) -> dict:
    """Existing data that deploy must never alter: odd modes and owners, a symlink."""
    root = vsn.data_root
    (root / "dbdata" / "data").mkdir(parents=True)
    f = root / "dbdata" / "data" / "precious.db"
    f.write_bytes(b"\x00important" * 1000)
    f.chmod(0o600)
    import os

    os.chown(f, 1234, 5678)
    (root / "dbdata" / "data" / "link").symlink_to("precious.db")
    (root / "dbdata" / "data").chmod(0o750)
    return fingerprint(root / "dbdata")


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def status(vsn) -> dict:
    result = vsn.migrator("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("nested", [True, False], ids=["host-container", "flat"])
def test_deploy_runs_stack_and_keeps_data(vsn, secrets, tmp_path, nested):
    raw = demo_plan(vsn, host=nested)
    plan = write_json(tmp_path / "plan.json", raw)
    before = seed_data(vsn)

    result = deploy(vsn, plan, secrets)
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert out["ok"] and set(out["health"]) == {"db", "web"}

    # The published HTTP port answers from the VSN and serves the volume's data dir.
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("hello from the volume")
    assert get(f"http://127.0.0.1:{web_port(raw)}/") == (200, b"hello from the volume")
    # Missing data dirs were created, existing data is byte-identical (modes, owners, links too).
    assert (vsn.data_root / "dbdata" / "config").is_dir()
    assert fingerprint(vsn.data_root / "dbdata") != before  # the writer service writes new files ...
    after = fingerprint(vsn.data_root / "dbdata")
    assert {k: v for k, v in after.items() if k in before} == before  # ... but never touches old ones

    st = status(vsn)
    assert st["state"] == "running"
    states = {c["name"]: c["state"] for c in st["containers"]}
    assert states["web"] == "running" and states["db"] == "running" and states["dbdata"] == "created"
    assert states["admin"] == "missing"  # enabled: false
    outer = vsn.containers()
    if nested:
        # Only the Host runs on the VSN's engine; the REST containers run inside it.
        assert outer == {raw["host"]["name"]: "running"}
    else:
        assert outer["web"] == "running" and "dbdata" in outer

    # The secret reached the container's environment but not migrator's output.
    assert "pa55-w0rd" not in result.stdout + result.stderr

    down = vsn.migrator("teardown", "--json")
    assert down.returncode == 0, down.stderr
    assert vsn.containers() == {}
    assert {k: v for k, v in fingerprint(vsn.data_root / "dbdata").items() if k in before} == before
    assert status(vsn)["state"] == "containerless"


def test_deploy_refused_while_host_runs_then_replaces_stopped_stack(vsn, secrets, tmp_path):
    raw = demo_plan(vsn, host=True)
    plan = write_json(tmp_path / "plan.json", raw)
    assert deploy(vsn, plan, secrets).returncode == 0
    host = raw["host"]["name"]
    first_id = vsn.podman("inspect", "--format", "{{.Id}}", host).stdout.strip()

    again = deploy(vsn, plan, secrets)
    assert again.returncode == 4
    assert "is running" in again.stderr
    assert vsn.containers() == {host: "running"}  # nothing was touched

    vsn.podman("stop", "-t", "2", host)
    replaced = deploy(vsn, plan, secrets)
    assert replaced.returncode == 0, replaced.stderr
    assert vsn.podman("inspect", "--format", "{{.Id}}", host).stdout.strip() != first_id
    assert get(f"http://127.0.0.1:{web_port(raw)}/")[0] == 200


def _break_missing_image(raw, vsn):
    raw["services"][1]["image"] = "localhost/no-such-image:1"


def _break_missing_host_image(raw, vsn):
    raw["host"]["image"] = "localhost/no-such-host:1"


def _break_service_exits(raw, vsn):
    raw["services"][0]["env"]["WRITER_FAIL"] = "1"


def _break_failing_probe(raw, vsn):
    raw["services"][1]["health"].update({"expect_status": 418, "timeout": 3})


def _break_data_dir_creation(raw, vsn):
    # A read-only filesystem where the webdata volume dir must be created: mkdir fails with EROFS.
    target = vsn.data_root / "webdata"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)], check=True)


ROLLBACK_CASES = {
    "missing-service-image": (_break_missing_image, "no-such-image"),
    "missing-host-image": (_break_missing_host_image, "no-such-host"),
    "service-exits": (_break_service_exits, "did not become healthy"),
    "failing-health-probe": (_break_failing_probe, "expected 418"),
    "data-dir-creation": (_break_data_dir_creation, "Read-only file system"),
}


@pytest.mark.parametrize("case", list(ROLLBACK_CASES))
def test_any_failure_rolls_back_to_containerless_with_data_intact(vsn, secrets, tmp_path, case):
    raw = demo_plan(vsn, host=True)
    before = seed_data(vsn)
    breaker, expected = ROLLBACK_CASES[case]
    breaker(raw, vsn)
    plan = write_json(tmp_path / "plan.json", raw)
    try:
        result = deploy(vsn, plan, secrets)
        assert result.returncode == 7, result.stderr + result.stdout
        err = json.loads(result.stdout)
        assert err["ok"] is False and err["exit_code"] == 7
        assert expected in err["message"], err["message"]
        assert vsn.containers() == {}  # containerless: no Host, and so no REST containers
        # Every pre-existing file is byte-identical (a service that ran before the failure may add files).
        after = fingerprint(vsn.data_root / "dbdata")
        assert {k: v for k, v in after.items() if k in before} == before
    finally:
        subprocess.run(["umount", str(vsn.data_root / "webdata")], capture_output=True)


def test_upgrade_replaces_one_service_and_rolls_back_on_failure(vsn, secrets, tmp_path):
    raw = demo_plan(vsn, host=False)
    # The failing upgrade waits out web's probe: 15 s rather than the plan's 60 (httpd answers in well under 1 s).
    next(s for s in raw["services"] if s["name"] == "web")["health"]["timeout"] = 15
    plan = write_json(tmp_path / "plan.json", raw)
    assert deploy(vsn, plan, secrets).returncode == 0
    db_id = vsn.podman("inspect", "--format", "{{.Id}}", "db").stdout.strip()
    web_id = vsn.podman("inspect", "--format", "{{.Id}}", "web").stdout.strip()
    vsn.podman("tag", "localhost/migrator-httpd:latest", "localhost/migrator-httpd:hotfix")

    ok = vsn.migrator("upgrade", "web", "--image", "localhost/migrator-httpd:hotfix", "--json")
    assert ok.returncode == 0, ok.stderr
    assert vsn.podman("inspect", "--format", "{{.ImageName}}", "web").stdout.strip() == "localhost/migrator-httpd:hotfix"
    assert vsn.podman("inspect", "--format", "{{.Id}}", "web").stdout.strip() != web_id  # a new container
    assert vsn.podman("inspect", "--format", "{{.Id}}", "db").stdout.strip() == db_id  # others untouched
    assert get(f"http://127.0.0.1:{web_port(raw)}/")[0] == 200
    # The remembered plan carries the hotfix, so later operations know the running image.
    assert "localhost/migrator-httpd:hotfix" in (vsn.state_dir / "plan.json").read_text()

    # The writer image does not serve HTTP on 8080: the probe fails and the old container comes back.
    hotfix_id = vsn.podman("inspect", "--format", "{{.Id}}", "web").stdout.strip()
    bad = vsn.migrator("upgrade", "web", "--image", "localhost/migrator-writer:latest", "--json")
    assert bad.returncode == 7, bad.stderr
    assert vsn.podman("inspect", "--format", "{{.Id}}", "web").stdout.strip() == hotfix_id
    assert vsn.containers()["web"] == "running"
    assert get(f"http://127.0.0.1:{web_port(raw)}/")[0] == 200


def test_docker_sdk_path_against_podman_compat_api(vsn, secrets, tmp_path):
    raw = demo_plan(vsn, host=False)
    raw["vsn"]["engine"] = "docker"
    plan = write_json(tmp_path / "plan.json", raw)
    result = deploy(vsn, plan, secrets)
    assert result.returncode == 0, result.stderr
    assert get(f"http://127.0.0.1:{web_port(raw)}/")[0] == 200
    assert status(vsn)["state"] == "running"
    assert vsn.migrator("teardown").returncode == 0
    assert vsn.containers() == {}


def test_dry_run_acts_on_nothing(vsn, secrets, tmp_path):
    plan = write_json(tmp_path / "plan.json", demo_plan(vsn))
    result = deploy(vsn, plan, secrets, "--dry-run")
    assert result.returncode == 0
    steps = json.loads(result.stdout)["steps"]
    assert any("Host container" in s for s in steps)
    assert vsn.containers() == {}
    assert not (vsn.data_root / "dbdata").exists() and not (vsn.data_root / "webdata").exists()


def test_check_reports_fit_vsn_and_missing_engine(vsn, secrets, tmp_path):
    raw = demo_plan(vsn)
    plan = write_json(tmp_path / "plan.json", raw)
    ok = vsn.migrator("check", str(plan), "--secrets", str(secrets), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert all(c["ok"] for c in json.loads(ok.stdout)["checks"])
    raw["vsn"]["socket"] = f"unix://{tmp_path}/nothing-here.sock"
    write_json(plan, raw)
    bad = vsn.migrator("check", str(plan), "--secrets", str(secrets), "--json")
    assert bad.returncode == 4
    assert any("does not answer" in d for d in json.loads(bad.stdout)["details"])


def test_lock_contention_exits_5(vsn, secrets, tmp_path):
    import fcntl
    import os

    plan = write_json(tmp_path / "plan.json", demo_plan(vsn))
    vsn.state_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(vsn.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = deploy(vsn, plan, secrets, "--wait", "0.5")
        assert result.returncode == 5, result.stderr
        assert "holds the lock" in result.stderr
    finally:
        os.close(fd)
    assert deploy(vsn, plan, secrets).returncode == 0


def test_state_dir_is_0700(vsn, secrets, tmp_path):
    plan = write_json(tmp_path / "plan.json", demo_plan(vsn, host=False))
    assert deploy(vsn, plan, secrets).returncode == 0
    assert (vsn.state_dir.stat().st_mode & 0o777) == 0o700
    deployment = json.loads((vsn.state_dir / "deployment.json").read_text())
    assert Path(deployment["secrets"]) == secrets.resolve()
    assert "pa55-w0rd" not in (vsn.state_dir / "plan.json").read_text()
