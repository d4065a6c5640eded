"""Health probes of a service: tcp connect or http GET from the VSN to the service's published port, or
a command exec'd inside the container. `wait_healthy` polls until healthy, the container dies, or the
probe's timeout passes."""

from __future__ import annotations

import http.client
import socket
import time
from dataclasses import dataclass

from migrator.engine.base import ContainerEngine
from migrator.plan.model import PortMapping, Probe, Service

# One attempt may not take longer than this: a hung accept must not eat the whole probe budget.
ATTEMPT_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


def _published(svc: Service, container_port: int, port_map: dict[int, int] | None) -> tuple[str, int]:
    mapping: PortMapping = next(p for p in svc.ports if p.container == container_port and p.protocol == "tcp")
    address = "127.0.0.1" if mapping.address == "0.0.0.0" else mapping.address
    host_port = (port_map or {}).get(mapping.host, mapping.host)
    return address, host_port


def probe_once(engine: ContainerEngine, svc: Service, probe: Probe, port_map: dict[int, int] | None = None,
               container: str | None = None) -> ProbeResult:
    try:
        if probe.type == "cmd":
            code, out = engine.exec(container or svc.name, list(probe.command), timeout=ATTEMPT_TIMEOUT)
            return ProbeResult(code == 0, f"command exited {code}: {out.strip()[-200:]}")
        address, port = _published(svc, probe.port, port_map)
        if probe.type == "tcp":
            with socket.create_connection((address, port), timeout=ATTEMPT_TIMEOUT):
                return ProbeResult(True, f"tcp {address}:{port} accepts connections")
        conn = http.client.HTTPConnection(address, port, timeout=ATTEMPT_TIMEOUT)
        try:
            conn.request("GET", probe.path, headers={"User-Agent": "migrator-health"})
            status = conn.getresponse().status
        finally:
            conn.close()
        return ProbeResult(status == probe.expect_status,
                           f"http://{address}:{port}{probe.path} answered {status} (expected {probe.expect_status})")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"{probe.type} probe failed: {exc}")
    except Exception as exc:  # engine errors during exec: report, do not crash the caller's loop
        return ProbeResult(False, f"{probe.type} probe failed: {getattr(exc, 'message', exc)}")


def wait_healthy(engine: ContainerEngine, svc: Service, port_map: dict[int, int] | None = None,
                 container: str | None = None) -> ProbeResult:
    """Wait until the service's container runs and its probe (if any) passes."""
    name = container or svc.name
    probe = svc.health
    deadline = time.monotonic() + (probe.timeout if probe else 10)
    last = ProbeResult(False, "not probed yet")
    while True:
        info = engine.get(name)
        if info is None or info.state not in ("running", "created", "configured", "initialized"):
            state = info.state if info else "missing"
            code = f" with code {info.exit_code}" if info and info.exit_code is not None else ""
            logs = engine.logs(name) if info else ""
            tail = f"; last output: {logs.splitlines()[-1][:200]}" if logs else ""
            return ProbeResult(False, f"container {name} is {state}{code}{tail}")
        if info.running:
            if probe is None:
                return ProbeResult(True, "running (no health probe)")
            last = probe_once(engine, svc, probe, port_map, container)
            if last.ok:
                return last
        if time.monotonic() >= deadline:
            return ProbeResult(False, f"not healthy after {probe.timeout if probe else 10}s: {last.detail}")
        time.sleep(probe.interval if probe else 0.5)
