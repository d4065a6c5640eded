"""`migrator serve`'s pieces that need no server: password hashes, API tokens, session cookies (expiry,
forgery), the login limiter, the action parameters that become a `migrator` argument vector, and which
services follow a dead one."""

from __future__ import annotations

import json

import pytest

from migrator.errors import UsageError
from migrator.serve import auth
from migrator.serve.actions import argv_for
from migrator.serve.dashboard import chart


def test_password_hash_round_trip_and_no_plain_text():
    stored = auth.hash_password("correct horse")
    assert "correct horse" not in stored and stored.startswith("scrypt$")
    assert auth.check_password("correct horse", stored)
    assert not auth.check_password("correct horsE", stored)
    assert not auth.check_password("x", "scrypt$1048577$8$1$AA==$AA==")  # absurd cost refused, not run
    assert not auth.check_password("x", "garbage")


def test_users_and_tokens_from_the_secrets_file(tmp_path):
    token, stored = auth.new_token()
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"serve.user.alice": "operator:" + auth.hash_password("pw-alice-123"),
                                "serve.user.eve": "root:" + auth.hash_password("pw-eve-12345"),
                                "serve.token.ci": "read-only:" + stored, "db_password": "x"}))
    users = auth.Users(str(path))
    assert users.login("alice", "pw-alice-123") == "operator"
    assert users.login("alice", "nope") is None and users.login("nobody", "pw-alice-123") is None
    assert users.login("eve", "pw-eve-12345") is None  # an unknown role is no role
    who = users.token(token)
    assert who == auth.Principal("ci", "read-only", "token") and not who.can_act
    assert users.token(token + "x") is None and users.token(stored) is None  # the stored hash is no token
    assert auth.Users(None).token(token) is None


def test_sessions_expire_and_cannot_be_forged(tmp_path):
    sessions = auth.Sessions(tmp_path / "serve")
    cookie, csrf = sessions.issue("alice", auth.OPERATOR, now=1000.0)
    who = sessions.check(cookie, now=1000.0 + auth.SESSION_SECONDS - 1)
    assert who.name == "alice" and who.csrf == csrf and who.via == "session"
    assert sessions.check(cookie, now=1000.0 + auth.SESSION_SECONDS + 1) is None
    body, _, sig = cookie.partition(".")
    import base64

    payload = json.loads(base64.urlsafe_b64decode(body))
    payload["r"] = auth.OPERATOR
    payload["u"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode() + "." + sig
    assert sessions.check(forged, now=1000.0) is None
    assert auth.Sessions(tmp_path / "other").check(cookie, now=1000.0) is None  # another key
    assert auth.Sessions(tmp_path / "serve").check(cookie, now=1000.0) is not None  # the key persists
    assert ((tmp_path / "serve" / "session.key").stat().st_mode & 0o777) == 0o600


def test_login_limiter_per_address_and_per_name():
    limiter = auth.LoginLimiter(failures=3, window=60)
    for _ in range(3):
        assert limiter.retry_after("addr:1", "user:bob") == 0
        limiter.failed("addr:1", "user:bob")
    assert limiter.retry_after("addr:1", "user:alice") > 0  # the address is blocked
    assert limiter.retry_after("addr:2", "user:bob") > 0  # so is the name, from anywhere
    assert limiter.retry_after("addr:2", "user:alice") == 0


def test_loopback_detection():
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1") and auth.is_loopback("127.8.0.1")
    assert not auth.is_loopback("10.0.0.1") and not auth.is_loopback(None) and not auth.is_loopback("testclient")


def test_action_parameters_become_a_safe_argument_vector():
    assert argv_for("backup", {"tags": ["nightly"], "full": True}, "v") == [
        "backup", "--tag", "nightly", "--full", "--json"]
    assert argv_for("verify", {"snapshot": "latest", "read_data": True}, "v") == [
        "verify", "latest", "--read-data", "--json"]
    assert argv_for("restore", {"snapshot": "20261207T100000Z-abc", "confirm": "v"}, "v") == [
        "restore", "20261207T100000Z-abc", "--json"]
    assert argv_for("cleanup", {"confirm": "v", "no_snapshot": True}, "v") == [
        "cleanup", "--yes", "--no-snapshot", "--json"]
    assert argv_for("upgrade", {"service": "web", "image": "localhost/web:2"}, "v") == [
        "upgrade", "web", "--image", "localhost/web:2", "--json"]
    for verb, params in [("restore", {}), ("restore", {"confirm": "w"}), ("cleanup", {"confirm": ""}),
                         ("backup", {"tags": ["--to=file:///tmp/x"]}), ("verify", {"snapshot": "--read-data"}),
                         ("drill", {"snapshot": "../x"}), ("upgrade", {"service": "web", "image": "-x"}),
                         ("upgrade", {"service": "web"}), ("deploy", {}), ("backup", {"tags": "x"}),
                         ("verify", {"snapshot": 3})]:
        with pytest.raises(UsageError):
            argv_for(verb, params, "v")
    with pytest.raises(UsageError):
        argv_for("restore", {"confirm": None}, None)  # no stack: nothing to confirm against


def test_chart_escapes_and_scales():
    svg = chart("<b>size</b>", [1.0, 4.0], "MiB")
    assert "<b>" not in svg and "&lt;b&gt;" in svg and 'height="58.0"' in svg
    assert "no data yet" in chart("x", [], "s")


def test_dependents_are_transitive_enabled_and_in_plan_order():
    from migrator.serve.follow import dependents

    plan = {"services": [{"name": "db"}, {"name": "cache", "depends_on": ["db"]},
                         {"name": "web", "depends_on": ["cache"]}, {"name": "off", "depends_on": ["db"], "enabled": False},
                         {"name": "other"}]}
    assert dependents(plan, "db") == ["cache", "web"]
    assert dependents(plan, "web") == [] and dependents(plan, "other") == []
