"""Day-2 operations against real podman stacks: health (stopped service, failing probe), failure mail to
a real SMTP sink on loopback (once, reminder, recovery) and through a real mutt, cron file lines run
as cron would run them, the metrics textfile, stack states, archive/unarchive/cleanup, the history."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from croniter import croniter
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.docker import both_engines
from tests.lab.plans import demo_plan, web_port
from tests.lab.smtpsink import SINK_WARNING, SMTPSink
from tests.lab.vsn import free_port, write_json

pytestmark = pytest.mark.filterwarnings(SINK_WARNING)
# A stopped container: podman says "stopped" until its cleanup process has run, then "exited".
STOPPED = {"exited", "stopped"}


def ops_plan(vsn, tmp_path, *, smtp_port: int | None = None, backup: bool = False) -> dict:
    """Flat demo plan; web probes /ok.html (deleting it makes the probe fail without touching containers)."""
    raw = demo_plan(vsn, host=False)
    web = next(s for s in raw["services"] if s["name"] == "web")
    web["health"].update({"path": "/ok.html", "timeout": 20})
    www = vsn.data_root / "webdata" / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "ok.html").write_text("ok")
    raw["health"] = {"schedule": "*/5 * * * *", "min_free": "1M",
                     "notify": {"email": "ops@example.org", "from": "vsn-t@example.org", "reminder_hours": 24}}
    if smtp_port:
        raw["health"]["notify"]["smtp"] = {"host": "127.0.0.1", "port": smtp_port, "tls": "none"}
    if backup:
        raw["backup"] = {"targets": [f"file://{tmp_path}/store"], "schedule": "4 5 * * *",
                         "drill_schedule": "30 3 * * 0", "max_age_hours": 26,
                         "retention": {"keep_last": 2, "schedule": "15 6 * * *"}}
    return raw


def deploy(vsn, tmp_path, raw, secrets) -> Path:
    plan = write_json(tmp_path / "plan.json", raw)
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    return plan


def run_json(vsn, *args, expect=0, env=None):
    result = vsn.migrator(*args, "--json", env=env)
    assert result.returncode == expect, result.stderr + result.stdout
    return json.loads(result.stdout)


def health(vsn, *args, env=None):
    result = vsn.migrator("health", *args, "--json", env=env)
    out = json.loads(result.stdout)
    assert result.returncode == (0 if out["healthy"] else 1), result.stderr
    return out


def history(vsn, *args) -> list[dict]:
    return run_json(vsn, "log", "--limit", "200", *args)["entries"]


def metrics(path: Path) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples}


def test_health_reports_failures_and_mails_once_reminds_and_recovers(vsn, secrets, tmp_path):
    with SMTPSink() as sink:
        env = {**vsn.env(), "MIGRATOR_MAILER": "smtp"}
        raw = ops_plan(vsn, tmp_path, smtp_port=sink.port)
        deploy(vsn, tmp_path, raw, secrets)
        ok = health(vsn, "--notify", env=env)
        assert ok["healthy"] and ok["failures"] == [] and ok["notify"]["sent"] is None
        names = {c["name"] for c in ok["checks"]}
        assert {"container:web", "container:db", "container:dbdata", "container:admin", "probe:web", "probe:db",
                "disk"} <= names

        # A failing probe: the page it asks for is gone (the container still runs).
        (vsn.data_root / "webdata" / "www" / "ok.html").unlink()
        bad = health(vsn, "--notify", env=env)
        assert not bad["healthy"]
        assert bad["failures"] == [f"probe:web: http://127.0.0.1:{web_port(raw)}/ok.html answered 404 (expected 200)"]
        (first,) = sink.wait_for(1)
        assert first.recipients == ["ops@example.org"] and first.sender == "vsn-t@example.org"
        assert first.subject.startswith("[migrator] t: health check FAILING (1): probe:web")
        assert "NEW probe:web" in first.body and "answered 404" in first.body

        # Human output: one line per failure, exit 1.
        human = vsn.migrator("health", env=env)
        assert human.returncode == 1 and "UNHEALTHY" in human.stdout and "probe:web" in human.stdout

        # Still failing: no second mail.
        assert not health(vsn, "--notify", env=env)["healthy"]
        assert len(sink.messages) == 1

        # A stopped service is a new failure: mailed at once (its probe is skipped, not double-reported).
        vsn.podman("stop", "-t", "1", "web")
        stopped = health(vsn, "--notify", env=env)
        assert stopped["failures"] == ["container:web: service web is exited (expected running)"]
        assert {c["name"]: c["ok"] for c in stopped["checks"]}["probe:web"] is None
        assert len(sink.wait_for(2)) == 2 and "container:web" in sink.messages[1].subject

        # The reminder interval (24 h) passes: age the remembered last-mailed times instead of waiting.
        state_file = vsn.state_dir / "notify_state.json"
        state = json.loads(state_file.read_text())
        src = state["sources"]["health"]
        src["last_mailed"] -= 25 * 3600
        for check in src["failing"].values():
            check["last_mailed"] -= 25 * 3600
        state_file.write_text(json.dumps(state))
        health(vsn, "--notify", env=env)
        assert len(sink.wait_for(3)) == 3 and "still failing (reminder)" in sink.messages[2].subject
        health(vsn, "--notify", env=env)
        assert len(sink.messages) == 3

        # Fixed: one recovery mail, then silence.
        vsn.podman("start", "web")
        (vsn.data_root / "webdata" / "www" / "ok.html").write_text("ok")
        recovered = health(vsn, "--notify", env=env)
        assert recovered["healthy"] and recovered["notify"]["sent"] == "recovered"
        assert len(sink.wait_for(4)) == 4 and sink.messages[3].subject == "[migrator] t: health check recovered"
        assert "all good again" in sink.messages[3].body
        health(vsn, "--notify", env=env)
        assert len(sink.messages) == 4

    # History keeps health runs whose outcome changed only; metrics show the last health run.
    runs = [e["message"] for e in history(vsn, "--verb", "health")]
    assert [r.split(":")[0] for r in runs] == ["healthy", "unhealthy", "unhealthy", "healthy"], runs
    m = metrics(vsn.state_dir / "metrics" / "migrator.prom")
    assert m[("migrator_health_ok", ())] == 1 and m[("migrator_health_check_ok", (("check", "probe:web"),))] == 1


def test_backup_failure_mails_through_mutt_then_recovers(vsn, secrets, tmp_path):
    if shutil.which("mutt") is None:
        pytest.skip("mutt is not installed (make deps installs it)")
    with SMTPSink() as sink:
        home = tmp_path / "home"
        home.mkdir()
        # mutt's own config says how it delivers; migrator only runs `mutt -s SUBJECT -- ADDRESS`.
        (home / ".muttrc").write_text(f'set smtp_url="smtp://127.0.0.1:{sink.port}/"\nset copy=no\n'
                                      "set ssl_starttls=no\nset ssl_force_tls=no\n")
        env = {**vsn.env(), "HOME": str(home), "MIGRATOR_MAILER": "auto"}
        raw = ops_plan(vsn, tmp_path, backup=True)  # no smtp section: mutt is the transport
        deploy(vsn, tmp_path, raw, secrets)
        # The store's parent is a file: the backup cannot create its store (exit 8).
        (tmp_path / "store").write_text("not a directory")
        raw["backup"]["targets"] = [f"file://{tmp_path}/store/sub"]
        write_json(vsn.state_dir / "plan.json", raw)
        failed = vsn.migrator("backup", "--json", env=env)
        assert failed.returncode != 0, failed.stdout
        (mail,) = sink.wait_for(1)
        assert mail.recipients == ["ops@example.org"] and "vsn-t@example.org" in mail.sender
        assert mail.subject.startswith("[migrator] t: migrator backup FAILING (1): backup: exit")
        assert "backup: exit" in mail.body

        assert vsn.migrator("backup", env=env).returncode != 0
        assert len(sink.messages) == 1  # the same failure again: no second mail

        (tmp_path / "store").unlink()
        ok = vsn.migrator("backup", "--json", env=env)
        assert ok.returncode == 0, ok.stderr
        assert len(sink.wait_for(2)) == 2 and sink.messages[1].subject == "[migrator] t: migrator backup recovered"
    entries = history(vsn, "--verb", "backup")
    assert [e["result"] for e in entries] == ["ok", "failed", "failed"]
    assert entries[0]["snapshot_id"] == json.loads(ok.stdout)["snapshot_id"] and entries[0]["bytes"] > 0


def test_the_plans_smtp_wins_over_mutt_and_an_unsent_mail_surfaces(vsn, secrets, tmp_path):
    """Issue 22, item 4: mutt installed (without a config it hands mail to a sendmail this VSN lacks),
    health.notify.smtp in the plan, no MIGRATOR_MAILER: the mail goes over the plan's SMTP. A mail that
    cannot be sent shows in the command's output and in health; an override that fails is named."""
    if shutil.which("mutt") is None:
        pytest.skip("mutt is not installed (make deps installs it)")
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in vsn.env().items() if k != "MIGRATOR_MAILER"}, "HOME": str(home)}
    with SMTPSink() as sink:
        raw = ops_plan(vsn, tmp_path, smtp_port=sink.port, backup=True)
        deploy(vsn, tmp_path, raw, secrets)
        (vsn.data_root / "webdata" / "www" / "ok.html").unlink()
        bad = health(vsn, "--notify", env=env)
        assert not bad["healthy"] and bad["notify"]["transport"] == "smtp" and bad["notify"]["error"] is None
        (mail,) = sink.wait_for(1)
        assert "health check FAILING" in mail.subject
    # The SMTP server is gone now; a backup fails (its store's parent is a file) and cannot mail it.
    (tmp_path / "store").write_text("not a directory")
    raw["backup"]["targets"] = [f"file://{tmp_path}/store/sub"]
    write_json(vsn.state_dir / "plan.json", raw)
    failed = vsn.migrator("backup", "--json", env=env)
    assert failed.returncode == 8, failed.stderr
    warnings = json.loads(failed.stdout)["warnings"]
    assert any(w.startswith("could not mail ops@example.org: SMTP 127.0.0.1") for w in warnings), warnings
    assert "could not mail ops@example.org" in failed.stderr
    report = health(vsn, env=env)
    assert any(f.startswith("mail: mail not sent") and "backup: SMTP" in f for f in report["failures"])
    again = health(vsn, "--notify", env=env)
    assert again["notify"]["error"] and any(f.startswith("mail: mail not sent (retried on the next run): health:")
                                            for f in again["failures"])
    forced = vsn.migrator("backup", "--json", env={**env, "MIGRATOR_MAILER": "mutt"})
    warnings = json.loads(forced.stdout)["warnings"]
    assert any("mutt exited" in w and "MIGRATOR_MAILER=mutt" in w for w in warnings), warnings


