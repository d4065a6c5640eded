"""Docker over TCP with TLS against a real dockerd listening with --tlsverify (certificates made by openssl
for this session): a deploy works; a wrong CA, a missing client certificate, a client certificate the
daemon does not trust and a plain-TCP daemon are refused with exit 8 and a clear message, never by
falling back to plain TCP."""

from __future__ import annotations

import json

import pytest

from tests.lab.docker import make_ca, sign_cert, start_dockerd
from tests.lab.plans import demo_plan, web_port
from tests.lab.vsn import write_json


def tls_plan(vsn, tls, url: str, **overrides) -> dict:
    raw = demo_plan(vsn, host=False)
    raw["vsn"]["socket"] = url
    raw["vsn"]["tls"] = {"ca_cert": str(tls.ca), "client_cert": str(tls.client_cert),
                         "client_key": str(tls.client_key), **overrides}
    return raw


def test_deploy_status_teardown_over_tcp_with_tls(docker_vsn, docker_daemon, docker_tls, secrets, tmp_path):
    vsn = docker_vsn
    raw = tls_plan(vsn, docker_tls, docker_daemon.tcp_url)
    plan = write_json(tmp_path / "plan.json", raw)
    (vsn.data_root / "webdata" / "www").mkdir(parents=True)
    (vsn.data_root / "webdata" / "www" / "index.html").write_text("over tls")
    # A CA bundle in the environment (corporate setups set one) must not replace the plan's pinned CA.
    system_bundle = "/etc/ssl/certs/ca-certificates.crt"
    env = dict(vsn.env(), REQUESTS_CA_BUNDLE=system_bundle, CURL_CA_BUNDLE=system_bundle)
    result = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert vsn.http_get(web_port(raw)) == "over tls"
    # The containers are on that daemon (seen through its unix socket too).
    assert vsn.containers()["web"] == "running"
    status = json.loads(vsn.migrator("status", "--json").stdout)
    assert status["state"] == "running"
    assert vsn.migrator("teardown").returncode == 0
    assert vsn.containers() == {}


def refused(vsn, raw, tmp_path, secrets, name: str) -> str:
    """deploy and check of `raw` both exit 8; returns deploy's message. Nothing was created."""
    plan = write_json(tmp_path / f"{name}.json", raw)
    deploy = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
    assert deploy.returncode == 8, deploy.stdout + deploy.stderr
    out = json.loads(deploy.stdout)
    assert out["error"] == "EngineRefused" and "vsn.tls" in out["hint"]
    check = vsn.migrator("check", str(plan), "--secrets", str(secrets), "--json")
    assert check.returncode == 8, check.stdout + check.stderr
    assert vsn.containers() == {}
    return out["message"]


def test_wrong_ca_is_refused(docker_vsn, docker_daemon, docker_tls, secrets, tmp_path):
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    raw = tls_plan(docker_vsn, docker_tls, docker_daemon.tcp_url, ca_cert=str(other_ca))
    message = refused(docker_vsn, raw, tmp_path, secrets, "wrong-ca")
    assert "certificate is not signed by vsn.tls.ca_cert" in message


def test_missing_client_certificate_is_refused(docker_vsn, docker_daemon, docker_tls, secrets, tmp_path):
    raw = tls_plan(docker_vsn, docker_tls, docker_daemon.tcp_url, client_cert=str(tmp_path / "absent.pem"))
    message = refused(docker_vsn, raw, tmp_path, secrets, "no-client-cert")
    assert f"vsn.tls.client_cert {tmp_path / 'absent.pem'} is not a readable file" in message


def test_client_certificate_of_another_ca_is_refused_by_the_daemon(docker_vsn, docker_daemon, docker_tls, secrets,
                                                                   tmp_path):
    stranger = make_ca(tmp_path / "stranger", "stranger-ca")
    cert, key = sign_cert(tmp_path / "stranger", stranger, "client", "intruder", "extendedKeyUsage=clientAuth")
    raw = tls_plan(docker_vsn, docker_tls, docker_daemon.tcp_url, client_cert=str(cert), client_key=str(key))
    message = refused(docker_vsn, raw, tmp_path, secrets, "stranger")
    assert "refused the TLS connection" in message and "client certificate" in message


@pytest.fixture(scope="module")
def plain_tcp_daemon(lab_images):
    """A real dockerd that serves its API on plain TCP (no TLS at all)."""
    daemon = start_dockerd(tcp=True, bridge=False)
    try:
        yield daemon
    finally:
        daemon.stop()


def test_plain_tcp_daemon_is_refused_never_used_unencrypted(plain_tcp_daemon, docker_tls, secrets, tmp_path):
    from tests.lab.docker import DockerVSN

    vsn = DockerVSN(plain_tcp_daemon)
    try:
        raw = tls_plan(vsn, docker_tls, plain_tcp_daemon.tcp_url)
        message = refused(vsn, raw, tmp_path, secrets, "plain")
        assert "does not speak TLS" in message and "unencrypted" in message
        # And a tcp:// plan without TLS never gets that far: the plan is refused (exit 3).
        raw["vsn"].pop("tls")
        plan = write_json(tmp_path / "no-tls.json", raw)
        no_tls = vsn.migrator("deploy", str(plan), "--secrets", str(secrets), "--json")
        assert no_tls.returncode == 3, no_tls.stdout
        assert "vsn.tls: a tcp:// engine socket needs tls" in no_tls.stdout
        assert plain_tcp_daemon.containers() == {}
    finally:
        vsn.stop()
