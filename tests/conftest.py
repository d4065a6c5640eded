"""Shared fixtures. Tests under tests/integration are marked `integration` and use the real lab."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.lab.vsn import LAB, PodmanVSN, lab_env

LAB_IMAGES = ("busybox", "httpd", "writer", "host")

# Lab fixtures shared by several test modules: s3_server, s3_env, s3_bucket, s3_fault_proxy, ssh_host, ...
pytest.register_assert_rewrite("tests.lab.s3server", "tests.lab.sshhost", "tests.lab.docker")
pytest_plugins = ["tests.lab.s3server", "tests.lab.sshhost", "tests.lab.docker"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab_images() -> None:
    """The lab images exist in the shared store (built and cached by recipe hash; `make test` builds
    them first, this only rebuilds when a recipe changed)."""
    subprocess.run([str(LAB / "build-images.sh")], check=True, env=lab_env(), capture_output=True, timeout=1800)


@pytest.fixture()
def vsn(request, lab_images) -> PodmanVSN:
    """A fresh podman VSN; a test marked with tests.lab.docker.both_engines also runs on a Docker VSN (the
    session's Docker Engine, in its own network namespace) with the same helpers."""
    if getattr(request, "param", "podman") == "docker":
        from tests.lab.docker import DockerVSN

        daemon = request.getfixturevalue("docker_daemon")
        daemon.clean()
        machine = DockerVSN(daemon)
    else:
        machine = PodmanVSN().start()
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture()
def secrets(tmp_path) -> Path:
    from tests.lab.plans import secrets_file

    return secrets_file(tmp_path / "secrets.json")


@pytest.fixture()
def target_vsn(vsn):
    """A second VSN reached only over SSH (own netns, mount ns, podman, data root, state)."""
    from tests.lab.vsn2 import start_target

    with start_target(vsn) as target:
        yield target
