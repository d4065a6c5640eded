"""A fresh VSN for one test: its own podman service socket, storage root, network config dir, data root
and migrator state dir. Lab images come read-only from the shared image store (lab/storage.conf's
additionalimagestores), so nothing is copied per test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "lab"
# podman's service needs a moment to open its socket; 30 s covers a cold start on a loaded 2-core box.
SERVICE_START_TIMEOUT = 30.0


def lab_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(LAB / "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(LAB / "storage.conf")
    return env


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: each socket stays bound until all are, so the kernel cannot hand out a
    just-closed port twice (it did: a plan's web and db ports once clashed)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def answers(sock: Path) -> bool:
    """Whether an engine API (podman or dockerd) answers GET /_ping on the unix socket `sock`."""
    if not sock.exists():
        return False
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        return b"200" in s.recv(64)
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class PodmanVSN:
    """One VSN on this machine, driven by lab/vsn.sh (own storage root sharing the lab image store
    read-only, own runtime and network config dirs, own bridge and subnet, own API socket).
    Short paths under /tmp keep unix socket paths below 108 bytes."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mv", dir="/tmp")))

    @property
    def socket_path(self) -> Path:
        return self.base / "podman.sock"

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def data_root(self) -> Path:
        return self.base / "data"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    def podman_env(self) -> dict[str, str]:
        env = lab_env()
        env["CONTAINERS_CONF"] = str(self.base / "containers.conf")
        env["CONTAINERS_STORAGE_CONF"] = str(self.base / "storage.conf")
        return env

    def env(self) -> dict[str, str]:
        env = self.podman_env()
        env["MIGRATOR_STATE_DIR"] = str(self.state_dir)
        env["MIGRATOR_RUNTIME_DIR"] = str(self.base / "rt")
        return env

    def start(self) -> PodmanVSN:
        subprocess.run([str(LAB / "vsn.sh"), "start", str(self.base)], env=lab_env(), check=True,
                       capture_output=True, timeout=SERVICE_START_TIMEOUT + 10)
        if not answers(self.socket_path):
            raise RuntimeError(f"VSN engine at {self.socket_path} does not answer")
        return self

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The podman CLI on this VSN (through its socket), for assertions and fault injection."""
        return subprocess.run(["podman", "--url", self.socket_url, *args], env=self.podman_env(),
                              capture_output=True, text=True, check=check, timeout=300)

    @staticmethod
    def migrator_argv() -> list[str]:
        return [sys.executable, "-m", "migrator"]

    def migrator(self, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run the real CLI as a user would: a separate process, real argv, real exit code."""
        return subprocess.run([sys.executable, "-m", "migrator", *args], env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def containers(self) -> dict[str, str]:
        rows = json.loads(self.podman("ps", "-a", "--format", "json").stdout or "[]")
        return {row["Names"][0]: row["State"] for row in rows}

    def stop(self) -> None:
        subprocess.run([str(LAB / "vsn.sh"), "purge", str(self.base)], env=lab_env(), capture_output=True,
                       timeout=120)
        shutil.rmtree(self.base, ignore_errors=True)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=2))
    return path
