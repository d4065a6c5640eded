"""The docker engine's refusals that need no daemon (a tcp:// URL without TLS, certificate files that are not
there, a socket that is not there), and the plan a cross-engine move sends the target. The TLS handshakes
themselves run against a real dockerd in tests/integration/test_docker_tls.py."""

from __future__ import annotations

import copy
import json

import pytest

from migrator.engine.docker import DockerEngine
from migrator.errors import EngineRefused, EngineUnreachable
from migrator.ops.move import retarget
from migrator.plan.model import TLSConfig
from tests.lab.docker import make_tls


def test_tcp_without_tls_is_refused_before_any_connection():
    with pytest.raises(EngineRefused, match="refusing to talk to a TCP daemon without TLS"):
        DockerEngine("tcp://127.0.0.1:1")


@pytest.mark.parametrize("missing", ["ca_cert", "client_cert", "client_key"])
def test_a_missing_certificate_file_is_named(tmp_path, missing):
    files = make_tls(tmp_path)
    tls = {"ca_cert": str(files.ca), "client_cert": str(files.client_cert), "client_key": str(files.client_key)}
    tls[missing] = str(tmp_path / "gone.pem")
    with pytest.raises(EngineRefused) as err:
        DockerEngine("tcp://127.0.0.1:1", TLSConfig(**tls))
    assert f"vsn.tls.{missing} {tmp_path / 'gone.pem'} is not a readable file" in err.value.message
    assert err.value.exit_code == 8


def test_nothing_listening_over_tls_is_unreachable_not_refused(tmp_path):
    """A closed port is a daemon that is down (exit 4), not a TLS refusal."""
    files = make_tls(tmp_path)
    tls = TLSConfig(str(files.ca), str(files.client_cert), str(files.client_key))
    with pytest.raises(EngineUnreachable) as err:
        DockerEngine("tcp://127.0.0.1:1", tls)
    assert not isinstance(err.value, EngineRefused) and err.value.exit_code == 4


def test_a_missing_socket_says_the_daemon_is_not_running(tmp_path):
    with pytest.raises(EngineUnreachable) as err:
        DockerEngine(f"unix://{tmp_path}/docker.sock")
    assert "the daemon is not running" in err.value.message and "start dockerd" in err.value.hint


PLAN = {"version": 1, "vsn": {"name": "shop", "engine": "podman", "socket": "unix:///run/podman/podman.sock",
                              "data_root": "/srv/shop"},
        "volumes": [{"name": "data", "image": "busybox", "mounts": [{"name": "d", "path": "/d"}]}],
        "services": [{"name": "web", "image": "httpd", "volumes_from": ["data"]}]}


def test_retarget_changes_only_the_engine_and_its_socket():
    before = json.dumps(PLAN, sort_keys=True)
    out = retarget(PLAN, "docker")
    assert json.dumps(PLAN, sort_keys=True) == before  # the source's plan is not touched
    assert out["vsn"] == {"name": "shop", "engine": "docker", "data_root": "/srv/shop"}  # docker's default socket
    assert {k: v for k, v in out.items() if k != "vsn"} == {k: v for k, v in PLAN.items() if k != "vsn"}
    assert retarget(PLAN, "docker", "unix:///x/docker.sock")["vsn"]["socket"] == "unix:///x/docker.sock"
    assert retarget(PLAN, None, None) is PLAN


def test_retarget_keeps_tls_only_for_a_tcp_socket():
    tls_plan = copy.deepcopy(PLAN)
    tls_plan["vsn"].update(engine="docker", socket="tcp://10.0.0.5:2376",
                           tls={"ca_cert": "/c", "client_cert": "/cc", "client_key": "/ck"})
    assert "tls" in retarget(tls_plan, None, "tcp://10.0.0.6:2376")["vsn"]
    assert "tls" not in retarget(tls_plan, "podman")["vsn"]
