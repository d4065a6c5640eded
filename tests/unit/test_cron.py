"""Cron file rendering and validation, idempotent install, systemd OnCalendar conversion (cross-checked
against systemd-analyze and croniter where systemd-analyze is installed)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from datetime import UTC, datetime

import pytest
from croniter import croniter

from migrator.errors import PlanInvalid
from migrator.ops import cron
from migrator.plan.model import Plan
from migrator.state import registry
from tests.lab.vsn import REPO

DEMO = json.loads((REPO / "tests" / "lab" / "writer-plan.json").read_text())


def plan(**changes) -> Plan:
    raw = copy.deepcopy(DEMO)
    raw["backup"].update({"drill_schedule": "30 3 * * 0"})
    raw["backup"]["retention"]["schedule"] = "15 6 * * *"
    for path, value in changes.items():
        section, key = path.split("__")
        raw[section][key] = value
    return Plan.from_json(raw)


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MIGRATOR_CRON_FILE", raising=False)
    return tmp_path / "state"


def test_renders_one_line_per_schedule_with_wait_log_and_env(state):
    text = cron.render_cron(plan())
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    assert env["MIGRATOR_STATE_DIR"] == str(state) and env["SHELL"] == "/bin/sh"
    assert env["PATH"].endswith("/usr/sbin:/usr/bin:/sbin:/bin")
    jobs = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(jobs) == 4
    by_verb = {}
    for line in jobs:
        fields = line.split(None, 6)
        schedule, user, command = " ".join(fields[:5]), fields[5], fields[6]
        assert user == "root" and croniter.is_valid(schedule)
        argv = shlex.split(command)
        assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
        by_verb[argv[1]] = (schedule, argv)
        assert argv[-2:] == [f"{state}/cron-{argv[1]}.log", "2>&1"] and argv[-3] == ">>"
    assert by_verb["backup"][0] == "4 5 * * *" and "--wait" in by_verb["backup"][1]
    assert by_verb["health"][0] == "*/5 * * * *" and "--notify" in by_verb["health"][1]
    assert by_verb["drill"][0] == "30 3 * * 0" and by_verb["prune"][0] == "15 6 * * *"


def test_default_state_dir_is_not_written_and_percent_is_escaped(monkeypatch, tmp_path):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", "/var/lib/migrator")
    monkeypatch.setattr(registry, "state_dir", lambda: tmp_path / "50%")
    text = cron.render_cron(plan())
    assert "MIGRATOR_STATE_DIR" not in text
    assert "50\\%/cron-backup.log" in text and "50%/" not in text.replace("50\\%", "")


@pytest.mark.parametrize("path,value,expected", [
    ("backup__schedule", "99 5 * * *", "backup.schedule"),
    ("health__schedule", "*/5 * * *", "health.schedule"),
    ("backup__drill_schedule", "0 0 31 2 * *", "backup.drill_schedule"),
])
def test_invalid_expressions_are_plan_problems_with_their_path(path, value, expected):
    with pytest.raises(PlanInvalid) as exc:
        cron.render_cron(plan(**{path: value}))
    assert exc.value.exit_code == 3
    assert any(d.startswith(expected + ":") for d in exc.value.details), exc.value.details


def test_prune_schedule_needs_retention_values():
    raw = copy.deepcopy(DEMO)
    raw["backup"]["retention"] = {"schedule": "0 4 * * *"}
    with pytest.raises(PlanInvalid) as exc:
        cron.jobs(Plan.from_json(raw))
    assert exc.value.details == ["backup.retention.schedule: scheduled prune needs backup.retention.keep_* values"]


def test_install_is_idempotent_and_atomic(tmp_path):
    target = tmp_path / "cron.d" / "migrator"
    first = cron.install(plan(), target)
    assert first.changed and oct(target.stat().st_mode & 0o777) == "0o644"
    inode, mtime = target.stat().st_ino, target.stat().st_mtime_ns
    again = cron.install(plan(), target)
    assert not again.changed
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (inode, mtime)  # not rewritten
    changed = cron.install(plan(backup__schedule="4 6 * * *"), target)
    assert changed.changed and target.stat().st_ino != inode  # replaced by rename, never edited in place
    assert [p.name for p in target.parent.iterdir()] == ["migrator"]  # no temp files left
    assert cron.show(plan(backup__schedule="4 6 * * *"), target).in_sync
    assert not cron.show(plan(), target).in_sync
    assert cron.remove(target).removed and not target.exists()
    assert not cron.remove(target).removed


def test_env_override_of_the_cron_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_CRON_FILE", str(tmp_path / "elsewhere"))
    assert cron.install(plan()).file == str(tmp_path / "elsewhere")


@pytest.mark.parametrize("expr,expected", [
    ("4 5 * * *", "*-*-* 5:4:00"),
    ("*/5 * * * *", "*-*-* *:0,5,10,15,20,25,30,35,40,45,50,55:00"),
    ("30 3 * * 0", "Sun *-*-* 3:30:00"),
    ("0 2 * * 1-5", "Mon,Tue,Wed,Thu,Fri *-*-* 2:0:00"),
    ("0 0 1,15 * *", "*-*-1,15 0:0:00"),
    ("15 8-18/2 * 1-6 *", "*-1..6-* 8,10,12,14,16,18:15:00"),
])
def test_on_calendar(expr, expected):
    assert cron.on_calendar(expr) == expected


def test_on_calendar_refuses_dom_and_dow_together():
    with pytest.raises(ValueError, match="cron ORs them"):
        cron.on_calendar("0 0 1 * 1")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("expr", ["4 5 * * *", "*/5 * * * *", "30 3 * * 0", "0 2 * * 1-5", "0 0 1,15 * *",
                                  "15 8-18/2 * 1-6 *", "7 */6 * * 6,7"])
def test_on_calendar_fires_when_cron_does(expr):
    """systemd's own parser agrees with croniter on the next five times."""
    calendar = cron.on_calendar(expr)
    out = subprocess.run(["systemd-analyze", "calendar", "--iterations=5", calendar], capture_output=True, text=True,
                         env={**os.environ, "TZ": "UTC"}, check=True).stdout
    stamps = re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", out)
    systemd_times = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for s in stamps][:5]
    it = croniter(expr, datetime.now(UTC))
    cron_times = [it.get_next(datetime) for _ in range(5)]
    assert systemd_times == cron_times, (calendar, out)