@both_engines
def test_start_stop_restart_act_on_what_health_reports(vsn, secrets, tmp_path):
    """Issue 22, item 8: services stopped and started in depends_on order (web depends on db), under the
    lock and in the history; health names the verb; a restart killed after its stop is undone by recover."""
    raw = ops_plan(vsn, tmp_path)
    deploy(vsn, tmp_path, raw, secrets)
    stopped = run_json(vsn, "stop", "db", "web")
    assert stopped["stopped"] == ["web", "db"] and stopped["started"] == []  # dependents first
    states = vsn.containers()
    assert {states["web"], states["db"]} <= STOPPED and states["web-netns"] == "running"
    report = health(vsn)
    assert "container:web: `migrator start web` starts it" in report["hints"]
    assert "hint: container:db: `migrator start db` starts it" in vsn.migrator("health").stdout
    started = run_json(vsn, "start", "web")  # what web depends on starts first
    assert started["started"] == ["db", "web"] and health(vsn)["healthy"]
    assert run_json(vsn, "start", "web")["started"] == []
    restarted = run_json(vsn, "restart", "db")
    assert restarted["stopped"] == ["db"] and restarted["started"] == ["db"] and health(vsn)["healthy"]
    human = vsn.migrator("restart", "web")
    assert human.returncode == 0 and "stopped: web" in human.stdout and "started: web" in human.stdout
    killed = vsn.migrator("restart", "web", env={**vsn.env(), "MIGRATOR_KILL_AT": "restart.stopped"})
    assert killed.returncode == -9 and vsn.containers()["web"] in STOPPED
    assert any("web" in a for a in run_json(vsn, "recover")["actions"])
    assert vsn.containers()["web"] == "running"
    assert run_json(vsn, "start", "nosuch", expect=2)["message"] == "no enabled service named 'nosuch' in the plan"
    assert [e["verb"] for e in history(vsn) if e["verb"] in ("start", "stop", "restart")] == [
        "start", "restart", "restart", "start", "start", "stop"]


