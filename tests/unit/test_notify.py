"""Mail de-duplication (fake clock), mail composition, SMTP delivery to a real loopback sink, and the
metrics textfile parsed by prometheus_client's own parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from migrator.notify import alerts, mail, metrics
from migrator.notify.alerts import FAILING, RECOVERED, REMINDER, decide
from migrator.plan.model import Secrets
from tests.lab.smtpsink import SINK_WARNING, SMTPSink

H = 3600.0
pytestmark = pytest.mark.filterwarnings(SINK_WARNING)


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MIGRATOR_METRICS_FILE", raising=False)
    monkeypatch.setenv("MIGRATOR_MAILER", "smtp")
    return tmp_path / "state"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def run(self, source: dict, failures: dict, reminder_h: float = 24.0):
        decision, after = decide(source, failures, self.now, reminder_h)
        return decision.kind, after, decision


def test_one_mail_per_start_reminders_then_one_recovery():
    clock, src = Clock(), alerts.empty_source()
    kind, src, d = clock.run(src, {"probe:web": "answered 500"})
    assert kind == FAILING and d.failing["probe:web"]["new"]
    started = src["failing"]["probe:web"]["since"]
    for _ in range(10):  # every 5 minutes for almost an hour: silence
        clock.now += 300
        kind, src, _ = clock.run(src, {"probe:web": "answered 502"})
        assert kind is None
    assert src["failing"]["probe:web"] == {"since": started, "detail": "answered 502", "last_mailed": started}
    clock.now = started + 24 * H - 60  # within the 2% slack of a daily reminder: due
    kind, src, d = clock.run(src, {"probe:web": "answered 502"})
    assert kind == REMINDER and not d.failing["probe:web"]["new"]
    clock.now += 300
    assert clock.run(src, {"probe:web": "x"})[0] is None
    clock.now += 300
    kind, src, _ = clock.run(src, {})
    assert kind == RECOVERED and src == alerts.empty_source()
    clock.now += 300
    assert clock.run(src, {})[0] is None  # recovered once, then quiet


def test_a_new_failing_check_mails_at_once_and_partial_recovery_does_not():
    clock, src = Clock(), alerts.empty_source()
    _, src, _ = clock.run(src, {"disk": "1G free"})
    clock.now += 300
    kind, src, d = clock.run(src, {"disk": "1G free", "container:web": "exited"})
    assert kind == FAILING and d.failing["container:web"]["new"] and not d.failing["disk"]["new"]
    clock.now += 300
    kind, src, d = clock.run(src, {"container:web": "exited"})
    assert kind is None and d.recovered == ["disk"]
    clock.now += 300
    assert clock.run(src, {})[0] == RECOVERED


def test_reminder_interval_comes_from_the_plan():
    clock, src = Clock(), alerts.empty_source()
    _, src, _ = clock.run(src, {"a": "x"}, reminder_h=0.5)
    clock.now += 0.4 * H
    assert clock.run(src, {"a": "x"}, reminder_h=0.5)[0] is None
    clock.now += 0.1 * H
    assert clock.run(src, {"a": "x"}, reminder_h=0.5)[0] == REMINDER


def test_failed_send_is_retried_next_run():
    clock, before = Clock(), alerts.empty_source()
    kind, after, d = clock.run(before, {"a": "x"})
    kept = alerts.unsent(before, after, d)
    assert kind == FAILING and kept["mailed"] is False and kept["failing"]["a"]["last_mailed"] is None
    clock.now += 300
    kind, after, d = clock.run(kept, {"a": "x"})
    assert kind == FAILING  # tried again, since nothing was mailed yet
    assert after["failing"]["a"]["since"] == clock.now - 300  # failing-since kept across the failed send


def test_compose_names_vsn_checks_and_since():
    clock = Clock()
    d, _ = decide(alerts.empty_source(), {"probe:web": "http answered 500 (expected 200)"}, clock.now, 24)
    m = alerts.compose("demo", "health check", d, 24, "ops@example.org", "vsn@example.org")
    assert m.to == "ops@example.org" and m.sender == "vsn@example.org"
    assert m.subject.startswith("[migrator] demo: health check FAILING (1): probe:web: http answered 500")
    assert "NEW probe:web: http answered 500 (expected 200) (failing since" in m.body
    assert "every 24h" in m.body


def test_notify_sends_over_smtp_with_password_from_secrets(state):
    with SMTPSink(user="mailer", password="s3cr3t-smtp-pw") as sink:
        cfg = {"email": "ops@example.org", "from": "vsn1@example.org", "reminder_hours": 24,
               "smtp": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "user": "mailer",
                        "password_secret": "smtp_pw"}}
        secrets = Secrets(values={"smtp_pw": "s3cr3t-smtp-pw"})
        out = alerts.notify("health", {"disk": "100M free"}, cfg, "vsn1", secrets, now=1000.0)
        assert out["sent"] == FAILING and out["transport"] == "smtp" and out["error"] is None
        again = alerts.notify("health", {"disk": "100M free"}, cfg, "vsn1", secrets, now=1300.0)
        assert again["sent"] is None
        (msg,) = sink.wait_for(1)
        assert sink.logins == ["mailer"] and len(sink.messages) == 1
        assert msg.recipients == ["ops@example.org"] and msg.sender == "vsn1@example.org"
        assert "vsn1: health FAILING" in msg.subject and "disk: 100M free" in msg.body
        saved = json.loads((state / "notify_state.json").read_text())
        assert saved["sources"]["health"]["failing"]["disk"]["last_mailed"] == 1000.0


def test_smtp_failure_is_reported_and_retried(state):
    cfg = {"email": "ops@example.org", "smtp": {"host": "127.0.0.1", "port": 9, "tls": "none"}}
    out = alerts.notify("backup", {"backup": "exit 8"}, cfg, "v", None, now=1.0)
    assert out["sent"] is None and "refused the mail" in out["error"]
    with SMTPSink() as sink:
        cfg["smtp"]["port"] = sink.port
        out = alerts.notify("backup", {"backup": "exit 8"}, cfg, "v", None, now=2.0)
        assert out["sent"] == FAILING and len(sink.wait_for(1)) == 1


def test_wrong_smtp_password_is_a_mail_failure_without_the_password():
    with SMTPSink(user="u", password="right") as sink:
        with pytest.raises(mail.MailFailed) as exc:
            mail.send_smtp(mail.Mail("a@b.c", "s", "b"), {"host": "127.0.0.1", "port": sink.port, "tls": "none",
                                                          "user": "u", "password_secret": "k"},
                           Secrets(values={"k": "wrong-pass-value"}))
        assert exc.value.exit_code == 8 and "wrong-pass-value" not in exc.value.message
        assert sink.messages == []


@pytest.fixture
def real_mutt(tmp_path, monkeypatch):
    """The installed mutt with an empty HOME: no ~/.muttrc, so it hands mail to a sendmail this VSN lacks."""
    import shutil

    if shutil.which("mutt") is None:
        pytest.skip("mutt is not installed (make deps installs it)")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MIGRATOR_MAILER")


def test_the_plans_smtp_wins_over_an_installed_mutt(state, real_mutt):
    """Issue 22, item 4: what the plan configures explicitly decides the transport."""
    with SMTPSink() as sink:
        cfg = {"email": "ops@example.org", "smtp": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}}
        out = alerts.notify("backup", {"backup": "exit 8"}, cfg, "v", None, now=1.0)
        assert out["error"] is None and out["transport"] == "smtp" and len(sink.wait_for(1)) == 1
    assert mail.transport({})[0] == "mutt"  # no smtp section: mutt, as before


def test_an_unsent_mail_names_the_mailer_override_and_surfaces_in_health(state, real_mutt, monkeypatch):
    from migrator.ops import health

    monkeypatch.setenv("MIGRATOR_MAILER", "mutt")
    with SMTPSink() as sink:
        cfg = {"email": "ops@example.org", "smtp": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}}
        out = alerts.notify("backup", {"backup": "exit 8"}, cfg, "v", None, now=1.0)
        assert sink.messages == []
    assert "mutt exited" in out["error"] and "MIGRATOR_MAILER=mutt" in out["error"]
    check = health.mail_check()
    assert check.ok is False and check.name == "mail" and "backup: mutt exited" in check.detail
    monkeypatch.delenv("MIGRATOR_MAILER")
    with SMTPSink() as sink:
        cfg["smtp"]["port"] = sink.port
        assert alerts.notify("backup", {"backup": "exit 8"}, cfg, "v", None, now=2.0)["sent"] == FAILING
    assert health.mail_check() is None  # it went out: nothing left unsent


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_render_parses_as_prometheus_text():
    values = {}
    metrics.apply(values, "backup", 1000.0, 12.5, 0,
                  {"size": 4096, "downtime": {"db": 0.8, "web": 0.0}, "targets": ["file:///b"]}, "Running")
    metrics.apply(values, "snapshots", 1001.0, 0.1, 0, {"store": "file:///b", "snapshots": [{}, {}, {}]}, "Running")
    metrics.apply(values, "backup", 2000.0, 3.0, 0, {"size": 10, "downtime": {"db": 0.5}, "targets": ["file:///b"]},
                  "Running")
    metrics.apply(values, "drill", 2100.0, 30.0, 1, {}, "Running")
    metrics.apply(values, "health", 2200.0, 0.3, 1,
                  {"healthy": False, "checks": [{"name": 'container:we"b', "ok": False},
                                                {"name": "disk", "ok": True}, {"name": "x", "ok": None}]},
                  "Running")
    fams = _families(metrics.render(values))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("migrator_last_success_timestamp_seconds", (("verb", "backup"),))] == 2000.0
    assert samples[("migrator_last_run_duration_seconds", (("verb", "backup"),))] == 3.0
    assert samples[("migrator_last_run_bytes", (("verb", "backup"),))] == 10
    assert samples[("migrator_backup_downtime_seconds", (("service", "db"),))] == 0.5
    assert ("migrator_backup_downtime_seconds", (("service", "web"),)) not in samples  # last backup's only
    assert samples[("migrator_snapshots", (("store", "file:///b"),))] == 4  # listed 3, then one more backup
    assert samples[("migrator_last_run_success", (("verb", "drill"),))] == 0
    assert samples[("migrator_last_run_exit_code", (("verb", "drill"),))] == 1
    assert ("migrator_last_success_timestamp_seconds", (("verb", "drill"),)) not in samples
    assert samples[("migrator_health_ok", ())] == 0
    assert samples[("migrator_health_check_ok", (("check", 'container:we"b'),))] == 0  # escaping survives
    assert samples[("migrator_health_check_ok", (("check", "disk"),))] == 1
    assert samples[("migrator_stack_state", (("state", "Running"),))] == 1
    assert samples[("migrator_stack_state", (("state", "Archived"),))] == 0
    assert all(f.type == "gauge" for f in fams.values())


def test_metrics_update_writes_atomically_where_configured(state, tmp_path, monkeypatch):
    path = metrics.update("backup", 5.0, 1.0, 0, {"size": 1}, "Running")
    assert path == state / "metrics" / "migrator.prom" and (path.stat().st_mode & 0o777) == 0o644
    configured = metrics.update("backup", 6.0, 1.0, 0, {"size": 1}, "Running",
                                plan_raw={"metrics": {"textfile": str(tmp_path / "textfile" / "m.prom")}})
    assert configured == tmp_path / "textfile" / "m.prom"
    monkeypatch.setenv("MIGRATOR_METRICS_FILE", str(tmp_path / "env.prom"))
    assert metrics.update("prune", 7.0, 1.0, 0, {}, None) == tmp_path / "env.prom"
    fams = _families((tmp_path / "env.prom").read_text())
    assert {s.labels["verb"] for s in fams["migrator_last_run_timestamp_seconds"].samples} == {"backup", "prune"}
    assert [p.name for p in (tmp_path / "textfile").iterdir()] == ["m.prom"]  # no temp file left behind
