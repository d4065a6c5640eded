"""One lab VSN engine for the whole bench run (lab/vsn.sh), and the migrator CLI pointed at it.

The VSN dir holds the engine (socket, storage, networks) and migrator's state and runtime dirs, so
`purge` removes everything the bench deployed. Plans are flat (no Host container): the REST containers
run on the VSN engine directly, the data dir of volume `vol` is `<data_root>/vol/data`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from measure import Result, run

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab"
MIGRATOR = REPO / ".venv" / "bin" / "migrator"
BUSYBOX = "localhost/migrator-busybox:latest"
WRITER = "localhost/migrator-writer:latest"
VSN_NAME = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_plan(sock: str, data_root: Path, writer: dict | None = None) -> dict:
    """One volume `vol` (data dir `<data_root>/vol/data`, mounted at /data); optionally one writer service."""
    plan = {"version": 1,
            "vsn": {"name": VSN_NAME, "engine": "podman", "socket": sock, "data_root": str(data_root)},
            "volumes": [{"name": "vol", "image": BUSYBOX, "mounts": [{"name": "data", "path": "/data"}]}],
            "services": []}
    if writer is not None:
        plan["services"].append(writer)
    return plan


def writer_service(port: int, quiesce: str) -> dict:
    return {"name": "w", "image": WRITER, "volumes_from": ["vol"], "ports": [{"host": port, "container": 8081}],
            "health": {"type": "tcp", "port": 8081, "timeout": 60}, "quiesce": quiesce}


class VSN:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.plans = self.base / "plans"
        self._env: dict | None = None
        self.deployed: str | None = None

    @property
    def sock(self) -> str:
        return f"unix://{self.base}/podman.sock"

    def start(self) -> None:
        if self.base.exists():  # debris of a killed bench run
            self.purge()
        subprocess.run([str(LAB / "vsn.sh"), "start", str(self.base)], check=True, capture_output=True, text=True,
                       timeout=60)
        env = dict(os.environ)
        out = subprocess.run([str(LAB / "vsn.sh"), "env", str(self.base)], check=True, capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
        env["MIGRATOR_STATE_DIR"] = str(self.base / "state")
        env["MIGRATOR_RUNTIME_DIR"] = str(self.base / "rt")
        env.pop("MIGRATOR_PROGRESS", None)
        self._env = env
        self.plans.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict:
        assert self._env is not None, "VSN not started"
        return self._env

    def migrator(self, *args: str, check: bool = True) -> Result:
        return run([str(MIGRATOR), *args], env=self.env, check=check)

    def migrator_json(self, *args: str) -> tuple[Result, dict]:
        res = self.migrator(*args, "--json")
        return res, json.loads(res.stdout)

    def deploy(self, name: str, plan: dict) -> None:
        """Teardown whatever is deployed, then deploy `plan` (written to plans/<name>.json)."""
        if self.deployed is not None:
            self.migrator("teardown")
            self.deployed = None
        path = self.plans / f"{name}.json"
        path.write_text(json.dumps(plan, indent=2))
        self.migrator("deploy", str(path))
        self.deployed = name

    def teardown(self) -> None:
        if self.deployed is not None:
            self.migrator("teardown", check=False)
            self.deployed = None

    def purge(self) -> None:
        subprocess.run([str(LAB / "vsn.sh"), "purge", str(self.base)], capture_output=True, timeout=180)
        self._env = None
        self.deployed = None