def _cron_env(env_lines: dict) -> dict:
    """What cron gives a job: HOME, LOGNAME, SHELL from passwd plus the file's variables, nothing else."""
    return {"HOME": "/root", "LOGNAME": "root", "SHELL": "/bin/sh", **env_lines}


def test_cron_file_lines_run_as_cron_would(vsn, secrets, tmp_path):
    with SMTPSink() as sink:
        raw = ops_plan(vsn, tmp_path, smtp_port=sink.port, backup=True)
        deploy(vsn, tmp_path, raw, secrets)
        cron_file = tmp_path / "cron.d" / "migrator"
        env = {**vsn.env(), "MIGRATOR_CRON_FILE": str(cron_file), "MIGRATOR_MAILER": "smtp"}
        port = free_port()
        serve_args = f"--listen 127.0.0.1:{port} --secrets {shlex.quote(str(secrets))}"
        first = json.loads(vsn.migrator("cron", "install", "--serve-args", serve_args, "--json", env=env).stdout)
        assert first["ok"] and first["changed"] and first["file"] == str(cron_file)
        again = json.loads(vsn.migrator("cron", "install", "--json", env=env).stdout)
        assert again["changed"] is False and again["serve"] == shlex.split(serve_args)  # idempotent, serve kept
        shown = json.loads(vsn.migrator("cron", "show", "--json", env=env).stdout)
        assert shown["in_sync"] and shown["installed"] == cron_file.read_text()

        env_lines, jobs, reboot = {}, {}, []
        for line in cron_file.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            if re.match(r"^[A-Z_]+=", line):
                key, value = line.split("=", 1)
                env_lines[key] = value
                continue
            if line.startswith("@reboot "):
                reboot.append(line.split(None, 2))
                continue
            fields = line.split(None, 6)
            schedule, user, command = " ".join(fields[:5]), fields[5], fields[6]
            assert croniter.is_valid(schedule) and user == "root"
            jobs[shlex.split(command)[1]] = (schedule, command)
        assert env_lines["MIGRATOR_STATE_DIR"] == str(vsn.state_dir)
        assert {v: s for v, (s, _) in jobs.items()} == {"backup": "4 5 * * *", "health": "*/5 * * * *",
                                                       "drill": "30 3 * * 0", "prune": "15 6 * * *"}

        # Each line's command, once, exactly as cron runs it (sh -c, cron's environment).
        for verb in ("backup", "health", "drill", "prune"):
            done = subprocess.run(["/bin/sh", "-c", jobs[verb][1]], env=_cron_env(env_lines), capture_output=True,
                                  text=True, timeout=600)
            log = vsn.state_dir / f"cron-{verb}.log"
            assert done.returncode == 0, f"{verb}: {log.read_text() if log.exists() else done.stderr}"
            assert done.stdout == "" and log.exists()  # output went to the log in the state dir
        assert "healthy" in (vsn.state_dir / "cron-health.log").read_text()
        assert sink.messages == []  # all good: nothing mailed

    verbs = [e["verb"] for e in history(vsn)]
    assert verbs[:6] == ["prune", "drill", "health", "backup", "cron install", "cron install"]
    assert "deploy" in verbs
    m = metrics(vsn.state_dir / "metrics" / "migrator.prom")
    for verb in ("backup", "drill", "prune", "deploy"):
        assert m[("migrator_last_run_success", (("verb", verb),))] == 1
        assert m[("migrator_last_success_timestamp_seconds", (("verb", verb),))] > 0
    assert m[("migrator_last_run_bytes", (("verb", "backup"),))] > 0
    assert ("migrator_backup_downtime_seconds", (("service", "db"),)) in m
    assert m[("migrator_snapshots", (("store", f"file://{tmp_path}/store"),))] == 1
    assert m[("migrator_health_ok", ())] == 1
    assert m[("migrator_stack_state", (("state", "Running"),))] == 1

    # The @reboot line, as cron runs it at boot: serve answers on its port, its output goes to the log.
    assert [user for _, user, _ in reboot] == ["root"]
    server = subprocess.Popen(["/bin/sh", "-c", reboot[0][2]], env=_cron_env(env_lines), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _get(f"http://127.0.0.1:{port}/api/v1") == 200
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    (vsn.state_dir / "cron-serve.log").read_text())
                time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert server.stdout.read() == b"" and (vsn.state_dir / "cron-serve.log").exists()

    removed = json.loads(vsn.migrator("cron", "remove", "--json", env=env).stdout)
    assert removed["removed"] and not cron_file.exists()


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status