def test_systemd_units(tmp_path):
    res = cron.install_systemd(plan(), tmp_path)
    assert sorted(res.units) == sorted(f"migrator-{v}.{k}" for v in ("backup", "health", "drill", "prune")
                                          for k in ("service", "timer"))
    timer = (tmp_path / "migrator-backup.timer").read_text()
    assert "OnCalendar=*-*-* 5:4:00" in timer and "Persistent=true" in timer
    service = (tmp_path / "migrator-health.service").read_text()
    assert re.search(r"^ExecStart=/\S+ health --notify$", service, re.M)
    assert "Environment=" in service and "Type=oneshot" in service
    assert not cron.install_systemd(plan(), tmp_path).changed
    assert len(cron.remove_systemd(tmp_path).removed) == 8


def test_show_and_remove_find_the_file_install_wrote(tmp_path, secrets_file):
    """`cron install --file F` is remembered in the state dir: `cron show` and `cron remove` without
    --file act on F, not on the default /etc/cron.d/migrator (issue 22, item 5)."""
    from typer.testing import CliRunner

    from migrator.cli.app import app

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan().raw))
    target = tmp_path / "cron.d" / "nightly"
    runner = CliRunner()
    args = ["--plan", str(plan_file), "--secrets", str(secrets_file)]
    assert runner.invoke(app, ["cron", "install", *args, "--file", str(target)]).exit_code == 0
    shown = runner.invoke(app, ["cron", "show", *args])
    assert shown.exit_code == 0 and "not installed" not in shown.stdout
    assert shown.stdout.startswith(f"# {target} (matches the plan)")
    as_json = json.loads(runner.invoke(app, ["cron", "show", *args, "--json"]).stdout)
    assert as_json["file"] == str(target) and as_json["in_sync"]
    removed = runner.invoke(app, ["cron", "remove"])
    assert removed.exit_code == 0 and f"{target}: removed" in removed.stdout and not target.exists()
    assert "not installed" in runner.invoke(app, ["cron", "show", *args]).stdout


SERVE_ARGS = "--listen 0.0.0.0:8765 --tls-cert '/etc/migrator/my cert.pem' --tls-key /etc/migrator/key.pem --follow-dependents"


def test_serve_adds_an_reboot_line_and_is_remembered(tmp_path, state):
    target = tmp_path / "cron.d" / "migrator"
    argv = cron.serve_args(SERVE_ARGS)
    assert argv[3] == "/etc/migrator/my cert.pem"
    first = cron.install(plan(), target, True, argv)
    assert first.changed and first.serve == argv
    reboot = [line for line in target.read_text().splitlines() if line.startswith("@reboot")]
    assert len(reboot) == 1
    words = shlex.split(reboot[0])
    assert words[:2] == ["@reboot", "root"] and os.path.isabs(words[2]) and words[3] == "serve"
    assert words[4:-3] == argv and words[-3:] == [">>", f"{state}/cron-serve.log", "2>&1"]
    assert "MIGRATOR_STATE_DIR=" in target.read_text()  # the same carried environment as the jobs
    # Installing again after a plan change, without --serve, keeps the line (remembered in the state dir).
    again = cron.install(plan(backup__schedule="4 6 * * *"), target)
    assert again.changed and again.serve == argv and "@reboot root" in target.read_text()
    assert not cron.install(plan(backup__schedule="4 6 * * *"), target, True).changed  # --serve alone: same args
    shown = cron.show(plan(backup__schedule="4 6 * * *"), target)
    assert shown.in_sync and shown.serve == argv
    dropped = cron.install(plan(backup__schedule="4 6 * * *"), target, False)
    assert dropped.changed and dropped.serve is None and "@reboot" not in target.read_text()
    assert cron.show(plan(backup__schedule="4 6 * * *"), target).in_sync
    cron.install(plan(), target, True)
    assert cron.show(plan(), target).serve == []  # --serve alone, nothing before: serve's defaults
    assert cron.remove(target).removed and cron.remembered_serve(target) is None
    assert [p.name for p in target.parent.iterdir()] == []


