"""The decisions of backup, restore, quiesce and recover, on an in-memory engine (tests/unit/fakeengine.py)
and a real file:// store: what stops and in which order, what the journal holds before the first stop,
that every stopped service starts again (also when the stopped window fails), restore's swap and
swap-back, and what recover finishes or undoes. The same verbs run on real podman in tests/integration;
here a wrong decision fails in a second, without a lab."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from migrator.archive.fingerprint import fingerprint
from migrator.catalog.listing import list_snapshots
from migrator.engine.base import LABEL_ROLE, LABEL_STACK
from migrator.errors import MigratorError
from migrator.ops import backup as backup_ops
from migrator.ops import recover as recover_ops
from migrator.ops.restore import JOURNAL_KEY as RESTORE_KEY
from migrator.ops.restore import restore
from migrator.plan.model import Plan
from migrator.stack import topology
from migrator.stack.quiesce import JOURNAL_KEY, Quiesce, writers_of
from migrator.stack.topology import Stack
from migrator.state import deployed, journal, registry, stackstate
from migrator.state.files import write_json
from migrator.storage import get_store
from tests.unit.fakeengine import FakeEngine

VSN = "fakevsn"
PROBE = {"type": "cmd", "command": ["true"], "timeout": 5}


def _raw(root: Path) -> dict:
    image = "localhost/busybox"
    return {
        "version": 1, "vsn": {"name": VSN, "engine": "podman", "data_root": str(root / "data")},
        "volumes": [{"name": "dbdata", "image": image, "mounts": [{"name": "data", "path": "/data"}]},
                    {"name": "webdata", "image": image, "mounts": [{"name": "html", "path": "/html"}]}],
        "services": [
            {"name": "db", "image": image, "volumes_from": ["dbdata"], "health": PROBE},
            {"name": "app", "image": image, "volumes_from": ["dbdata"], "depends_on": ["db"], "health": PROBE},
            {"name": "web", "image": image, "volumes_from": ["webdata"], "depends_on": ["app"], "health": PROBE}],
        "backup": {"targets": [f"file://{root / 'store'}"]},
    }


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    """A deployed-looking flat stack on the fake engine: volume containers created, services running."""
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    plan = Plan.from_json(_raw(tmp_path))
    engine = FakeEngine()
    for vol in plan.volumes:
        engine.add(vol.name, {LABEL_STACK: VSN, LABEL_ROLE: "volume"}, state="created")
    for svc in plan.services:
        engine.add(svc.name, {LABEL_STACK: VSN, LABEL_ROLE: "service"})
    monkeypatch.setattr(topology, "outer_engine", lambda _plan: engine)
    db = tmp_path / "data" / "dbdata" / "data"
    html = tmp_path / "data" / "webdata" / "html"
    db.mkdir(parents=True)
    html.mkdir(parents=True)
    (db / "table").write_bytes(os.urandom(200_000))
    (html / "index.html").write_text("<h1>one</h1>")
    os.symlink("index.html", html / "home.html")
    return plan, engine, tmp_path


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _dead_journal(undo: dict) -> None:
    write_json(registry.JOURNAL.path, {"verb": "test", "pid": _dead_pid(), "started": 0, "undo": undo})


# --- quiesce ----------------------------------------------------------------------------------------

def test_quiesce_journals_every_service_before_the_first_stop_and_restarts_in_depends_on_order(lab):
    plan, engine, _root = lab
    at_first_stop = []
    engine.on_stop = lambda name: at_first_stop.append(journal.load()["undo"]) if not at_first_stop else None
    with journal.open_journal("test") as j, Quiesce(Stack.for_plan(plan), j, lambda _m: None) as q:
        q.stop(writers_of(plan, "webdata") + writers_of(plan, "dbdata"))
        assert engine.running() == set()
    assert engine.verbs("stop") == ["web", "app", "db"]  # reverse depends_on
    assert engine.verbs("start") == ["db", "app", "web"]
    assert sorted(at_first_stop[0][JOURNAL_KEY]["services"]) == ["app", "db", "web"]
    assert engine.running() == {"db", "app", "web"}
    assert set(q.downtime) == {"db", "app", "web"} and journal.load() is None


def test_quiesce_restarts_what_it_stopped_when_the_stopped_window_fails(lab):
    plan, engine, _root = lab
    with pytest.raises(OSError, match="disk gone"), journal.open_journal("test") as j:
        with Quiesce(Stack.for_plan(plan), j, lambda _m: None) as q:
            q.stop(writers_of(plan, "dbdata"))
            raise OSError("disk gone")
    assert engine.verbs("stop") == ["app", "db"] and engine.verbs("start") == ["db", "app"]
    assert engine.running() == {"db", "app", "web"} and journal.load() is None


def test_quiesce_tries_every_start_then_names_the_failures(lab):
    plan, engine, _root = lab
    engine.fail_start = {"app"}
    lines: list[str] = []
    with pytest.raises(MigratorError, match="app: cannot start app"), journal.open_journal("test") as j:
        with Quiesce(Stack.for_plan(plan), j, lines.append) as q:
            q.stop(writers_of(plan, "dbdata") + writers_of(plan, "webdata"))
    assert engine.verbs("start") == ["db", "app", "web"]  # web was still started after app failed
    assert engine.running() == {"db", "web"}
    assert journal.load() is None  # tried: the next command must not restart them again


def test_quiesce_does_not_stop_what_is_not_running(lab):
    plan, engine, _root = lab
    engine.containers["db"].state = "exited"
    with journal.open_journal("test") as j, Quiesce(Stack.for_plan(plan), j, lambda _m: None) as q:
        q.stop(writers_of(plan, "dbdata"))
    assert engine.verbs("stop") == ["app"] and engine.verbs("start") == ["app"]
    assert "db" not in engine.running()  # a service that was down stays down


# --- backup -----------------------------------------------------------------------------------------

def test_backup_archives_phase_one_live_then_stops_only_for_phase_two(lab):
    plan, engine, root = lab
    objects_at_stop: list[list[str]] = []
    engine.on_stop = lambda name: objects_at_stop.append(sorted(p.name for p in (root / "store").rglob("*.tar*")))
    result = backup_ops.backup(plan, None, [], lambda _m: None)
    assert engine.verbs("stop") == ["web", "app", "db"] and engine.verbs("start") == ["db", "app", "web"]
    # phase 1 of both volumes archived while everything ran; phase 2 only once stopped
    assert {"dbdata.1.tar.zst", "webdata.1.tar.zst"} <= set(objects_at_stop[0])
    assert not any(".2." in name for name in objects_at_stop[0])
    assert set(result.downtime) == {"db", "app", "web"}
    assert engine.running() == {"db", "app", "web"} and journal.load() is None
    assert [m.snapshot_id for m in list_snapshots(get_store(f"file://{root / 'store'}"), VSN).snapshots] == [
        result.snapshot_id]
    assert not registry.SPOOL.path.exists() or not any(registry.SPOOL.path.iterdir())
    # `backup --json` (and the notify hooks) get exactly these keys
    assert set(result.to_json()) == {
        "snapshot_id", "vsn", "tags", "targets", "objects", "size", "uncompressed", "downtime", "downtime_steps",
        "duration", "capture", "volumes", "encrypted", "kind", "parent", "full_reasons", "signed_by", "dumps",
        "dumps_skipped"}
    assert result.to_json()["objects"] == result.objects and result.to_json()["kind"] == "full"


def test_backup_failing_in_the_stopped_window_restarts_everything_and_commits_nothing(lab, monkeypatch):
    plan, engine, root = lab

    def broken(self, vol, before):
        raise OSError("spool disk full")

    monkeypatch.setattr(backup_ops.Backup, "_spool_phase2", broken)
    with pytest.raises(OSError, match="spool disk full"):
        backup_ops.backup(plan, None, [], lambda _m: None)
    assert engine.running() == {"db", "app", "web"} and journal.load() is None
    assert list_snapshots(get_store(f"file://{root / 'store'}"), VSN).snapshots == []


# --- restore ----------------------------------------------------------------------------------------

def test_live_restore_stops_the_writers_swaps_and_restarts_them(lab):
    plan, engine, root = lab
    db = root / "data" / "dbdata" / "data"
    snap = backup_ops.backup(plan, None, [], lambda _m: None).snapshot_id
    want = fingerprint(db)
    (db / "table").write_bytes(b"changed after the backup")
    (db / "new").write_text("also new")
    engine.calls.clear()
    out = restore(get_store(f"file://{root / 'store'}"), VSN, snap, plan=plan, volumes=["dbdata"])
    assert fingerprint(db) == want
    assert engine.verbs("stop") == ["app", "db"] and engine.verbs("start") == ["db", "app"]  # web untouched
    assert out.to_json()["volumes"] == ["dbdata"] and set(out.downtime) == {"db", "app"} and out.kept_old == []
    assert sorted(p.name for p in (root / "data" / "dbdata").iterdir()) == ["data"]  # no old or staging dir
    assert journal.load() is None


def test_restore_swaps_the_old_data_back_when_a_service_does_not_come_back(lab):
    plan, engine, root = lab
    db = root / "data" / "dbdata" / "data"
    snap = backup_ops.backup(plan, None, [], lambda _m: None).snapshot_id
    (db / "table").write_bytes(b"the newer data")
    before = fingerprint(db)
    engine.fail_start = {"app"}
    with pytest.raises(MigratorError, match="app"):
        restore(get_store(f"file://{root / 'store'}"), VSN, snap, plan=plan, volumes=["dbdata"])
    assert fingerprint(db) == before  # the old data is live again
    assert sorted(p.name for p in (root / "data" / "dbdata").iterdir()) == ["data"]
    assert "db" in engine.running() and journal.load() is None


# --- recover ----------------------------------------------------------------------------------------

def test_recover_restarts_only_what_a_killed_run_stopped_in_depends_on_order(lab):
    plan, engine, _root = lab
    for name in ("web", "db"):
        engine.containers[name].state = "exited"
    _dead_journal({JOURNAL_KEY: {"plan": plan.raw, "services": ["web", "db"]}})
    out = recover_ops.recover()
    assert engine.verbs("start") == ["db", "web"]
    assert out.recovered is True and out.verb == "test" and "db, web" in out.actions[0]
    assert journal.load() is None


def test_recover_leaves_a_journal_it_cannot_read_and_one_whose_owner_lives(lab):
    _plan, engine, _root = lab
    _dead_journal({"from-a-newer-version": {}})
    out = recover_ops.recover()
    assert "unknown journal entry 'from-a-newer-version'" in out.actions[0]
    assert journal.load()["undo"] == {"from-a-newer-version": {}}
    write_json(registry.JOURNAL.path, {"verb": "backup", "pid": os.getppid(), "undo": {JOURNAL_KEY: {}}})
    assert recover_ops.pending() is None and recover_ops.recover().to_json() == {"recovered": False, "actions": [], "spools_removed": []}
    assert journal.load()["pid"] == os.getppid() and engine.verbs("start") == []


def test_recover_brings_the_old_container_back_after_a_killed_upgrade(lab):
    plan, engine, _root = lab
    engine.rename("app", "app-pre-upgrade-1")
    engine.containers["app-pre-upgrade-1"].state = "exited"
    engine.add("app", {LABEL_STACK: VSN, LABEL_ROLE: "service"}, image="localhost/new")
    _dead_journal({"upgrade": {"plan": plan.raw, "service": "app", "aside": "app-pre-upgrade-1"}})
    recover_ops.recover()
    assert engine.containers["app"].image == "localhost/busybox" and "app-pre-upgrade-1" not in engine.containers
    assert "app" in engine.running()


def test_recover_rolls_a_killed_deploy_back_and_settles_its_stack_state(lab, secrets_file):
    plan, engine, root = lab
    deployed.record(plan.raw, str(secrets_file))
    stackstate.transition(stackstate.CREATE_PENDING, "deploy")
    _dead_journal({"deploy": {"plan": plan.raw}})
    out = recover_ops.recover()
    assert engine.containers == {} and "containerless" in out.actions[0]
    assert (root / "data" / "dbdata" / "data" / "table").exists()  # data dirs are never touched
    assert deployed.current()["deployed_at"] is None
    assert stackstate.current() == stackstate.FAILURE


def test_recover_finishes_a_committed_restore_and_undoes_an_uncommitted_one(lab):
    _plan, _engine, root = lab
    base = root / "data" / "dbdata"
    live, staging, old = base / "data", base / ".data.restore-x", base / "data.pre-restore-x"
    swap = {"volume": "dbdata", "live": str(live), "staging": str(staging), "old": str(old)}
    os.rename(live, old)  # killed right after swapping in: the new data is live, the old beside it
    live.mkdir()
    (live / "restored").write_text("new")
    _dead_journal({RESTORE_KEY: {"swaps": [swap], "committed": False}})
    recover_ops.recover()
    assert (live / "table").exists() and not old.exists() and not staging.exists()  # swapped back
    os.rename(live, old)
    live.mkdir()
    (live / "restored").write_text("new")
    _dead_journal({RESTORE_KEY: {"swaps": [swap], "committed": True}})
    recover_ops.recover()
    assert json.dumps(sorted(p.name for p in live.iterdir())) == '["restored"]' and not old.exists()
