"""Dependents follow's decisions without an engine: which engine events it trusts, which it takes for a
migrator operation's own doing, which services depend on which, and the bounded tries (the real thing
against podman is tests/integration/test_serve_follow.py)."""

from __future__ import annotations

import time

import pytest

from migrator.engine.watch import ContainerEvent
from migrator.serve import follow
from migrator.state import history

NOW_NS = 1_765_000_000_123_456_789


def _event(**over) -> dict:
    raw = {"Type": "container", "Action": "start", "Actor": {"ID": "abc", "Attributes": {"name": "db"}},
           "time": NOW_NS // 10**9, "timeNano": NOW_NS}
    raw.update(over)
    return raw


def test_a_well_formed_event_is_read_with_nanosecond_time():
    event = ContainerEvent.parse(_event())
    assert event == ContainerEvent(name="db", action="start", at=NOW_NS / 1e9)


def test_podman_died_reads_as_die_and_seconds_do_without_nanoseconds():
    raw = _event(Action="died")
    del raw["timeNano"]
    assert ContainerEvent.parse(raw) == ContainerEvent(name="db", action="die", at=float(NOW_NS // 10**9))


@pytest.mark.parametrize("raw", [
    None, [], "start", 7,
    _event(Type="image"),
    _event(Action="exec_start"),
    _event(Action=["start"]),
    _event(Actor="db"),
    _event(Actor={"Attributes": {"name": ""}}),
    _event(Actor={"Attributes": {"name": "x" * 256}}),
    _event(Actor={"Attributes": {"name": 5}}),
    _event(timeNano=True, time=None),
    _event(timeNano=-1, time=float("nan")),
    _event(timeNano=2**70, time=float("inf")),
    _event(timeNano="1", time="2"),
])
def test_malformed_or_irrelevant_events_are_dropped(raw):
    assert ContainerEvent.parse(raw) is None


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


def _ran(verb: str, started: float, ended: float | None) -> None:
    args = [verb, "db"] if verb in follow.NAMED_VERBS else [verb]
    history.record(history.Entry(verb=verb, started=started, ended=ended, result="ok", exit_code=0, args=args))


def test_an_event_while_an_operation_holds_the_lock_is_its_own(state):
    assert follow.by_operation("db", time.time(), "restart (pid 12)")
    assert follow.by_operation("db", time.time(), "pid 99 (flock /var/lib/migrator/lock)")  # unknown: assume it acts


def test_an_event_while_a_hands_off_verb_holds_the_lock_is_not(state):
    assert not follow.by_operation("db", time.time(), "health (pid 12)")
    assert not follow.by_operation("db", time.time(), "verify (pid 12)")


def test_a_finished_operation_covers_the_events_in_its_time_span(state):
    _ran("restart", 1000.0, 1010.0)
    _ran("health", 2000.0, 2010.0)
    _ran("follow", 3000.0, 3000.0)
    _ran("deploy", 4000.0, 4010.0)
    assert follow.by_operation("db", 1005.0, None)  # `migrator restart db`
    assert follow.by_operation("db", 1010.5, None)  # the engine's event can trail the operation's end a little
    assert not follow.by_operation("web", 1005.0, None)  # a restart acts only on the services it names
    assert not follow.by_operation("db", 1020.0, None)
    assert not follow.by_operation("db", 2005.0, None)  # health never starts a service
    assert not follow.by_operation("db", 3000.0, None)
    assert follow.by_operation("web", 4005.0, None)  # deploy starts them all


def test_dependents_are_transitive_enabled_and_in_plan_order():
    plan = {"services": [
        {"name": "db"},
        {"name": "cache", "depends_on": ["db"]},
        {"name": "web", "depends_on": ["cache"]},
        {"name": "off", "depends_on": ["db"], "enabled": False},
        {"name": "other"},
    ]}
    assert follow.dependents(plan, "db") == ["cache", "web"]
    assert follow.dependents(plan, "web") == []


class _Child:
    """Stands in for the `migrator restart` child (its real run is the integration test's)."""
    runs: list[list[str]] = []
    pid = 4242

    def __init__(self, argv, **_kw) -> None:
        _Child.runs.append(argv)

    def wait(self, timeout=None) -> int:
        return 0


class _Recording(follow.Follower):
    def __init__(self) -> None:
        super().__init__(command=["false"])
        self.restarts: list[list[str]] = []
        self.gave_up: list[str] = []

    def _record_give_up(self, plan, name, message, now):  # the history and the webhook: tested for real
        self.gave_up.append(message)


def test_tries_are_bounded_then_a_dead_service_is_left_down(state, monkeypatch):
    runs = _Child.runs = []
    monkeypatch.setattr(follow.subprocess, "Popen", _Child)
    follower = _Recording()
    plan = {"vsn": {"name": "v"}, "services": [{"name": "db"}, {"name": "web", "depends_on": ["db"]}]}
    for _ in range(follow.MAX_TRIES):
        assert follower._follow(plan, "db", "exited", ["db", "web"])
    assert [argv[1:] for argv in runs] == [["restart", "db", "web", "--json"]] * follow.MAX_TRIES
    assert follower._follow(plan, "db", "exited", ["db", "web"])
    assert len(runs) == follow.MAX_TRIES and "db" in follower.given_up
    assert "keeps dying" in follower.gave_up[0] and "left down" in follower.gave_up[0]


def test_a_service_restarting_in_a_loop_stops_having_its_dependents_restarted(state, monkeypatch):
    runs = _Child.runs = []
    monkeypatch.setattr(follow.subprocess, "Popen", _Child)
    follower = _Recording()
    plan = {"vsn": {"name": "v"}, "services": [{"name": "db"}, {"name": "web", "depends_on": ["db"]}]}
    for _ in range(follow.MAX_TRIES + 1):
        follower._follow(plan, "db", "restarted", ["web"])
    assert [argv[1:] for argv in runs] == [["restart", "web", "--json"]] * follow.MAX_TRIES
    assert "db" not in follower.given_up and follower.quiet_until["db"] > time.time()
    assert "keeps restarting" in follower.gave_up[0]
    assert not follower._follow(plan, "web", "restarted", [])  # nothing depends on it: nothing to do


class _Api:
    """The engine's /events as the docker SDK hands it over (a real engine: test_serve_follow.py)."""

    def __init__(self, batches: list[list]) -> None:
        self.batches, self.calls = batches, []

    def events(self, **kwargs):
        self.calls.append(kwargs)
        batch = self.batches.pop(0) if self.batches else []
        return _Stream(batch)


class _Stream(list):
    def close(self) -> None:
        pass


class _Engine:
    def __init__(self, api) -> None:
        self.api = api

    def exec_api(self):
        return self.api

    def close(self) -> None:
        pass


def test_events_are_asked_for_from_a_little_before_and_replayed_from_the_last_one_seen(state, monkeypatch):
    later = time.time() + 100  # an engine clock ahead of ours must not push `since` into the future
    api = _Api([[_event(Action="restart", timeNano=int((time.time() - 1) * 1e9)), "garbage"],
                [_event(Action="start", timeNano=int(later * 1e9))]])
    follower = follow.Follower(command=["false"])
    seen = []
    monkeypatch.setattr(follower, "_plan", lambda: {"vsn": {"name": "v"}, "services": []})
    monkeypatch.setattr(follower, "_engine", lambda raw: _Engine(api))
    monkeypatch.setattr(follower, "on_event", lambda ev: seen.append(ev) or (
        follower._stop.set() if len(seen) == 2 else None))
    monkeypatch.setattr(follow, "RECONNECT_S", 0.0)
    start = time.time()
    follower._watch()
    assert [e.action for e in seen] == ["restart", "start"]
    first, second = api.calls[0], api.calls[1]
    assert first["filters"] == {"type": ["container"], "label": ["io.migrator.stack=v"]}
    assert start - follow.SETTLE_S - 1 <= first["since"] <= start - follow.SETTLE_S
    assert second["since"] == int(seen[0].at)  # the stream broke: from the last event seen on


def test_an_event_during_an_operation_is_decided_once_the_operation_lets_go(state, monkeypatch):
    from migrator.state import stackstate
    from migrator.state.lock import operation_lock

    stackstate.transition(stackstate.CREATE_PENDING, "deploy")
    stackstate.transition(stackstate.RUNNING, "deploy")
    follower = follow.Follower(command=["false"])
    monkeypatch.setattr(follower, "_plan", lambda: {"vsn": {"name": "v"}, "services": []})
    looked = []
    monkeypatch.setattr(follow.subprocess, "run", lambda argv, **kw: looked.append(argv) or _Done())
    with operation_lock("backup"):  # a real flock, as the backup holding it takes
        follower.on_event(ContainerEvent(name="db", action="die", at=time.time()))
        follower._due = None
        follower.look()
        assert follower._due is not None and looked == []  # asked again for later, not decided now
    follower._due = None
    follower.look()
    assert looked and looked[0][1:] == ["status", "--json"] and follower._due is None
    follower.look()  # nothing asked any more: no look again scheduled
    assert follower._due is None


class _Done:
    stdout = b'{"containers": []}'
