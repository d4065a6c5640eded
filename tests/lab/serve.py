"""A real `migrator serve` for tests: a deployed flat demo stack on its own lab VSN, users and tokens in
its secrets file, the server as a child process on a free loopback port, and small HTTP helpers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.procs import stop_process
from tests.lab.vsn import PodmanVSN, free_port

OPERATOR_PASSWORD = "operator-pass-123"
VIEWER_PASSWORD = "viewer-pass-456"
START_TIMEOUT = 30.0


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict


@dataclass
class Served:
    vsn: PodmanVSN
    secrets: Path
    operator_token: str = ""
    viewer_token: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        env = self.vsn.env()
        for name, password, extra in (("alice", OPERATOR_PASSWORD, []), ("bob", VIEWER_PASSWORD, ["--read-only"])):
            done = subprocess.run([sys.executable, "-m", "migrator", "serve", "passwd", name, *extra], env=env,
                                  input=password + "\n", capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        self.operator_token = self._token("ci", env)
        self.viewer_token = self._token("dash", env, "--read-only")
        self.proc = subprocess.Popen([sys.executable, "-m", "migrator", "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--secrets", str(self.secrets), *self.extra_args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self.get("/api/v1").status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"migrator serve exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.1)
        raise RuntimeError("migrator serve did not answer")

    def _token(self, name: str, env: dict, *extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "migrator", "serve", "token", name, *extra], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None,
                headers: dict | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {}),
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"text": raw.decode("utf-8", "replace")}
        return Reply(status, parsed, hdrs)

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: dict | None = None, **kw) -> Reply:
        return self.request("POST", path, body, **kw)

    def wait_operation(self, op: str, token: str, timeout: float = 300) -> dict:
        """Poll the operation until it has finished; AssertionError with its record past the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.get(f"/api/v1/operations/{op}", token=token)
            assert got.status == 200, got.body
            if not got.body["running"]:
                return got.body
            assert time.monotonic() < deadline, f"still running after {timeout}s: {got.body}"
            time.sleep(0.2)


class EventTap:
    """Reads the server's SSE stream in a thread and keeps every event."""

    def __init__(self, served: Served, token: str) -> None:
        self.events: list[dict] = []
        req = urllib.request.Request(served.url + "/api/v1/events", headers={"Authorization": f"Bearer {token}"})
        self._resp = urllib.request.urlopen(req, timeout=300)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))
        except Exception:  # noqa: BLE001 - the stream is closed under the reader when the test is done
            pass

    def wait_for(self, predicate, timeout: float = 600) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate(list(self.events)):
            time.sleep(0.1)
        return list(self.events)

    def close(self) -> None:
        # The reader thread sits in a read holding the response's buffer lock: shut the socket down so
        # that read returns now (a plain close would wait for the server's next keep-alive).
        try:
            self._resp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        self._thread.join(timeout=10)
        self._resp.close()
