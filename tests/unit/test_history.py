"""Operation history: argument redaction, SQLite round trip, the row cap."""

from __future__ import annotations

import sqlite3

import pytest

from migrator.state import history
from migrator.state.history import REDACTED, redact_args


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.mark.parametrize("args,expected", [
    (["backup", "--to", "s3://bucket/p", "--tag", "nightly"], ["backup", "--to", "s3://bucket/p", "--tag", "nightly"]),
    (["deploy", "plan.json", "--secrets", "/etc/m/secrets.json"], ["deploy", "plan.json", "--secrets", "/etc/m/secrets.json"]),
    (["x", "--password", "hunter22"], ["x", "--password", REDACTED]),
    (["x", "--api-key=abcdef"], ["x", f"--api-key={REDACTED}"]),
    (["x", "--token", "t0k3n", "--keep-last", "3"], ["x", "--token", REDACTED, "--keep-last", "3"]),
    (["x", "AWS_SECRET_ACCESS_KEY=abc/def"], ["x", f"AWS_SECRET_ACCESS_KEY={REDACTED}"]),
    (["x", "DB_PASSWORD=pw"], ["x", f"DB_PASSWORD={REDACTED}"]),
    (["move", "--to", "ssh://admin:pa55@host/x"], ["move", "--to", f"ssh://admin:{REDACTED}@host/x"]),
    (["x", "AKIAIOSFODNN7EXAMPLE"], ["x", REDACTED]),
    (["x", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"], ["x", REDACTED]),
    (["restore", "20240101T050400Z-a1b2c3", "--volume", "dbdata"], ["restore", "20240101T050400Z-a1b2c3", "--volume", "dbdata"]),
    (["os-update", "run", "--command", "echo pa55-w0rd-never-logged"], ["os-update", "run", "--command", f"echo {REDACTED}"]),
])
def test_redaction(args, expected):
    assert redact_args(args, secret_values=["pa55-w0rd-never-logged", "no"]) == expected


def test_round_trip_newest_first_and_filter(state):
    for i, verb in enumerate(["deploy", "backup", "backup", "teardown"]):
        history.record(history.Entry(verb=verb, started=100.0 + i, ended=101.5 + i, result="ok", exit_code=0,
                                     args=[verb], snapshot_id="s1" if verb == "backup" else None,
                                     downtime={"db": 0.4} if verb == "backup" else None, bytes=10))
    rows = history.entries(10)
    assert [r.verb for r in rows] == ["teardown", "backup", "backup", "deploy"]
    assert rows[1].to_json()["duration"] == 1.5 and rows[1].downtime == {"db": 0.4}
    assert [r.verb for r in history.entries(10, "backup")] == ["backup", "backup"]
    assert history.last("deploy").args == ["deploy"]
    assert history.entries(2)[0].user  # someone ran it
    assert (state / "history.sqlite").stat().st_mode & 0o777 == 0o600


def test_row_cap(state, monkeypatch):
    monkeypatch.setattr(history, "MAX_ROWS", 5)
    for i in range(12):
        history.record(history.Entry(verb="health", started=i, ended=i, result="ok", exit_code=0, args=[]))
    with sqlite3.connect(state / "history.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*), MIN(started) FROM operations").fetchone() == (5, 7.0)


def test_no_history_file_means_no_entries(state):
    assert history.entries() == [] and not (state / "history.sqlite").exists()


def test_sudo_user_is_named(monkeypatch):
    monkeypatch.setenv("SUDO_USER", "alice")
    assert history.current_user().startswith("alice (as ")
