"""Dependents follow, on a real lab VSN under `migrator serve --follow-dependents`, woken by podman's
event stream: the database restarted in place by hand has the web service that depends on it restarted
after it; the database killed by hand is started again and web restarted after it, both healthy, recorded
in the history; a service that exits at once is given up on after the bounded tries, recorded and sent to
a webhook, and left down."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from migrator.serve.follow import ACTOR, MAX_TRIES
from tests.lab.httpsink import HTTPSink
from tests.lab.plans import IMAGES, demo_plan, secrets_file, web_port
from tests.lab.serve import Served
from tests.lab.vsn import PodmanVSN, write_json

DEADLINE_S = 240


def _until(predicate, what: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def followed(lab_images, tmp_path):
    vsn = PodmanVSN().start()
    server = None
    with HTTPSink() as sink:
        try:
            raw = demo_plan(vsn, host=False, name="fol")
            # exits 2 s after every start: the follower must give up on it, not loop
            raw["services"].append({"name": "crasher", "image": IMAGES["busybox"],
                                    "command": ["sh", "-c", "sleep 2; exit 1"]})
            raw["events"] = {"webhooks": [{"url": f"{sink.url}/hook", "verbs": ["follow"]}]}
            plan = write_json(tmp_path / "plan.json", raw)
            secrets = secrets_file(tmp_path / "secrets.json")
            done = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
            assert done.returncode == 0, done.stderr + done.stdout
            server = Served(vsn, secrets, extra_args=["--follow-dependents"]).start()
            _until(lambda: server.get("/api/v1", token=server.viewer_token).body["follow"]["engine_events"] == "live",
                   "serve to subscribe to podman's events", 60)
            yield vsn, server, sink, raw
        finally:
            if server is not None:
                server.stop()
            vsn.stop()


def _started_at(vsn, name: str) -> str:
    return vsn.podman("inspect", "--format", "{{.State.StartedAt}}", name).stdout.strip()


def _history(server) -> list[dict]:
    return server.get("/api/v1/history?limit=200", token=server.viewer_token).body["entries"]


def _followed(server, *names: str):
    return next((e for e in _history(server) if e["verb"] == "restart" and e["user"].startswith(ACTOR)
                 and e["args"][1:1 + len(names)] == list(names)), None)


def test_dependents_follow_and_a_crashing_service_is_given_up(followed):
    vsn, server, sink, raw = followed
    # restarted in place (as by hand or by the engine): db runs again on its own, web must follow it
    web_before = _started_at(vsn, "web")
    vsn.podman("restart", "db")
    db_in_place = _started_at(vsn, "db")
    restart = _until(lambda: _followed(server, "web"), "the restart of web after db restarted in place")
    assert restart["result"] == "ok" and restart["args"][:2] == ["restart", "web"], restart
    assert "db" not in restart["args"]  # running already: not restarted a second time
    assert _started_at(vsn, "db") == db_in_place
    assert web_before < db_in_place < _started_at(vsn, "web")

    db_before, web_before = _started_at(vsn, "db"), _started_at(vsn, "web")
    vsn.podman("kill", "db")

    restart = _until(lambda: _followed(server, "db"), "the restart of db and web")
    assert restart["result"] == "ok", restart
    assert restart["args"][:3] == ["restart", "db", "web"]
    containers = vsn.containers()
    assert containers["db"] == "running" and containers["web"] == "running"
    db_after, web_after = _started_at(vsn, "db"), _started_at(vsn, "web")
    assert db_after != db_before and web_after != web_before
    assert db_after < web_after  # the dependent after what it depends on
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port(raw)}/", timeout=30) as resp:
        assert resp.status == 200

    gave_up = _until(lambda: next((e for e in _history(server) if e["verb"] == "follow"), None),
                     "the follower giving up on crasher")
    assert gave_up["result"] == "failed" and "crasher keeps dying" in gave_up["message"]
    tries = [e for e in _history(server) if e["verb"] == "restart" and "crasher" in e["args"]]
    assert len(tries) == MAX_TRIES
    hooks = [json.loads(r.body) for r in sink.wait_for(lambda rs: any(r.path == "/hook" for r in rs))
             if r.path == "/hook"]
    assert hooks and hooks[0]["verb"] == "follow" and hooks[0]["outcome"] == "failed"
    # left down, not tried again
    assert len([e for e in _history(server) if e["verb"] == "restart" and "crasher" in e["args"]]) == MAX_TRIES
    assert vsn.containers()["crasher"] != "running"
