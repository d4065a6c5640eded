"""The Ansible playbooks (playbooks/) run by a real ansible-playbook over real SSH against a fleet of three
lab VSNs (tests/lab/fleet.py): each in its own network and mount namespaces, with its own podman engine,
its own migrator state, and no route to the internet (so migrator's install from the wheelhouse is truly
offline). vsn-a runs a Host-container plan, vsn-b a flat plan, vsn-c is a spare. One shared S3 server.

The tests share the fleet and run in order through its life: provision (twice, the second changes
nothing), deploy, backup (all hosts, then one failing), drill, OS update (serial, then stopped at the
first failure), move vsn-a -> vsn-c."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.lab.fleet import VSN_PATH, WHEELHOUSE_CACHE, Fleet, PlaybookRun, s3_client, start_fleet
from tests.lab.plans import demo_plan, web_port

pytestmark = pytest.mark.timeout(900)

HOSTS = ["vsn-a", "vsn-b", "vsn-c"]
PAGE = {"vsn-a": "fleet page of vsn-a", "vsn-b": "fleet page of vsn-b"}
SECRETS = {"db_password": "fleet-pa55-never-logged"}
# Real paths provisioning writes on a VSN; in the lab each host's copies live in its private overlay.
REAL_PATHS = ("/opt/migrator", "/etc/migrator", "/etc/cron.d/migrator", "/usr/local/bin/migrator")


def fleet_plan(fleet: Fleet, name: str, *, host: bool) -> dict:
    vsn = SimpleNamespace(socket_url=f"unix://{VSN_PATH}/podman.sock", data_root=f"{VSN_PATH}/data")
    raw = demo_plan(vsn, host=host, name=name)
    raw["backup"] = {
        "targets": [f"s3://{fleet.bucket}/fleet"],
        "s3": {"endpoint_url": fleet.s3_endpoint, "region": "us-east-1"},
        "schedule": "4 5 * * *",
        "max_age_hours": 26,
    }
    raw["health"] = {"schedule": "*/5 * * * *"}
    return raw


@pytest.fixture(scope="module")
def fleet(lab_images):
    before = {p: os.path.lexists(p) for p in REAL_PATHS}
    with start_fleet(HOSTS) as f:
        f.plans = {"vsn-a": fleet_plan(f, "fleet-a", host=True), "vsn-b": fleet_plan(f, "fleet-b", host=False)}
        f.inventory = inventory(f)
        yield f
        print("\nfleet playbook runs (s): " + ", ".join(f"{name} {s}" for name, s in f.runs))
    # The machine's own /opt, /etc, /usr/local were never written: every write went to a host's overlay.
    assert {p: os.path.lexists(p) for p in REAL_PATHS} == before


def inventory(f: Fleet, name: str = "inventory.yml", **per_host: dict) -> Path:
    host_vars = {h: {"migrator_plan": plan, "migrator_secrets": SECRETS} for h, plan in f.plans.items()}
    for h, extra in per_host.items():
        host_vars.setdefault(h.replace("_", "-"), {}).update(extra)
    group_vars = {
        "migrator_wheelhouse_cache": str(WHEELHOUSE_CACHE),
        "migrator_source_dir": str(f.source),
        # The lab hosts have no systemd (engines are lab/vsn.sh's) and no network for apt-get update.
        "migrator_manage_services": False,
        "migrator_apt_update_cache": False,
        "migrator_aws_access_key_id": "testing",
        "migrator_aws_secret_access_key": "testing",
        "migrator_known_hosts": ["backup.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFleetLabKnownHostKeyForTestsOnly00000"],
        "migrator_lock_wait": 60,
    }
    return f.write_inventory(f.workdir / name, {"vsns": ["vsn-a", "vsn-b"], "spares": ["vsn-c"]},
                             host_vars, group_vars)


def ok(run: PlaybookRun, *hosts: str) -> None:
    assert run.returncode == 0, run.output[-6000:]
    for h in hosts:
        assert run.host(h).get("failed") == 0 and run.host(h).get("unreachable") == 0, run.recap


def summary(path: Path) -> dict:
    return json.loads(path.read_text())


def task_results(output: str) -> list[tuple[str, str]]:
    """(task name, host) for every ok/changed result line, in the order Ansible printed them."""
    task, out = "", []
    for line in output.splitlines():
        if m := re.match(r"TASK \[(.+)\] \*+$", line):
            task = m[1]
        elif m := re.match(r"(?:ok|changed): \[([^\]]+)\]", line):
            out.append((task, m[1]))
    return out


def manifests(fleet: Fleet) -> dict[str, list[str]]:
    """Committed snapshots in the shared bucket: {vsn name: [snapshot ids]}."""
    keys = [o["Key"] for o in s3_client(fleet.s3_endpoint).list_objects_v2(Bucket=fleet.bucket).get("Contents", [])]
    out: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        if parts[-1] == "manifest.json":
            out.setdefault(parts[-3], []).append(parts[-2])
    return {k: sorted(v) for k, v in out.items()}


# -- provision --------------------------------------------------------------------------------------------


def test_provision_installs_everything_and_a_second_run_changes_nothing(fleet):
    first = fleet.playbook("provision-vsn.yml", fleet.inventory)
    ok(first, *HOSTS)
    assert first.host("vsn-a")["changed"] > 0

    for name in HOSTS:
        host = fleet[name]
        assert host.migrator("--version", check=True).returncode == 0
        # The venv and its link, installed offline from the wheelhouse (the hosts have no route out).
        assert host.run(["readlink", "/usr/local/bin/migrator"]).stdout.strip() == "/opt/migrator/venv/bin/migrator"
        assert host.run(["stat", "-c", "%a", "/var/lib/migrator"]).stdout.strip() == "700"
        creds = host.upper("/root/.aws/credentials")
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and "aws_access_key_id = testing" in creds.read_text()
        assert "backup.example.org ssh-ed25519" in host.upper("/root/.ssh/known_hosts").read_text()
    for name in ("vsn-a", "vsn-b"):
        host = fleet[name]
        for path in ("/etc/migrator/plan.json", "/etc/migrator/secrets.json"):
            assert stat.S_IMODE(host.upper(path).stat().st_mode) == 0o600
        assert json.loads(host.upper("/etc/migrator/plan.json").read_text()) == fleet.plans[name]
        cron = host.upper("/etc/cron.d/migrator").read_text()
        assert "4 5 * * * root /opt/migrator/venv/bin/migrator backup" in cron
        assert "*/5 * * * * root /opt/migrator/venv/bin/migrator health" in cron
    # The spare has migrator but no stack configuration.
    assert not fleet["vsn-c"].upper("/etc/migrator/plan.json").exists()
    assert not fleet["vsn-c"].upper("/etc/cron.d/migrator").exists()
    assert SECRETS["db_password"] not in first.output

    second = fleet.playbook("provision-vsn.yml", fleet.inventory)
    ok(second, *HOSTS)
    assert {h: second.host(h)["changed"] for h in HOSTS} == {h: 0 for h in HOSTS}, second.output[-4000:]


# -- deploy -----------------------------------------------------------------------------------------------


def test_deploy_runs_each_plan_and_converges(fleet):
    for name, page in PAGE.items():
        www = fleet[name].vsn_dir / "data" / "webdata" / "www"
        www.mkdir(parents=True)
        (www / "index.html").write_text(page)
    run = fleet.playbook("deploy.yml", fleet.inventory)
    ok(run, "vsn-a", "vsn-b")
    assert "vsn-c" not in run.recap  # spares are not deployed
    for name, page in PAGE.items():
        assert fleet[name].http_get(web_port(fleet.plans[name])) == page
    assert fleet["vsn-a"].containers() == {"fleet-a-host": "running"}  # nested: REST containers inside the Host
    assert fleet["vsn-b"].containers()["web"] == "running"

    again = fleet.playbook("deploy.yml", fleet.inventory)
    ok(again, "vsn-a", "vsn-b")
    assert again.host("vsn-a")["changed"] == 0 and again.host("vsn-b")["changed"] == 0
    assert "already running this plan" in again.output


# -- backup -----------------------------------------------------------------------------------------------


def test_backup_snapshots_every_vsn_to_the_shared_s3(fleet):
    report = fleet.workdir / "backups.json"
    run = fleet.playbook("backup.yml", fleet.inventory, {"migrator_report_file": str(report),
                                                         "migrator_backup_tags": ["fleet"]})
    ok(run, "vsn-a", "vsn-b")
    result = summary(report)
    assert set(result) == {"vsn-a", "vsn-b"} and all(r["ok"] for r in result.values()), result
    stored = manifests(fleet)
    assert result["vsn-a"]["snapshot_id"] in stored["fleet-a"]
    assert result["vsn-b"]["snapshot_id"] in stored["fleet-b"]
    # The summary is printed in Ansible's own output too.
    assert result["vsn-a"]["snapshot_id"] in run.output and result["vsn-b"]["snapshot_id"] in run.output


def test_backup_failure_on_one_vsn_does_not_stop_the_others(fleet):
    broken = inventory(fleet, "inventory-bad-backup.yml", vsn_b={"migrator_backup_targets": ["s3://no-such-bucket-fleet/x"]})
    report = fleet.workdir / "backups-bad.json"
    before = manifests(fleet)
    run = fleet.playbook("backup.yml", broken, {"migrator_report_file": str(report)})
    assert run.returncode == 2, run.output[-4000:]  # ansible-playbook: some host failed
    assert run.host("vsn-a")["failed"] == 0 and run.host("vsn-b")["failed"] == 1, run.recap
    result = summary(report)
    assert result["vsn-a"]["ok"] is True and result["vsn-a"]["snapshot_id"] not in before["fleet-a"]
    assert result["vsn-b"]["ok"] is False and result["vsn-b"]["exit_code"] != 0 and result["vsn-b"]["message"]
    assert manifests(fleet)["fleet-b"] == before["fleet-b"]


# -- drill ------------------------------------------------------------------------------------------------


def test_drill_restores_the_latest_snapshot_in_isolation(fleet):
    report = fleet.workdir / "drills.json"
    run = fleet.playbook("drill.yml", fleet.inventory, {"migrator_report_file": str(report)}, "--limit", "vsn-b")
    ok(run, "vsn-b")
    result = summary(report)["vsn-b"]
    assert result["ok"] is True, result
    # Production untouched: still serving, and the drill's containers are gone.
    assert fleet["vsn-b"].http_get(web_port(fleet.plans["vsn-b"])) == PAGE["vsn-b"]
    assert not [c for c in fleet["vsn-b"].containers() if c.startswith("drill-")]


# -- OS update --------------------------------------------------------------------------------------------


def _pre_update_snapshots(fleet: Fleet, name: str) -> list[str]:
    out = fleet[name].migrator_json("snapshots")
    return [s["id"] for s in out["snapshots"] if "pre-update" in s.get("tags", [])]


def test_os_update_rolls_out_one_vsn_at_a_time(fleet):
    run = fleet.playbook("os-update.yml", fleet.inventory,
                         {"migrator_os_upgrade_command": "true", "migrator_reboot": "never"})
    ok(run, "vsn-a", "vsn-b")
    # serial: 1 -> one batch per VSN, and vsn-b is prepared only after vsn-a finished and was healthy.
    assert run.output.count("PLAY [OS update, one batch of VSNs at a time]") == 2
    steps = [f"{host}:{task}" for task, host in task_results(run.output) if task.startswith(("Prepare", "Finish", "Health"))]
    assert steps == ["vsn-a:Prepare (containerless, pre-update snapshot, fingerprint)",
                     "vsn-a:Finish (check the data, redeploy, probe health)", "vsn-a:Health",
                     "vsn-b:Prepare (containerless, pre-update snapshot, fingerprint)",
                     "vsn-b:Finish (check the data, redeploy, probe health)", "vsn-b:Health"], steps
    for name, page in PAGE.items():
        assert len(_pre_update_snapshots(fleet, name)) == 1
        assert fleet[name].http_get(web_port(fleet.plans[name])) == page
        assert fleet[name].migrator("health").returncode == 0


def test_os_update_stops_at_the_first_failed_vsn(fleet):
    broken = inventory(fleet, "inventory-bad-update.yml",
                       vsn_a={"migrator_os_upgrade_command": "echo 'E: dpkg was interrupted' >&2; exit 100"})
    before_b = _pre_update_snapshots(fleet, "vsn-b")
    run = fleet.playbook("os-update.yml", broken, {"migrator_reboot": "never"})
    assert run.returncode == 2, run.output[-4000:]
    assert run.host("vsn-a")["failed"] == 1, run.recap
    assert "dpkg was interrupted" in run.output and "brought back (os-update finish)" in run.output
    # The rollout stopped: vsn-b was not touched (no batch of its own, no new pre-update snapshot).
    assert run.output.count("PLAY [OS update, one batch of VSNs at a time]") == 1
    assert run.host("vsn-b").get("changed", 0) == 0
    assert _pre_update_snapshots(fleet, "vsn-b") == before_b
    # vsn-a's stack came back on its unchanged data after the failed upgrade.
    assert fleet["vsn-a"].http_get(web_port(fleet.plans["vsn-a"])) == PAGE["vsn-a"]
    assert not fleet["vsn-a"].upper("/var/lib/migrator/os-update.json").exists()


# -- move -------------------------------------------------------------------------------------------------


def move_traces(fleet: Fleet, source: str, target: str) -> tuple[str, str]:
    """What a move's one-off key touches: the target's authorized_keys and the source's key dirs in /tmp
    (shared with the machine, so compared with what was there before, not with nothing)."""
    dirs = fleet[source].run(["bash", "-c", "ls -d /tmp/migrator-move.* 2>/dev/null || true"]).stdout
    return (fleet[target].ssh.workdir / "authorized_keys").read_text(), dirs


def no_move_leftovers(fleet: Fleet, source: str, target: str, before: tuple[str, str]) -> None:
    """The one-off key is revoked on the target and deleted on the source, whatever happened."""
    assert move_traces(fleet, source, target) == before


def test_failed_move_revokes_the_one_off_key_and_keeps_the_source_running(fleet):
    a, c = fleet["vsn-a"], fleet["vsn-c"]
    before = move_traces(fleet, "vsn-a", "vsn-c")
    # Another operation holds vsn-a's lock (migrator's lock is an flock): the move gives up, exit 5.
    # One process takes and keeps it (flock(1) would hand the locked descriptor on to its command).
    hold = ("import fcntl,time;f=open('/var/lib/migrator/lock','a');fcntl.flock(f,fcntl.LOCK_EX);"
            "print('locked',flush=True);time.sleep(300)")
    holder = a.ssh.spawn(["/usr/bin/python3", "-c", hold], log_name="lock-holder")
    log = a.ssh.workdir / "lock-holder.log"
    deadline = time.monotonic() + 30
    while not (log.exists() and "locked" in log.read_text()):
        assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    try:
        run = fleet.playbook("move.yml", fleet.inventory, {"migrator_move_from": "vsn-a", "migrator_move_to": "vsn-c",
                                                           "migrator_lock_wait": 1})
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2, run.output[-4000:]
    assert run.host("vsn-a")["failed"] == 1 and run.host("vsn-c")["failed"] == 0, run.recap
    assert "Revoke the one-off key on the target" in run.output
    no_move_leftovers(fleet, "vsn-a", "vsn-c", before)
    assert a.http_get(web_port(fleet.plans["vsn-a"])) == PAGE["vsn-a"]
    assert c.containers() == {}


def test_move_a_stack_to_the_spare(fleet):
    a, c = fleet["vsn-a"], fleet["vsn-c"]
    before = move_traces(fleet, "vsn-a", "vsn-c")
    args = {"migrator_move_from": "vsn-a", "migrator_move_to": "vsn-c"}
    run = fleet.playbook("move.yml", fleet.inventory, args)
    ok(run, "vsn-a", "vsn-c")
    assert "moved vsn-a -> vsn-c" in run.output
    # The stack runs on the spare with vsn-a's data; vsn-a is containerless, its data kept.
    port = web_port(fleet.plans["vsn-a"])
    assert c.http_get(port) == PAGE["vsn-a"]
    assert c.containers() == {"fleet-a-host": "running"}
    assert a.containers() == {}
    assert (a.vsn_dir / "data" / "webdata" / "www" / "index.html").read_text() == PAGE["vsn-a"]
    # The schedules followed the stack; the one-off key is revoked and deleted.
    assert not a.upper("/etc/cron.d/migrator").exists()
    assert "migrator backup" in c.upper("/etc/cron.d/migrator").read_text()
    no_move_leftovers(fleet, "vsn-a", "vsn-c", before)
    assert c.migrator("health").returncode == 0

    again = fleet.playbook("move.yml", fleet.inventory, args)
    ok(again, "vsn-a", "vsn-c")
    assert again.host("vsn-a")["changed"] == 0 and again.host("vsn-c")["changed"] == 0
    assert "already runs on vsn-c" in again.output

    # Until the inventory follows the move, neither deploy.yml nor provision-vsn.yml brings the stack (or its
    # schedules, which would back up stale data under the same name) back to its old VSN.
    redeploy = fleet.playbook("deploy.yml", fleet.inventory, None, "--limit", "vsn-a")
    assert redeploy.returncode == 2 and "was moved to" in redeploy.output
    assert a.containers() == {}
    reprovision = fleet.playbook("provision-vsn.yml", fleet.inventory, None, "--limit", "vsn-a,vsn-c")
    assert reprovision.returncode == 2 and "was moved from vsn-a to" in reprovision.output
    assert reprovision.host("vsn-a")["failed"] == 1 and reprovision.host("vsn-c") == {**reprovision.host("vsn-c"),
                                                                                       "failed": 0, "changed": 0}
    assert not a.upper("/etc/cron.d/migrator").exists()



def test_move_refuses_a_target_that_runs_another_stack(fleet):
    b, c = fleet["vsn-b"], fleet["vsn-c"]
    before = move_traces(fleet, "vsn-b", "vsn-c")
    run = fleet.playbook("move.yml", fleet.inventory, {"migrator_move_from": "vsn-b", "migrator_move_to": "vsn-c"})
    assert run.returncode == 2, run.output[-4000:]
    assert "vsn-c already runs the stack fleet-a (running)" in run.output
    assert run.host("vsn-c")["failed"] == 1 and run.host("vsn-b")["failed"] == 1, run.recap
    no_move_leftovers(fleet, "vsn-b", "vsn-c", before)
    assert b.http_get(web_port(fleet.plans["vsn-b"])) == PAGE["vsn-b"]
    assert c.containers() == {"fleet-a-host": "running"}
