"""`migrator serve` against a real lab VSN: a deployed flat demo stack, the real server on loopback, real
HTTP. Auth (anonymous only from loopback and read-only, wrong token, read-only token, expired session,
CSRF, login rate limit), the lock (409 naming the holder), every action's effect on the stack and the
history (recorded with the user), live events over SSE and `migrator watch`, pings to a real HTTP sink.

The tests of this module share one deployment and one server and run in file order (backup before
restore, cleanup last)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.serve import auth
from tests.lab.httpsink import HTTPSink
from tests.lab.plans import demo_plan, secrets_file
from tests.lab.serve import OPERATOR_PASSWORD, VIEWER_PASSWORD, EventTap, Served
from tests.lab.vsn import PodmanVSN, write_json

VSN_NAME = "srv"


@pytest.fixture(scope="module")
def sink():
    with HTTPSink() as s:
        yield s


@pytest.fixture(scope="module")
def served(lab_images, tmp_path_factory, sink):
    tmp = tmp_path_factory.mktemp("serve")
    vsn = PodmanVSN().start()
    server = None
    try:
        raw = demo_plan(vsn, host=False, name=VSN_NAME)
        raw["backup"] = {"targets": [f"file://{tmp}/store"], "max_age_hours": 26}
        raw["events"] = {"pings": [{"url": f"{sink.url}/ping/srv", "verbs": ["backup"]}],
                         "webhooks": [{"url": f"{sink.url}/hook", "verbs": ["archive", "unarchive"]}]}
        plan = write_json(tmp / "plan.json", raw)
        secrets = secrets_file(tmp / "secrets.json")
        done = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        server = Served(vsn, secrets).start()
        yield server
    finally:
        if server is not None:
            server.stop()
        vsn.stop()


def _act(served: Served, verb: str, body: dict | None = None) -> dict:
    """Start an action: 202 while it runs on, 200 when it was done within the server's first wait."""
    reply = served.post(f"/api/v1/actions/{verb}", body, token=served.operator_token)
    assert reply.status in (200, 202), reply.body
    assert reply.body["running"] is (reply.status == 202)
    return reply.body


def _run(served: Served, verb: str, body: dict | None = None) -> dict:
    started = _act(served, verb, body)
    done = served.wait_operation(started["op"], served.operator_token)
    assert done["exit_code"] == 0, done
    return done