def stack_state(vsn, plan: Path | None = None, secrets: Path | None = None) -> str | None:
    args = [str(plan), "--secrets", str(secrets)] if plan else []
    return run_json(vsn, "status", *args)["stack_state"]


def test_stack_states_archive_unarchive_cleanup_round_trip(vsn, secrets, tmp_path):
    raw = ops_plan(vsn, tmp_path, backup=True)
    plan = write_json(tmp_path / "plan.json", raw)
    assert stack_state(vsn, plan, secrets) is None

    # A failed deploy: Failure, with the cause; health says so too.
    broken = json.loads(json.dumps(raw))
    broken["services"][1]["image"] = "localhost/no-such-image:1"
    bad_plan = write_json(tmp_path / "broken.json", broken)
    assert vsn.migrator("deploy", str(bad_plan), "--secrets", str(secrets)).returncode == 7
    st = run_json(vsn, "status", str(plan), "--secrets", str(secrets))
    assert st["stack_state"] == "Failure" and "no-such-image" in st["stack_state_error"]
    h = health(vsn, str(plan), "--secrets", str(secrets))
    assert h["stack_state"] == "Failure" and "no-such-image" in h["stack_state_error"]
    assert "container:web: service web is missing (expected running)" in h["failures"]

    deploy(vsn, tmp_path, raw, secrets)
    assert stack_state(vsn) == "Running"
    vsn.podman("tag", "localhost/migrator-httpd:latest", "localhost/migrator-httpd:v2")
    run_json(vsn, "upgrade", "web", "--image", "localhost/migrator-httpd:v2")
    state_rec = json.loads((vsn.state_dir / "stack_state.json").read_text())
    assert state_rec["state"] == "Running" and state_rec["previous"] == "UpdatePending" and state_rec["verb"] == "upgrade"

    # Not Archived: unarchive is not a valid transition (exit 1, nothing done).
    refused = vsn.migrator("unarchive", "--json")
    assert refused.returncode == 1 and "only an Archived stack" in json.loads(refused.stdout)["message"]

    (vsn.data_root / "webdata" / "www" / "keep.txt").write_text("survives archive")
    archived = run_json(vsn, "archive")
    assert archived["stack_state"] == "Archived" and vsn.containers() == {}
    assert (vsn.data_root / "webdata" / "www" / "keep.txt").read_text() == "survives archive"
    st = run_json(vsn, "status")
    assert st["stack_state"] == "Archived" and st["state"] == "containerless"
    # Containerless on purpose: nothing "unknown (expected running)"; a reader that stops early is fine.
    assert {(c["state"], c["expected"]) for c in st["containers"]} <= {("missing", "not running"), ("missing", "absent")}
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {shlex.join(vsn.migrator_argv())} status | head -1"],
                           env=vsn.env(), capture_output=True, text=True)
    assert (piped.returncode, piped.stderr) == (0, "") and piped.stdout.startswith("stack ")
    h = health(vsn)  # containerless on purpose: container checks skipped, not failed
    assert {c["name"]: c["ok"] for c in h["checks"]}["containers"] is None
    assert not any(f.startswith("container:") for f in h["failures"])

    back = run_json(vsn, "unarchive")
    assert back["stack_state"] == "Running" and back["plan"] == str(vsn.state_dir / "plan.json")
    assert _get(f"http://127.0.0.1:{web_port(raw)}/keep.txt") == 200
    assert vsn.containers()["web"] == "running"

    # cleanup: refused without --yes or the typed name (exit 2), nothing touched.
    cron_file = tmp_path / "cron"
    assert vsn.migrator("cron", "install", "--file", str(cron_file)).returncode == 0
    assert run_json(vsn, "cron", "show")["file"] == str(cron_file)  # the file install wrote, not the default
    no = vsn.migrator("cleanup", "--json")
    assert no.returncode == 2 and "not confirmed" in json.loads(no.stdout)["message"]
    assert vsn.containers()["web"] == "running" and (vsn.data_root / "webdata").is_dir()

    # Typed confirmation: final snapshot, then containers, data dirs, deployment and schedules go.
    done = migrator_with_stdin(vsn, ["cleanup", "--json"], stdin="t\n")
    assert done.returncode == 0, done.stderr + done.stdout
    out = json.loads(done.stdout)
    assert out["snapshot_id"] and out["stack_state"] is None and str(cron_file) in out["removed_schedules"]
    assert vsn.containers() == {}
    assert not (vsn.data_root / "webdata").exists() and not (vsn.data_root / "dbdata").exists()
    assert not cron_file.exists() and not (vsn.state_dir / "deployment.json").exists()
    assert not (vsn.state_dir / "stack_state.json").exists()
    snaps = run_json(vsn, "snapshots", "--from", f"file://{tmp_path}/store", "--vsn", "t")["snapshots"]
    final = next(s for s in snaps if s["id"] == out["snapshot_id"])
    assert "final" in final["tags"]

    # The final snapshot holds the data: restore it somewhere else.
    into = tmp_path / "restored"
    run_json(vsn, "restore", out["snapshot_id"], "--from", f"file://{tmp_path}/store", "--vsn", "t",
             "--into", str(into))
    assert (into / "webdata" / "www" / "keep.txt").read_text() == "survives archive"

    log = history(vsn)
    verbs = [e["verb"] for e in log]
    for verb in ("deploy", "upgrade", "archive", "unarchive", "cleanup", "cron install", "restore"):
        assert verb in verbs, verbs
    cleanups = [e for e in log if e["verb"] == "cleanup"]
    assert [e["exit_code"] for e in cleanups] == [0, 2]
    assert cleanups[0]["snapshot_id"] == out["snapshot_id"]
    assert all("pa55-w0rd" not in json.dumps(e) for e in log)
    m = metrics(vsn.state_dir / "metrics" / "migrator.prom")
    assert all(m[("migrator_stack_state", (("state", s),))] == 0 for s in ("Running", "Archived", "Failure"))


def migrator_with_stdin(vsn, args: list[str], stdin: str) -> subprocess.CompletedProcess:
    """The CLI with something typed on stdin (the migrator() helper gives no stdin)."""
    return subprocess.run([sys.executable, "-m", "migrator", *args], env=vsn.env(), input=stdin,
                          capture_output=True, text=True, timeout=600)


def test_killed_deploy_is_settled_to_failure_by_recover(vsn, secrets, tmp_path):
    plan = write_json(tmp_path / "plan.json", demo_plan(vsn, host=True))
    killed = vsn.migrator("deploy", str(plan), "--secrets", str(secrets),
                          env={**vsn.env(), "MIGRATOR_KILL_AT": "deploy.host-started"})
    assert killed.returncode == -9
    assert json.loads((vsn.state_dir / "stack_state.json").read_text())["state"] == "CreatePending"
    assert vsn.migrator("recover").returncode == 0
    rec = json.loads((vsn.state_dir / "stack_state.json").read_text())
    assert rec["state"] == "Failure" and "interrupted" in rec["error"]
    assert vsn.containers() == {}
    assert [e["verb"] for e in history(vsn)] == ["recover"]  # a SIGKILLed run leaves no row; recover does
