"""ops.deploy.deploy's `timings` (seconds per phase, in its --json and a move's target steps), with the plan,
stack and engine replaced by fakes (the real ones run in tests/integration/test_deploy.py): one entry per
phase, named as the bench and operators read them, in the order they ran."""

from __future__ import annotations

from types import SimpleNamespace

from migrator.ops import check, deploy
from migrator.stack import topology as stack_mod
from migrator.stack.probes import ProbeResult


class FakeEngine:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_deploy_times_each_phase(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATOR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    services = [SimpleNamespace(name=n, image="img", depends_on=d) for n, d in (("web", ["db"]), ("db", []))]
    host = SimpleNamespace(name="host", image="host-img", startup_timeout=1)
    plan = SimpleNamespace(vsn=SimpleNamespace(name="vsn", data_root=str(tmp_path / "data")), host=host,
                           volumes=[SimpleNamespace(name="vol", image="img", mounts=[])],
                           enabled_services=tuple(services), network="net", network_subnet=None, raw={})
    engine = FakeEngine()
    stack = SimpleNamespace(plan=plan, outer=engine, report=lambda m: None, host_info=lambda: None,
                            drop_all=lambda: [], ensure_image=lambda e, ref: ref, host_spec=lambda: {},
                            rest_engine=lambda: engine, labels=lambda kind: {}, volume_spec=lambda v: {},
                            service_spec=lambda s, secrets: {}, ensure_holder=lambda e, s: False)
    monkeypatch.setattr(check, "require", lambda p: None)
    monkeypatch.setattr(stack_mod.Stack, "for_plan", classmethod(lambda cls, p, report=None: stack))
    monkeypatch.setattr(deploy, "wait_healthy", lambda e, svc: ProbeResult(True, "ok"))
    result = deploy.deploy(plan, SimpleNamespace(path=None), record=False)
    assert list(result.timings) == ["check", "drop", "host", "volumes", "service.db", "service.web"]
    assert all(isinstance(s, float) and s >= 0 for s in result.timings.values())
    assert result.health == {"db": "ok", "web": "ok"}
