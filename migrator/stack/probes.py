"""Health probes of a service: tcp connect, http GET, or a command exec'd in the container.

`wait_healthy` polls until healthy, the container dies, or the probe's timeout passes."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from migrator.engine.base import ContainerEngine
from migrator.plan.model import PortMapping, Probe, Service

# One attempt may not take longer than this: a hung accept must not eat the whole probe budget.
ATTEMPT_TIMEOUT = 5.0
# Pause after the first failed attempt; it doubles up to the probe's `interval`. A service restarted after
# a backup's stopped window usually answers within tens of milliseconds, and every pause is downtime.
FIRST_PAUSE = 0.02


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
        status = _http_status(address, port, probe.path)
        return ProbeResult(status == probe.expect_status,
                           f"http://{address}:{port}{probe.path} answered {status} (expected {probe.expect_status})")
    except OSError as exc:
        return ProbeResult(False, f"{probe.type} probe failed: {exc}")
    except Exception as exc:  # engine errors during exec: report, do not crash the caller's loop
        return ProbeResult(False, f"{probe.type} probe failed: {getattr(exc, 'message', exc)}")


def _http_status(address: str, port: int, path: str) -> int:
    """The status of GET `path`; a broken HTTP answer is an OSError like a refused connection."""
    import http.client  # only HTTP probes need it: ~8 ms off every command's start-up

    conn = http.client.HTTPConnection(address, port, timeout=ATTEMPT_TIMEOUT)
    try:
        conn.request("GET", path, headers={"User-Agent": "migrator-health"})
        return conn.getresponse().status
    except http.client.HTTPException as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    finally:
        conn.close()


def wait_healthy(engine: ContainerEngine, svc: Service, port_map: dict[int, int] | None = None,
                 container: str | None = None) -> ProbeResult:
    """Wait until the service's container runs and its probe (if any) passes: attempts 20 ms apart at first,
    the pause doubling up to the probe's `interval` (0.5 s by default)."""
    name = container or svc.name
    probe = svc.health
    deadline = time.monotonic() + (probe.timeout if probe else 10)
    last = ProbeResult(False, "not probed yet")
    longest = probe.interval if probe else 0.5
    pause = min(FIRST_PAUSE, longest)
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
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 2, longest)