def test_serve_percent_is_escaped_for_cron(tmp_path):
    text = cron.render_cron(plan(), ["--tls-key", "/etc/50%/key.pem"])
    assert "/etc/50\\%/key.pem" in text


@pytest.mark.parametrize("text,why", [("--listen 0.0.0.0:1\n--insecure-http", "newline"),
                                      ("--listen 0.0.0.0:1\r", "newline"),
                                      ("--tls-cert '/etc/unclosed", "not parseable")])
def test_bad_serve_args_are_usage_errors(text, why):
    from migrator.errors import UsageError

    with pytest.raises(UsageError, match=why) as exc:
        cron.serve_args(text)
    assert exc.value.exit_code == 2


def test_serve_args_and_no_serve_contradict(tmp_path):
    from migrator.errors import UsageError

    with pytest.raises(UsageError):
        cron.install(plan(), tmp_path / "c", False, ["--listen", "127.0.0.1:1"])


def test_systemd_serve_unit(tmp_path):
    argv = cron.serve_args(SERVE_ARGS)
    res = cron.install_systemd(plan(), tmp_path, True, argv)
    assert "migrator-serve.service" in res.units and "migrator-serve.timer" not in res.units
    assert res.next_step.endswith(" migrator-serve.service") and res.serve == argv
    unit = (tmp_path / "migrator-serve.service").read_text()
    assert "Type=simple" in unit and "Restart=on-failure" in unit and "WantedBy=multi-user.target" in unit
    assert "Environment=MIGRATOR_STATE_DIR=" in unit
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    assert shlex.split(exec_start)[1:] == ["serve", *argv]
    assert cron.show(None).serve_units == [str(tmp_path / "migrator-serve.service")]
    assert not cron.install_systemd(plan(), tmp_path).changed  # kept without --serve, unchanged
    dropped = cron.install_systemd(plan(), tmp_path, False)
    assert dropped.removed == ["migrator-serve.service"] and not (tmp_path / "migrator-serve.service").exists()
    cron.install_systemd(plan(), tmp_path, True)
    assert len(cron.remove_systemd(tmp_path).removed) == 9 and cron.remembered_serve(tmp_path) is None


def test_cli_serve_args(tmp_path, secrets_file):
    from typer.testing import CliRunner

    from migrator.cli.app import app

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan().raw))
    target = tmp_path / "cron.d" / "migrator"
    runner = CliRunner()
    args = ["cron", "install", "--plan", str(plan_file), "--secrets", str(secrets_file), "--file", str(target)]
    bad = runner.invoke(app, [*args, "--serve-args", "--listen 'x"])
    assert bad.exit_code == 2 and "not parseable" in bad.stderr and not target.exists()
    ok = runner.invoke(app, [*args, "--serve-args", "--listen 127.0.0.1:8765", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["serve"] == ["--listen", "127.0.0.1:8765"]
    human = runner.invoke(app, args)
    assert human.exit_code == 0 and "@reboot         serve --listen 127.0.0.1:8765" in human.stdout
    assert "@reboot root" in target.read_text()


def test_results_json_is_the_cli_contract(tmp_path):
    """The typed results print the keys `cron install|show|remove --json` always had (plus serve)."""
    target = tmp_path / "cron.d" / "migrator"
    assert set(cron.install(plan(), target).to_json()) == {"file", "changed", "jobs", "content", "serve"}
    assert cron.install(plan(), target).to_json()["jobs"][0] == {"verb": "backup", "schedule": "4 5 * * *",
                                                                 "args": ["--wait", str(cron.BACKUP_WAIT)],
                                                                 "path": "backup.schedule"}
    assert set(cron.show(plan(), target).to_json()) == {"file", "installed", "expected", "in_sync", "other_files",
                                                        "systemd_dirs", "serve", "serve_units"}
    assert cron.remove(target).to_json() == {"file": str(target), "removed": True}
    units = cron.install_systemd(plan(), tmp_path / "units").to_json()
    assert set(units) == {"directory", "units", "changed", "removed", "next_step", "serve"}
    assert cron.remove_systemd(tmp_path / "units").to_json() == {"directory": str(tmp_path / "units"),
                                                                 "removed": sorted(units["units"])}
