"""Real databases under migrator: MariaDB and PostgreSQL (the lab images, data on a volume container's
mount) while a client commits numbered, checksummed transactions. A two-phase backup, a drill, a dump
loaded into a scratch database, a restore and a move must each give a database that starts, passes its
own checks and holds a consistent prefix of the committed transactions (tests/lab/databases.py)."""

from __future__ import annotations

import json

import pytest

from tests.lab.databases import KINDS, Loader, db_plan, db_port, ledger, own_checks, secrets_values
from tests.lab.plans import secrets_file
from tests.lab.vsn import write_json

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def _exec_in(machine, container: str = "db"):
    def run(argv: list[str]) -> str:
        done = machine.podman("exec", container, *argv, check=False)
        assert done.returncode == 0, f"{argv[0]} in {container} exited {done.returncode}: {done.stderr[-500:]}"
        return done.stdout

    return run


def _deploy(vsn, tmp_path, raw: dict):
    plan = write_json(tmp_path / "plan.json", raw)
    secrets = secrets_file(tmp_path / "secrets.json", secrets_values())
    done = vsn.migrator("deploy", str(plan), "--secrets", str(secrets))
    assert done.returncode == 0, done.stderr
    return plan, secrets


def _ok(done) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_phase_backup_drill_dump_and_restore_under_write_load(vsn, kind, tmp_path):
    raw = db_plan(vsn, kind)
    plan, secrets = _deploy(vsn, tmp_path, raw)
    checks = {c["name"]: c for c in _ok(vsn.migrator("check", str(plan), "--secrets", str(secrets), "--json"))["checks"]}
    tool = {"mariadb": "mariadb-dump", "postgres": "pg_dump"}[kind]
    assert checks["dump tool db"]["ok"] and checks["dump tool db"]["detail"].endswith(tool)
    assert checks["database probe db"]["detail"].startswith("runs a query")
    store = f"file://{tmp_path}/store"
    loader = Loader(kind, db_port(raw)).start()
    before = loader.acked
    snap = _ok(vsn.migrator("backup", "--to", store, "--json"))
    # Writers were stopped for phase 2 only; the loader saw exactly that one outage and came back.
    assert snap["downtime"]["db"] > 0
    assert [d["database"] for d in snap["dumps"]] == ["app"] and snap["dumps"][0]["kind"] == kind
    loader.wait_for(lambda: bool(loader.outages) and loader.outages[0].ended is not None, 120, "a reconnect")
    assert len(loader.outages) == 1, loader.outages
    stopped_at = loader.outages[0].acked_before
    loader.wait_for(lambda: loader.acked > stopped_at + 50, 120, "50 rows after the backup")

    # A drill boots the snapshot's physical data in an isolated stack; its probe is a real query.
    # It also loads the dump into a scratch database of the drilled service.
    drill = _ok(vsn.migrator("drill", "--from", store, "--json"))
    assert drill["ok"] and [s["ok"] for s in drill["services"].values()] == [True]
    assert drill["dumps"] == {"db/app": {"ok": True, "into": "app_drill", "bytes": snap["dumps"][0]["uncompressed"]}}

    # The dump was taken live, before phase 1: a consistent point between the start of the backup and the stop.
    loaded = _ok(vsn.migrator("load-dump", "latest", "db", "--as", "app_check", "--from", store, "--json"))
    assert loaded["loaded"] == [{"database": "app", "into": "app_check", "bytes": snap["dumps"][0]["uncompressed"]}]
    in_dump = ledger(_exec_in(vsn), kind, "app_check")
    assert before <= in_dump <= stopped_at + 1, (before, in_dump, stopped_at)

    final = loader.stop()
    done = _ok(vsn.migrator("restore", "latest", "--from", store, "--json"))
    assert done["volumes"] == ["dbdata"]
    exec_db = _exec_in(vsn)
    own_checks(exec_db, kind)
    restored = ledger(exec_db, kind)
    # Exactly what was committed when the database stopped for phase 2 (plus a commit in flight then).
    assert stopped_at <= restored <= stopped_at + 1, (stopped_at, restored)
    assert restored < final  # the restore really went back in time


def test_quiesce_none_with_a_dump_has_no_downtime_and_a_consistent_dump(vsn, kind, tmp_path):
    raw = db_plan(vsn, kind, quiesce="none")
    _deploy(vsn, tmp_path, raw)
    store = f"file://{tmp_path}/store"
    loader = Loader(kind, db_port(raw)).start()
    before = loader.acked
    snap = _ok(vsn.migrator("backup", "--to", store, "--json"))
    after = loader.acked
    assert not any(snap["downtime"].values()), snap["downtime"]
    assert loader.outages == []  # not one failed statement: the database never stopped
    loaded = _ok(vsn.migrator("load-dump", "latest", "db", "--database", "app", "--as", "app_check", "--from", store,
                              "--json"))
    assert loaded["loaded"][0]["into"] == "app_check"
    in_dump = ledger(_exec_in(vsn), kind, "app_check")
    assert before <= in_dump <= after, (before, in_dump, after)
    loader.stop()


def test_move_under_write_load_keeps_every_committed_transaction(vsn, target_vsn, kind, tmp_path):
    raw = db_plan(vsn, kind)
    _deploy(vsn, tmp_path, raw)
    loader = Loader(kind, db_port(raw)).start()
    moved = _ok(vsn.migrator("move", *target_vsn.move_args(), "--json"))
    assert moved["volumes"] == ["dbdata"] and moved["downtime_s"] > 0
    # The source stopped for the final sync: the loader's first failed statement marks what was committed.
    loader.wait_for(lambda: bool(loader.outages), 60, "the source's stop")
    stopped_at = loader.outages[0].acked_before
    loader.stop()
    exec_target = _exec_in(target_vsn)
    own_checks(exec_target, kind)
    there = ledger(exec_target, kind)
    assert stopped_at <= there <= stopped_at + 1, (stopped_at, there)
    assert target_vsn.containers()["db"] == "running"


def test_os_update_under_write_load_keeps_every_committed_transaction(vsn, kind, tmp_path):
    raw = db_plan(vsn, kind)
    raw["backup"] = {"targets": [f"file://{tmp_path}/store"]}
    _deploy(vsn, tmp_path, raw)
    loader = Loader(kind, db_port(raw)).start()
    prepared = _ok(vsn.migrator("os-update", "prepare", "--json"))
    assert vsn.containers() == {}  # containerless while the OS is updated
    loader.wait_for(lambda: bool(loader.outages), 60, "the stop")
    stopped_at = loader.outages[0].acked_before
    finished = _ok(vsn.migrator("os-update", "finish", "--json"))
    assert finished["differences"] == [] and list(finished["health"]) == ["db"]
    # The loader reconnects to the redeployed database and goes on after what it holds.
    loader.wait_for(lambda: loader.outages[0].ended is not None and loader.acked > stopped_at + 20, 120,
                    "20 rows after the update")
    # Not one acknowledged commit lost across the update: the server held all of them when the loader got
    # back in, and every row since is there too.
    assert stopped_at <= loader.outages[0].resumed_from <= stopped_at + 1, loader.outages[0]
    final = loader.stop()
    exec_db = _exec_in(vsn)
    own_checks(exec_db, kind)
    assert ledger(exec_db, kind) == final
    assert prepared["snapshot_id"]
