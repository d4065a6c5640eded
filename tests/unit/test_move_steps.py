"""ops.move.cut_over's step timings (`before_downtime_steps`, `downtime_steps`, `target_steps` in move's
--json, read by the bench), with the target agent, services and archive replaced by fakes (the real ones run in
tests/integration/test_move.py): each step named as reported, in the order it ran."""

from __future__ import annotations

from types import SimpleNamespace

from migrator.ops import move


class FakeAgent:
    """The target's cut-over agent: ready at once, receives what it is sent as it was sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def event(self, kind: str, on_progress=None) -> dict:
        if kind == "ready":
            return {"steps": {"prepare": 0.5}, "missing_images": []}
        if kind == "received":
            return {"volume": "vol", "sha256": "abc", "size": 3, "fingerprint": {}}
        return {}

    def send(self, message: dict) -> None:
        self.sent.append(message)

    def data(self):
        return SimpleNamespace(close=lambda: None)

    def finish(self, on_progress=None) -> dict:
        return {"health": {"web": "ok"}, "steps": {"commit": 0.25}, "timings": {"check": 0.125}}

    def abort(self) -> None:
        raise AssertionError("the cut-over failed")


class FakeQuiesce:
    def __init__(self) -> None:
        self.stopped_at: dict[str, float] = {}

    def running(self, services):
        return services

    def run_hooks(self, services, phase):
        return []

    def stop(self, services):
        self.stopped_at = {s.name: move.time.monotonic() for s in services}

    def keep_stopped(self):
        pass


def test_cut_over_reports_where_the_time_went(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    monkeypatch.setattr(move, "capture_phase2", lambda root, sinks, state: (SimpleNamespace(sha256="abc", size=3), state))
    monkeypatch.setattr(move, "fingerprint", lambda root, content: {})
    agent = FakeAgent()
    remote = SimpleNamespace(what="target", agent=lambda *args: agent)
    plan = SimpleNamespace(vsn=SimpleNamespace(data_root=str(tmp_path)), enabled_services=[SimpleNamespace(name="web")],
                           volumes=[SimpleNamespace(name="vol", root_dir=lambda root: f"{root}/vol")])
    stack = SimpleNamespace(report=lambda m: None, outer=SimpleNamespace(image_exists=lambda ref: True))
    journal = SimpleNamespace(note=lambda key, fact: None, entry={"undo": {move.JOURNAL_KEY: {}}})
    files = {"plan": "plan.json", "secrets": None, "incoming": "incoming"}
    result = move.MoveResult(target="target", volumes=["vol"])
    move.cut_over(remote, plan, stack, FakeQuiesce(), journal, {"vol": None}, files, result)
    assert list(result.before_downtime_steps) == ["agent-ready", "images", "hooks"]
    assert list(result.downtime_steps) == ["stop", "delta.vol", "verify.vol", "commit", "deploy"]
    assert all(isinstance(s, float) and s >= 0 for s in [*result.before_downtime_steps.values(),
                                                         *result.downtime_steps.values()])
    assert result.target_steps == {"before-downtime.prepare": 0.5, "commit": 0.25, "deploy.check": 0.125}
    assert result.bytes_delta == 3 and result.health == {"web": "ok"}
    assert [m["cmd"] for m in agent.sent] == ["receive", "commit"]
