"""A cross-engine move: a stack on a podman VSN moves, with its writer running, to a second VSN whose engine
is a real Docker Engine (own network and mount namespaces, reached only over SSH). The plan is the same;
only the engine differs (`--target-engine docker`)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.test_move import deploy_source
from tests.lab.docker import start_docker_target
from tests.lab.fingerprint import fingerprint
from tests.lab.plans import web_port


@pytest.fixture()
def docker_target(vsn, lab_images):
    with start_docker_target(vsn) as target:
        yield target


@pytest.mark.parametrize("host", [False, True], ids=["flat", "host"])
def test_move_podman_to_docker_with_the_writer_running(vsn, docker_target, secrets, tmp_path, host):
    target = docker_target
    raw = deploy_source(vsn, secrets, tmp_path, host=host)
    result = vsn.migrator("move", *target.move_args(), "--target-engine", "docker", "--target-socket",
                          target.socket_url, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert set(out["health"]) == {"db", "web"} and out["bytes_delta"] > 0
    # The source is containerless, its data kept; the target's Docker daemon runs the stack.
    assert vsn.containers() == {}
    there = target.containers()
    if host:  # the Host image went over too, and runs the stack in its nested podman under Docker
        assert there == {raw["host"]["name"]: "running"}
    else:
        assert {name: there.get(name) for name in ("web", "db", "web-netns", "db-netns")} == dict.fromkeys(
            ("web", "db", "web-netns", "db-netns"), "running")
        assert there["webdata"] == "created" and there["dbdata"] == "created"
    assert target.http_get(web_port(raw)) == "moved page"
    # Byte-identical data with owners, modes and links; the writer resumed the log the source wrote.
    assert fingerprint(target.data_root / "webdata") == fingerprint(vsn.data_root / "webdata")
    moved_log = (target.data_root / "dbdata" / "data" / "log.txt").read_bytes()
    assert moved_log.startswith((vsn.data_root / "dbdata" / "data" / "log.txt").read_bytes())
    st = os.stat(target.data_root / "webdata" / "www" / "private.key")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    # The target remembers the plan it runs: the same stack, engine docker on its own socket.
    remembered = [json.loads(p.read_text()) for p in target.state_dir.rglob("plan.json") if "incoming" not in p.parts]
    assert remembered and all(p["vsn"]["engine"] == "docker" and p["vsn"]["socket"] == target.socket_url
                              for p in remembered)
    assert all(p["services"] == raw["services"] and p["volumes"] == raw["volumes"] for p in remembered)
    status = target.host.run(["bash", "-c", f"{target.remote_migrator()} status --json"], check=False)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "running"
    health = target.host.run(["bash", "-c", f"{target.remote_migrator()} health --json"], check=False)
    assert health.returncode == 0, health.stdout + health.stderr


def test_move_docker_to_docker(docker_vsn, secrets, tmp_path):
    """Source and target both Docker VSNs. The source's migrator runs where it reaches the target's SSH address
    (the machine's network namespace): a move probes health on the target only."""
    source = docker_vsn
    raw = deploy_source(source, secrets, tmp_path, host=False)
    with start_docker_target(source) as target:
        argv = [*source.migrator_argv()[3:], "move", *target.move_args(), "--target-socket", target.socket_url,
                "--json"]
        result = subprocess.run(argv, env=source.env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr + result.stdout
        assert set(json.loads(result.stdout)["health"]) == {"db", "web"}
        assert source.containers() == {}
        assert target.containers()["web"] == "running" and target.containers()["db"] == "running"
        assert target.http_get(web_port(raw)) == "moved page"
        assert fingerprint(target.data_root / "webdata") == fingerprint(source.data_root / "webdata")
        moved_log = (target.data_root / "dbdata" / "data" / "log.txt").read_bytes()
        assert moved_log.startswith((source.data_root / "dbdata" / "data" / "log.txt").read_bytes())


def test_move_docker_to_podman(docker_vsn, secrets, tmp_path):
    """The way back: a Docker VSN's stack onto a podman VSN; images go from `docker save` into podman."""
    from tests.lab.vsn2 import start_target

    source = docker_vsn
    raw = deploy_source(source, secrets, tmp_path, host=False)
    with start_target(source) as target:
        argv = [*source.migrator_argv()[3:], "move", *target.move_args(), "--target-engine", "podman",
                "--target-socket", f"unix://{target.path}/podman.sock", "--json"]
        result = subprocess.run(argv, env=source.env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr + result.stdout
        assert source.containers() == {}
        assert target.containers()["web"] == "running" and target.containers()["db"] == "running"
        assert target.http_get(web_port(raw)) == "moved page"
        assert fingerprint(target.data_root / "webdata") == fingerprint(source.data_root / "webdata")
