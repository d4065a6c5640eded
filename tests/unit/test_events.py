"""The event model and events out: the event log (append, rotation, follow, scrubbing), the requests
the plan's `events` section asks for, and real `migrator` runs pinging and posting to a real HTTP sink on
loopback (start, success, fail in order; a sink that is down or hangs changes nothing; no secret in any
body)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from migrator.notify import events, outbound
from migrator.state import deployed
from tests.lab.httpsink import HTTPSink
from tests.lab.vsn import free_port

SECRET = "s3cr3t-value"
HOOK_TOKEN = "T0KEN-in-the-url-123"


@pytest.fixture()
def state(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MIGRATOR_METRICS_FILE", str(tmp_path / "migrator.prom"))
    return tmp_path / "state"


def test_log_appends_rotates_and_reads_back(state, monkeypatch):
    monkeypatch.setattr(events, "MAX_BYTES", 2000)
    for i in range(40):
        events.append(events.make("step", "op1", "backup", message=f"step {i}"))
    assert (state / "events.jsonl.1").exists() and (state / "events.jsonl").stat().st_size < 2000 + 200
    recent = events.read_recent(5)
    assert [e["message"] for e in recent] == [f"step {i}" for i in range(35, 40)]
    with open(state / "events.jsonl", "ab") as fh:  # a torn or hostile line is skipped, not fatal
        fh.write(b'{"kind": "nope"}\nnot json\n')
    assert events.read_recent(1)[0]["message"] == "step 39"


def test_follow_sees_new_events_across_rotation(state, monkeypatch):
    monkeypatch.setattr(events, "MAX_BYTES", 600)
    events.append(events.make("step", "old", "backup", message="before the follower"))
    seen: list[dict] = []
    done = threading.Event()

    def reader():
        for event in events.follow(poll=0.02, stop=done.is_set):
            if event is not None:
                seen.append(event)

    t = threading.Thread(target=reader)
    t.start()
    try:
        # the follower starts at the end: wait until it has opened the file before writing
        for i in range(30):
            events.append(events.make("step", "new", "backup", message=f"m{i}"))
            deadline = threading.Event()
            deadline.wait(0.01)
        for _ in range(500):
            if any(e["message"] == "m29" for e in seen):
                break
            threading.Event().wait(0.02)
    finally:
        done.set()
        t.join()
    messages = [e["message"] for e in seen]
    assert "before the follower" not in messages
    assert "m29" in messages and messages == sorted(messages, key=lambda m: int(m[1:]))


def test_scrub_removes_secret_values_and_credentials():
    text = events.scrub(f"connect s3://AKIAABCDEFGHIJKLMNOP via https://u:pw123@h/x failed: {SECRET}", [SECRET])
    assert SECRET not in text and "pw123" not in text and "AKIAABCDEFGHIJKLMNOP" not in text
    assert events.scrub_all({"a": [f"x {SECRET}"]}, [SECRET]) == {"a": ["x ***"]}


def _event(kind: str, verb: str = "backup", **kw) -> dict:
    return events.make(kind, "op", verb, vsn="v1", **kw)


def test_requests_for_pings_and_webhook_formats():
    config = {"pings": [{"url": "http://h/ping/abc"}, {"url": "http://k/api/push/X?a=1", "kind": "uptime-kuma",
                                                          "verbs": ["backup", "drill"]}],
              "webhooks": [{"url_secret": "hook", "format": "slack", "verbs": ["move"]},
                           {"url": "http://j/hook", "on": ["started", "failed"]},
                           {"url": "http://n/topic", "format": "ntfy"}]}
    secrets = {"hook": f"https://hooks.example/{HOOK_TOKEN}"}
    start = outbound.requests_for(_event("started"), config, secrets)
    assert [(r["method"], r["url"]) for r in start] == [("POST", "http://h/ping/abc/start"), ("POST", "http://j/hook")]
    ok = outbound.requests_for(_event("finished", outcome="ok", duration=2.5, snapshot_id="S1"), config, secrets)
    assert [r["url"].split("?")[0] for r in ok] == ["http://h/ping/abc", "http://k/api/push/X", "http://n/topic"]
    assert "status=up" in ok[1]["url"] and "a=1&" in ok[1]["url"] and "ping=2500" in ok[1]["url"]
    assert ok[2]["headers"]["Title"] == "migrator backup ok" and "snapshot S1" in ok[2]["body"]
    failed = outbound.requests_for(_event("finished", outcome="failed", message="boom"), config, secrets)
    assert failed[0]["url"] == "http://h/ping/abc/fail" and "status=down" in failed[1]["url"]
    assert json.loads(failed[2]["body"])["outcome"] == "failed"
    moved = outbound.requests_for(_event("finished", "move", outcome="ok", now_runs_on="ssh://b"), config, secrets)
    slack = [r for r in moved if r["url"].startswith("https://hooks.example/")]
    assert json.loads(slack[0]["body"]) == {"text": "migrator move on v1: ok; the stack now runs on ssh://b"}
    assert outbound.requests_for(_event("step", message="x"), config, secrets) == []
    assert outbound.requests_for(_event("finished", "health", outcome="ok"), {"pings": config["pings"]}) == []


# --- real runs of the migrator command against a real HTTP sink ---------------------------------------

def _deploy_record(tmp_path: Path, good: dict, config: dict) -> Path:
    """This VSN remembers a deployment of `good` (the engine socket points nowhere: a backup fails)."""
    good["vsn"]["socket"] = f"unix://{tmp_path}/no-engine.sock"
    good["events"] = config
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(good))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"db_password": SECRET, "smtp_pw": "x", "hook": f"{config['_hook']}/{HOOK_TOKEN}"}))
    secrets.chmod(0o600)
    del good["events"]["_hook"]
    plan.write_text(json.dumps(good))
    deployed.record(good, str(secrets))
    return plan


def _migrator(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIGRATOR_STATE_DIR": str(tmp_path / "state"),
           "MIGRATOR_METRICS_FILE": str(tmp_path / "migrator.prom")}
    env.pop("MIGRATOR_MAILER", None)
    return subprocess.run([sys.executable, "-m", "migrator", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_pings_and_webhooks_in_order_without_secrets(tmp_path, state, good):
    with HTTPSink() as sink:
        _deploy_record(tmp_path, good, {
            "_hook": f"{sink.url}/hook",
            "pings": [{"url": f"{sink.url}/ping/uuid", "verbs": ["backup", "cron install"]}],
            "webhooks": [{"url_secret": "hook", "on": ["started", "ok", "failed"]}]})
        ok = _migrator(tmp_path, "cron", "install", "--file", str(tmp_path / "cron"))
        assert ok.returncode == 0, ok.stderr
        sink.wait_for(lambda rs: sum(r.path.startswith("/hook") for r in rs) >= 2)
        failed = _migrator(tmp_path, "backup", "--json")
        assert failed.returncode not in (0, 2), failed.stderr
        got = sink.wait_for(lambda rs: len(rs) >= 8)
    pings = [r.path for r in got if r.path.startswith("/ping")]
    assert pings == ["/ping/uuid/start", "/ping/uuid", "/ping/uuid/start", "/ping/uuid/fail"]
    hooks = [json.loads(r.body) for r in got if r.path.startswith("/hook")]
    assert [(h["verb"], h["outcome"]) for h in hooks] == [
        ("cron install", "started"), ("cron install", "ok"), ("backup", "started"), ("backup", "failed")]
    assert hooks[3]["exit_code"] == failed.returncode and hooks[3]["vsn"] == "demo" and hooks[3]["message"]
    assert hooks[0]["op"] == hooks[1]["op"] != hooks[2]["op"]
    for r in got:
        assert SECRET not in r.body and HOOK_TOKEN not in r.body and HOOK_TOKEN not in json.dumps(r.headers)
    # the same operations are in the event log, which serve and watch follow
    logged = [(e["verb"], e["kind"]) for e in events.read_recent(100) if e["kind"] in ("started", "finished")]
    assert logged == [("cron install", "started"), ("cron install", "finished"), ("backup", "started"),
                      ("backup", "finished")]
    assert SECRET not in (state / "events.jsonl").read_text()


def test_a_sink_that_is_down_or_hangs_changes_nothing(tmp_path, state, good):
    """Down: nothing listens on the port. Hanging: a socket that accepts and never answers. The command
    still exits 0 with no warning, and it has exited while the detached sender is still waiting on the
    hanging sink (so the operation did not wait for it)."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    hang_url = f"http://127.0.0.1:{hang.getsockname()[1]}"
    _deploy_record(tmp_path, good, {"_hook": hang_url,
                                    "pings": [{"url": f"http://127.0.0.1:{free_port()}/down",
                                               "verbs": ["cron install"]}],
                                    "webhooks": [{"url": f"{hang_url}/hook", "on": ["started", "ok"]}]})
    try:
        run = _migrator(tmp_path, "cron", "install", "--file", str(tmp_path / "cron"), "--json")
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        assert out["ok"] and "warnings" not in out and "warning" not in run.stderr
        hang.settimeout(30)
        conn, _ = hang.accept()  # the sender connected (and is still waiting for an answer)...
        try:
            conn.settimeout(30)
            assert b"POST /hook" in conn.recv(65536)
        finally:
            conn.close()
    finally:
        hang.close()
    assert (tmp_path / "cron").exists()