def test_auth_roles_sessions_csrf_and_login_limit(served):
    anon = served.get("/api/v1")
    assert anon.status == 200 and anon.body["role"] == "read-only" and anon.body["vsn"] == VSN_NAME
    assert served.post("/api/v1/actions/backup").status == 403  # anonymous loopback: read-only
    # the same anonymous request relayed by a proxy on this host for a remote client: refused
    proxied = served.get("/api/v1/stack", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status == 401
    assert served.get("/api/v1/stack", token="not-a-token").status == 401
    assert served.get("/api/v1/stack", token=served.viewer_token).status == 200
    ro = served.post("/api/v1/actions/backup", token=served.viewer_token)
    assert ro.status == 403 and "read-only" in ro.body["message"]
    history_before = served.get("/api/v1/history", token=served.viewer_token).body["entries"]
    assert not any(e["verb"] == "backup" for e in history_before)

    login = served.post("/api/v1/login", {"user": "alice", "password": OPERATOR_PASSWORD})
    assert login.status == 200 and login.body["role"] == "operator"
    cookie = login.headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=strict" in login.headers["set-cookie"]
    me = served.get("/api/v1", headers={"Cookie": cookie})
    assert me.body["user"] == "alice" and me.body["via"] == "session"
    no_csrf = served.post("/api/v1/actions/verify", headers={"Cookie": cookie})
    assert no_csrf.status == 403 and "CSRF" in no_csrf.body["message"]
    # an expired session (signed with the server's own key, its time up) is refused
    sessions = auth.Sessions(served.vsn.state_dir / "serve")
    old, _ = sessions.issue("alice", auth.OPERATOR, now=time.time() - auth.SESSION_SECONDS - 60)
    assert served.get("/api/v1", headers={"Cookie": f"migrator_session={old}"}).status == 401
    forged = cookie.replace(cookie[-6:], "AAAAA=")
    assert served.get("/api/v1", headers={"Cookie": forged}).status == 401

    # a password guesser, seen through a proxy on this host (its own address: loopback stays usable)
    guesser = {"X-Forwarded-For": "198.51.100.4"}
    for _ in range(auth.LOGIN_FAILURES):
        assert served.post("/api/v1/login", {"user": "bob", "password": "wrong-password"}, headers=guesser).status == 401
    limited = served.post("/api/v1/login", {"user": "bob", "password": VIEWER_PASSWORD}, headers=guesser)
    assert limited.status == 429 and int(limited.headers["retry-after"]) > 0
    other = served.post("/api/v1/login", {"user": "bob", "password": VIEWER_PASSWORD},
                        headers={"X-Forwarded-For": "198.51.100.5"})
    assert other.status == 429  # the name is locked too, from anywhere
    assert served.post("/api/v1/login", {"user": "alice", "password": OPERATOR_PASSWORD}).status == 200


def test_backup_streams_events_pings_and_records_the_user(served, sink):
    tap = EventTap(served, served.viewer_token)
    try:
        op = _act(served, "backup", {"tags": ["web"]})["op"]
        got = tap.wait_for(lambda es: any(e["op"] == op and e["kind"] == "finished" for e in es))
    finally:
        tap.close()
    mine = [e for e in got if e["op"] == op]
    kinds = [e["kind"] for e in mine]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "step" in kinds, kinds
    assert mine[0]["user"] == "ci via serve (as root)"
    assert mine[-1]["outcome"] == "ok" and mine[-1]["snapshot_id"]
    snap = mine[-1]["snapshot_id"]
    listed = served.get("/api/v1/snapshots", token=served.viewer_token).body
    assert [s["id"] for s in listed["snapshots"]] == [snap] and listed["snapshots"][0]["tags"] == ["web"]
    assert served.get(f"/api/v1/snapshots/{snap}", token=served.viewer_token).body["snapshot"]["id"] == snap
    entry = served.get("/api/v1/history?verb=backup", token=served.viewer_token).body["entries"][0]
    assert entry["user"] == "ci via serve (as root)" and entry["snapshot_id"] == snap and entry["result"] == "ok"
    pings = [r.path for r in sink.wait_for(lambda rs: sum(r.path.startswith("/ping") for r in rs) >= 2)
             if r.path.startswith("/ping")]
    assert pings == ["/ping/srv/start", "/ping/srv"]
    metrics = served.get("/api/v1/metrics", token=served.viewer_token).body["text"]
    assert 'migrator_last_success_timestamp_seconds{verb="backup"}' in metrics


def test_an_action_while_the_lock_is_held_answers_409_naming_the_holder(served):
    # flock's child (sleep) inherits the locked file: the whole group is stopped at the end
    holder = subprocess.Popen(["flock", str(served.vsn.state_dir / "lock"), "sleep", "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while served.get("/api/v1/stack").body.get("lock") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = served.post("/api/v1/actions/backup", token=served.operator_token)
        assert busy.status == 409 and f"pid {holder.pid}" in busy.body["holder"] and "flock" in busy.body["holder"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert served.get("/api/v1/history?verb=backup", token=served.viewer_token).body["entries"][0]["result"] == "ok"


def test_verify_drill_and_restore_with_its_typed_confirmation(served):
    env = served.vsn.env()
    watch = subprocess.Popen([sys.executable, "-m", "migrator", "watch", "--until-finished", "--json"], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        # watch follows from the end of the log: wait until its process has the file open
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _has_open(watch.pid, served.vsn.state_dir / "events.jsonl"):
            time.sleep(0.05)
        verified = _run(served, "verify", {"snapshot": "latest"})
        out, _ = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert verified["result"]["ok"] is True
    seen = [json.loads(line) for line in out.splitlines()]
    assert seen[-1]["kind"] == "finished" and seen[-1]["verb"] == "verify" and seen[-1]["op"] == verified["op"]
    assert watch.returncode == 0

    refused = served.post("/api/v1/actions/restore", {"snapshot": "latest"}, token=served.operator_token)
    assert refused.status == 400 and "confirmation" in refused.body["message"]
    wrong = served.post("/api/v1/actions/restore", {"confirm": "nope"}, token=served.operator_token)
    assert wrong.status == 400
    www = served.vsn.data_root / "webdata" / "www"
    index = www / "index.html"
    before = index.read_bytes()
    index.write_text("changed after the backup")
    restored = _run(served, "restore", {"snapshot": "latest", "confirm": VSN_NAME})
    assert index.read_bytes() == before and restored["result"]["ok"] is True
    drilled = _run(served, "drill")
    assert drilled["result"]["ok"] is True
    verbs = [(e["verb"], e["user"]) for e in served.get("/api/v1/history", token=served.viewer_token).body["entries"]]
    assert ("drill", "ci via serve (as root)") in verbs and ("restore", "ci via serve (as root)") in verbs
    assert served.get("/api/v1/stack").body["state"] == "Running"


def _has_open(pid: int, path) -> bool:
    try:
        return any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


class _Wait:
    """WebDriverWait whose timeout names what the page showed (the stack, operations, message)."""

    def __init__(self, browser, timeout: float = 120) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser, self.inner = browser, WebDriverWait(browser, timeout, poll_frequency=0.1)

    def until(self, condition):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By

        try:
            return self.inner.until(condition)
        except TimeoutException:
            shown = {i: [e.text for e in self.browser.find_elements(By.ID, i)]
                     for i in ("stack", "ops", "snapshots", "action-message", "login-error")}
            raise AssertionError(f"the page did not get there: {shown}") from None


def test_dashboard_in_a_real_browser(served, tmp_path):
    """Headless chromium at phone size: log in, start a backup and see its progress and the new snapshot
    arrive, run a drill, have a restore refused without the typed confirmation. Screenshots go to
    tmp_path (and to $MIGRATOR_SCREENSHOTS when set, which is how docs/serve-dashboard.png was made)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from tests.lab.browser import chromium

    shots = [tmp_path] + ([Path(os.environ["MIGRATOR_SCREENSHOTS"])] if os.environ.get("MIGRATOR_SCREENSHOTS") else [])
    snapshots_before = len(served.get("/api/v1/snapshots").body["snapshots"])
    with chromium() as browser:
        wait = _Wait(browser)
        browser.get(served.url + "/")
        assert browser.find_element(By.ID, "action-backup").get_attribute("disabled")  # anonymous: read-only
        browser.find_element(By.ID, "login-link").click()
        wait.until(ec.presence_of_element_located((By.ID, "login-user"))).send_keys("alice")
        browser.find_element(By.ID, "login-password").send_keys("wrong password!")
        browser.find_element(By.ID, "login-submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "wrong"))
        browser.find_element(By.ID, "login-password").clear()
        browser.find_element(By.ID, "login-password").send_keys(OPERATOR_PASSWORD)
        browser.find_element(By.ID, "login-submit").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".who"), "alice"))
        assert browser.find_element(By.ID, "stack-state").text == "Running"
        wait.until(ec.presence_of_element_located((By.ID, "snapshot-table")))

        browser.find_element(By.ID, "action-backup").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "action-message"), "backup started"))
        card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#ops .op")))
        wait.until(lambda b: "done" in card.get_attribute("class"))
        assert "ok in" in card.text and "snapshot" in card.text
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#snapshot-table tbody tr")) == snapshots_before + 1)
        for d in shots:
            browser.save_screenshot(str(d / "serve-dashboard.png"))

        browser.find_element(By.ID, "action-drill").click()
        wait.until(lambda b: any("drill" in c.text and "done" in c.get_attribute("class")
                                 for c in b.find_elements(By.CSS_SELECTOR, "#ops .op")))

        browser.find_element(By.ID, "action-restore").click()
        box = browser.find_element(By.ID, "confirm-box")
        assert box.is_displayed() and "type the VSN name" in browser.find_element(By.ID, "confirm-text").text
        browser.find_element(By.ID, "confirm-input").send_keys("not-the-name")
        browser.find_element(By.ID, "confirm-go").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "action-message"), "refused (400)"))
        for d in shots:
            browser.save_screenshot(str(d / "serve-dashboard-refused.png"))
    assert (tmp_path / "serve-dashboard.png").stat().st_size > 10_000
    verbs = [(e["verb"], e["user"]) for e in served.get("/api/v1/history?limit=3").body["entries"]]
    assert verbs[:2] == [("drill", "alice via serve (as root)"), ("backup", "alice via serve (as root)")]


def test_upgrade_archive_unarchive_cleanup_move_the_stack(served, sink):
    web = next(c for c in served.get("/api/v1/containers").body["containers"] if c["name"] == "web")
    assert web["state"] == "running"
    upgraded = _run(served, "upgrade", {"service": "web", "image": "localhost/migrator-httpd:latest"})
    assert upgraded["result"]["ok"] is True
    _run(served, "archive")
    stack = served.get("/api/v1/stack").body
    assert stack["state"] == "Archived" and "unarchive" in stack["allowed_actions"]
    assert not any(state == "running" for state in served.vsn.containers().values())
    _run(served, "unarchive")
    assert served.get("/api/v1/stack").body["state"] == "Running"
    hooks = [json.loads(r.body) for r in sink.wait_for(lambda rs: sum(r.path == "/hook" for r in rs) >= 2)
             if r.path == "/hook"]
    assert [(h["verb"], h["outcome"], h["state"]) for h in hooks] == [("archive", "ok", "Archived"),
                                                                      ("unarchive", "ok", "Running")]
    assert served.post("/api/v1/actions/cleanup", {"no_snapshot": True}, token=served.operator_token).status == 400
    _run(served, "cleanup", {"confirm": VSN_NAME, "no_snapshot": True})
    assert served.get("/api/v1/stack").body["state"] is None
    assert served.vsn.containers() == {}
    entries = served.get("/api/v1/history", token=served.viewer_token).body["entries"]
    assert [e["verb"] for e in entries[:4]] == ["cleanup", "unarchive", "archive", "upgrade"]
