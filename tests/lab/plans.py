"""Plans for integration tests: the demo plan's shape pointed at a test VSN, with free ports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tests.lab.vsn import REPO, PodmanVSN, free_ports

IMAGES = {
    "host": "localhost/migrator-host:latest",
    "busybox": "localhost/migrator-busybox:latest",
    "httpd": "localhost/migrator-httpd:latest",
    "writer": "localhost/migrator-writer:latest",
}


def demo_plan(vsn: PodmanVSN, *, host: bool = True, name: str = "t", host_name: str | None = None) -> dict:
    raw = copy.deepcopy(json.loads((REPO / "tests" / "lab" / "writer-plan.json").read_text()))
    raw["vsn"].update({"name": name, "socket": vsn.socket_url, "data_root": str(vsn.data_root),
                       "engine": getattr(vsn, "engine", "podman")})
    raw["network"] = f"{name}-net"
    web_port, db_port, admin_port = free_ports(3)
    svc = {s["name"]: s for s in raw["services"]}
    svc["web"]["ports"][0]["host"] = web_port
    svc["db"]["ports"][0]["host"] = db_port
    svc["admin"]["ports"][0]["host"] = admin_port
    raw.pop("backup", None)
    if host:
        raw["host"]["name"] = host_name or f"{name}-host"
    else:
        raw.pop("host")
    return raw


def secrets_file(path: Path, values: dict | None = None) -> Path:
    path.write_text(json.dumps(values or {"db_password": "pa55-w0rd-never-logged"}))
    path.chmod(0o600)
    return path


def web_port(raw: dict) -> int:
    return next(s for s in raw["services"] if s["name"] == "web")["ports"][0]["host"]
