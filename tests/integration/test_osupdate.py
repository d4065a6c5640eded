"""os-update prepare/finish/run on a real stack: data proven unchanged, or the change named (exit 6)."""

from __future__ import annotations

import json
import urllib.request

from tests.lab.plans import demo_plan, web_port
from tests.lab.vsn import write_json


def deployed_stack(vsn, secrets, tmp_path, host=True):
    raw = demo_plan(vsn, host=host)
    raw["backup"] = {"targets": [f"file://{tmp_path}/store"]}
    plan = write_json(tmp_path / "plan.json", raw)
    (vsn.data_root / "webdata" / "www").mkdir(parents=True)
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("before the update")
    assert vsn.migrator("deploy", str(plan), "--secrets", str(secrets)).returncode == 0
    return raw


def run_json(vsn, *args, expect=0):
    result = vsn.migrator(*args, "--json")
    assert result.returncode == expect, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_prepare_finish_round_trip(vsn, secrets, tmp_path):
    raw = deployed_stack(vsn, secrets, tmp_path)
    prepared = run_json(vsn, "os-update", "prepare")
    assert vsn.containers() == {}  # containerless for the update
    snaps = run_json(vsn, "snapshots", "--from", f"file://{tmp_path}/store")["snapshots"]
    assert [s["id"] for s in snaps] == [prepared["snapshot_id"]] and snaps[0]["tags"] == ["pre-update"]
    assert (vsn.state_dir / "os-update.json").exists()
    again = vsn.migrator("os-update", "prepare")
    assert again.returncode == 2 and "already prepared" in again.stderr

    finished = run_json(vsn, "os-update", "finish")
    assert finished["differences"] == [] and set(finished["health"]) == {"db", "web"}
    assert not (vsn.state_dir / "os-update.json").exists()
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port(raw)}/", timeout=10) as resp:
        assert resp.read() == b"before the update"
    assert vsn.migrator("os-update", "finish").returncode == 2  # no marker any more


def test_finish_detects_a_data_file_changed_while_containerless(vsn, secrets, tmp_path):
    raw = deployed_stack(vsn, secrets, tmp_path, host=False)
    run_json(vsn, "os-update", "prepare")
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("touched by the update")
    (vsn.data_root / "dbdata" / "data" / "log.txt").chmod(0o600)
    result = vsn.migrator("os-update", "finish", "--json")
    assert result.returncode == 6
    out = json.loads(result.stdout)
    assert any(d.startswith("webdata/www/index.html: ") and "content" in d for d in out["details"])
    assert any(d.startswith("dbdata/data/log.txt: mode") for d in out["details"])
    assert vsn.containers() == {}  # nothing redeployed on changed data
    # --restore-on-mismatch brings the pre-update data back, then redeploys.
    fixed = run_json(vsn, "os-update", "finish", "--restore-on-mismatch")
    assert fixed["restored"] is True
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port(raw)}/", timeout=10) as resp:
        assert resp.read() == b"before the update"


def test_run_with_an_update_command(vsn, secrets, tmp_path):
    deployed_stack(vsn, secrets, tmp_path, host=False)
    marker = tmp_path / "updated"
    out = run_json(vsn, "os-update", "run", "--command", f"echo upgraded > {marker}")
    assert marker.read_text() == "upgraded\n" and out["command_exit"] == 0
    assert vsn.containers()["web"] == "running"
    failed = vsn.migrator("os-update", "run", "--command", "echo broken >&2; exit 3", "--json")
    assert failed.returncode == 1 and "exited 3" in json.loads(failed.stdout)["message"]
    assert vsn.containers()["web"] == "running"  # the stack comes back on the unchanged data anyway
