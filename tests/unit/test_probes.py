"""stack.probes.wait_healthy: a restarted service is probed quickly at first (every pause is downtime), the pause
backs off to the plan's `interval`, and a probe that never passes ends at its timeout.

The engine is a stand-in (unit test of the polling logic); the probe itself is a real TCP connect."""

from __future__ import annotations

import socket

import pytest

from migrator.engine.base import ContainerInfo
from migrator.plan.model import PortMapping, Probe, Service
from migrator.stack import probes


class RunningEngine:
    def get(self, name):
        return ContainerInfo(name=name, state="running", image="i", labels={})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def service(port: int, interval: float, timeout: int) -> Service:
    return Service(name="w", image="i", ports=(PortMapping(host=port, container=8081, address="127.0.0.1"),),
                   health=Probe(type="tcp", port=8081, interval=interval, timeout=timeout))


def test_pauses_start_small_and_double_up_to_the_interval(monkeypatch):
    port = closed_port()
    pauses: list[float] = []
    listener = socket.socket()

    def fake_sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == 6:  # the service comes up after the 6th pause
            listener.bind(("127.0.0.1", port))
            listener.listen()

    monkeypatch.setattr(probes.time, "sleep", fake_sleep)
    try:
        result = probes.wait_healthy(RunningEngine(), service(port, interval=0.3, timeout=60))
    finally:
        listener.close()
    assert result.ok, result.detail
    assert pauses == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.3, 0.3])


def test_a_probe_that_never_passes_fails_at_its_timeout(monkeypatch):
    port = closed_port()
    now = [0.0]
    monkeypatch.setattr(probes.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(probes.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    result = probes.wait_healthy(RunningEngine(), service(port, interval=0.5, timeout=3))
    assert not result.ok and "not healthy after 3s" in result.detail
    assert now[0] == pytest.approx(3.0)  # the last pause is cut to the deadline, not beyond
