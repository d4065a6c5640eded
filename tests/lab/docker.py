"""Lab: a private Docker Engine (dockerd with its own containerd) in its own network namespace, and a
Docker VSN on top of it.

Why a network namespace: with its bridge and iptables management on, dockerd rewrites iptables (its own
chains, FORWARD policy DROP). Inside `migdk-<pid>-<n>` those rules, its bridge (172.28.0.0/16, this lab's
Docker range) and its published ports touch nothing outside. The daemon is entered with
`nsenter --net` only: `ip netns exec` would also remount /sys and hide the cgroup mounts dockerd needs.
Its mount namespace is the machine's, so its unix socket is an ordinary file here; migrator runs inside
the same network namespace (`DockerVSN.migrator`), where the published ports and probes are.

The session daemon keeps its data root in /var/lib/migrator-lab/docker (one session at a time holds its
lock), so the lab images (lab/docker-images.sh, keyed by recipe hash) are loaded once per recipe, not per
run. Everything is stopped by pid; a run that was SIGKILLed leaves a namespace and maybe a daemon, which
the next start reaps (only names with our prefix, only daemons on our data root)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.procs import run_checked as _sh
from tests.lab.procs import stop_process
from tests.lab.sshhost import start_ssh_host
from tests.lab.vsn import LAB, answers, free_port, lab_env
from tests.lab.vsn2 import TargetVSN

NETNS_PREFIX = "migdk"
SHARED_ROOT = Path(os.environ.get("MIGRATOR_LAB_DOCKER", "/var/lib/migrator-lab/docker"))
# dockerd answers _ping in ~1 s here (it starts containerd first); allow a loaded 2-core machine.
START_TIMEOUT = 60.0
# SIGTERM to exit: dockerd stops containerd and its shims; nothing runs by then (containers removed first).
STOP_TIMEOUT = 30.0
# Another test session may hold the shared data root (their integration run); wait for it, bounded.
LOCK_TIMEOUT = 1800.0
POLL = 0.05
BRIDGE_POOL = "172.28.0.0/16"

_counter = itertools.count(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _kill_netns(netns: str) -> None:
    pids = [int(p) for p in _sh(["ip", "netns", "pids", netns], check=False).stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(POLL)
    _sh(["ip", "netns", "del", netns], check=False)


def _umount_below(path: Path) -> None:
    """Container root filesystems, shm and netns files dockerd/containerd left mounted under `path`."""
    prefix = str(path) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        _sh(["umount", "-l", target], check=False)


def reap_stale() -> None:
    """Namespaces `migdk-<pid>-<n>` whose creating pid is gone, with what still runs in them."""
    for line in _sh(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NETNS_PREFIX}-(\d+)-\d+", name)
        if m and not _alive(int(m.group(1))):
            _kill_netns(name)


@dataclass
class TLSFiles:
    """A CA, a server certificate (for 127.0.0.1) and a client certificate, made with openssl."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server-cert.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client-cert.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client-key.pem"


def _openssl(*args: str, cwd: Path) -> None:
    _sh(["openssl", *args], cwd=cwd)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    key, cert = d / f"{name}-key.pem", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN=migrator lab {name}", "-keyout", str(key), "-out", str(cert), cwd=d)
    return cert, key


def sign_cert(d: Path, ca: tuple[Path, Path], name: str, cn: str, ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = d / f"{name}-key.pem", d / f"{name}.csr", d / f"{name}-cert.pem", d / f"{name}.ext"
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", str(key), "-out", str(csr), cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(extfile), "-out", str(cert), cwd=d)
    key.chmod(0o600)
    return cert, key


def make_tls(d: Path) -> TLSFiles:
    """The daemon's CA signs both the server certificate (127.0.0.1, localhost) and the client's."""
    files = TLSFiles(d)
    ca = make_ca(d, "ca")
    sign_cert(d, ca, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    sign_cert(d, ca, "client", "migrator", "extendedKeyUsage=clientAuth")
    return files


@dataclass
class Dockerd:
    """A running private dockerd. `dir` (short, under /tmp) holds socket, exec root and config."""

    dir: Path
    data_root: Path
    netns: str
    proc: subprocess.Popen | None = None
    tcp_port: int | None = None
    lock_fd: int | None = None
    socket_name: str = "d.sock"

    @property
    def socket_path(self) -> Path:
        return self.dir / self.socket_name

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        assert self.tcp_port, "daemon has no tcp listener"
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def enter(self) -> list[str]:
        """argv prefix: run a command in the daemon's network namespace (our mount namespace)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--"]

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, DOCKER_HOST=self.socket_url)
        return _sh(["docker", *args], check=check, env=env, timeout=300)

    def containers(self) -> dict[str, str]:
        rows = self.docker("ps", "-a", "--format", "{{json .}}").stdout.splitlines()
        return {json.loads(r)["Names"]: json.loads(r)["State"] for r in rows if r.strip()}

    def clean(self) -> None:
        """Every container and user network gone (a test's leftovers, or a killed session's)."""
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, check=False)
        nets = self.docker("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split()
        if nets:
            self.docker("network", "rm", *nets, check=False)

    def load_images(self, *names: str) -> None:
        _sh([str(LAB / "docker-images.sh"), self.socket_url, *names], env=lab_env(), timeout=1800)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.clean()
            stop_process(self.proc, STOP_TIMEOUT)
            self.proc = None
        _kill_netns(self.netns)
        _umount_below(self.dir)
        _umount_below(self.data_root)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _lock(data_root: Path) -> int:
    data_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"{data_root} stays locked by another test session") from None
            time.sleep(1)


def _kill_stale_daemon(data_root: Path) -> None:
    """A dockerd a killed session left on this data root (we hold its lock, so nobody else uses it)."""
    pidfile = data_root / "dockerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if cmdline and cmdline[0].endswith(b"dockerd") and str(data_root / "root").encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL)
    _umount_below(data_root)


def start_dockerd(*, data_root: Path | None = None, tls: TLSFiles | None = None, tcp: bool = False,
                  bridge: bool = True, storage_driver: str = "overlay2") -> Dockerd:
    """Start dockerd in a fresh network namespace. `data_root` None: a throwaway one under its dir.
    `tls`: listen on tcp://127.0.0.1:<port> with --tlsverify; `tcp` without `tls`: plain TCP (insecure)."""
    reap_stale()
    d = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))
    netns = f"{NETNS_PREFIX}-{os.getpid()}-{next(_counter)}"
    daemon = Dockerd(dir=d, data_root=data_root or d / "data", netns=netns)
    try:
        if data_root is not None:
            daemon.lock_fd = _lock(data_root)
            _kill_stale_daemon(data_root)
        _sh(["ip", "netns", "add", netns])
        _sh(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"])
        config: dict = {"storage-driver": storage_driver, "exec-opts": ["native.cgroupdriver=cgroupfs"],
                        "runtimes": {"lab-runc": {"path": str(LAB / "docker-runc")}}, "default-runtime": "lab-runc"}
        if bridge:
            config |= {"bip": "172.28.255.1/24", "default-address-pools": [{"base": BRIDGE_POOL, "size": 24}]}
        else:
            config |= {"bridge": "none", "iptables": False}
        (d / "daemon.json").write_text(json.dumps(config))
        argv = ["dockerd", "--config-file", str(d / "daemon.json"), "--data-root", str(daemon.data_root / "root"),
                "--exec-root", str(d / "exec"), "--pidfile", str(daemon.data_root / "dockerd.pid"),
                "-H", daemon.socket_url]
        if tls or tcp:
            daemon.tcp_port = free_port()
            argv += ["-H", f"tcp://127.0.0.1:{daemon.tcp_port}"]
        if tls:
            argv += ["--tlsverify", "--tlscacert", str(tls.ca), "--tlscert", str(tls.server_cert),
                     "--tlskey", str(tls.server_key)]
        daemon.data_root.mkdir(parents=True, exist_ok=True)
        with open(d / "dockerd.log", "ab") as log:
            daemon.proc = subprocess.Popen(daemon.enter() + argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(daemon.socket_path):
            if daemon.proc.poll() is not None or time.monotonic() > deadline:
                tail = (d / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dockerd did not come up: {tail}")
            time.sleep(POLL)
        daemon.clean()
    except BaseException:
        daemon.stop()
        raise
    return daemon


@dataclass
class DockerVSN:
    """One test's VSN on a (shared) Docker daemon: its own data root and migrator state; the same helpers
    as the podman lab VSN (`migrator`, `containers`, `data_root`, `state_dir`, `socket_url`)."""

    daemon: Dockerd
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dv", dir="/tmp")))
    engine: str = "docker"

    @property
    def socket_url(self) -> str:
        return self.daemon.socket_url

    @property
    def data_root(self) -> Path:
        return self.base / "data"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    def env(self) -> dict[str, str]:
        env = lab_env()
        env["MIGRATOR_STATE_DIR"] = str(self.state_dir)
        env["MIGRATOR_RUNTIME_DIR"] = str(self.base / "rt")
        return env

    def migrator_argv(self) -> list[str]:
        return [*self.daemon.enter(), sys.executable, "-m", "migrator"]

    def migrator(self, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        """The real CLI in the VSN's network namespace (where its published ports are)."""
        return subprocess.run([*self.migrator_argv(), *args], env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.daemon.docker(*args, check=check)

    def containers(self) -> dict[str, str]:
        return self.daemon.containers()

    def http_get(self, port: int, path: str = "/") -> str:
        code = (f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}{path}',"
                "timeout=10).read().decode(), end='')")
        return _sh([*self.daemon.enter(), sys.executable, "-c", code], timeout=60).stdout

    def stop(self) -> None:
        self.daemon.clean()
        _umount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


# -- pytest fixtures (registered in tests/conftest.py) -------------------------------------------------

# An engine-independent integration test runs on both engines: `vsn` is then a podman VSN, then a Docker one.
both_engines = pytest.mark.parametrize("vsn", ["podman", "docker"], indirect=True)


@pytest.fixture(scope="session")
def docker_tls(tmp_path_factory) -> TLSFiles:
    """A CA with a server certificate for 127.0.0.1 and a client certificate, made by openssl."""
    return make_tls(tmp_path_factory.mktemp("docker-tls"))


@pytest.fixture(scope="session")
def docker_daemon(lab_images, docker_tls) -> Iterator[Dockerd]:
    """One Docker Engine for the session (its own netns; the shared data root keeps the lab images), on a
    unix socket and on tcp://127.0.0.1:<port> with --tlsverify."""
    daemon = start_dockerd(data_root=SHARED_ROOT, tls=docker_tls)
    try:
        daemon.load_images()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture()
def docker_vsn(docker_daemon) -> Iterator[DockerVSN]:
    """A fresh VSN (data root, state) on the session's Docker Engine, which holds no container before."""
    docker_daemon.clean()
    machine = DockerVSN(docker_daemon)
    try:
        yield machine
    finally:
        machine.stop()


# -- a Docker VSN reached over SSH (the target of a cross-engine move) ---------------------------------

@dataclass
class DockerTarget(TargetVSN):
    """A second VSN whose engine is Docker: the SSH lab host (own network and mount namespaces) with a dockerd
    started inside both. As with the podman target, its VSN dir is bind-mounted over the source's path there,
    so the plan's data root names the target's own data; its socket is `<that dir>/docker.sock`."""

    daemon: Dockerd | None = None

    @property
    def socket_url(self) -> str:
        return f"unix://{self.path}/docker.sock"

    def containers(self) -> dict[str, str]:
        assert self.daemon is not None
        return self.daemon.containers()


@contextmanager
def start_docker_target(source) -> Iterator[DockerTarget]:
    local = Path(tempfile.mkdtemp(prefix="dt", dir="/tmp"))
    with start_ssh_host() as host:
        target = DockerTarget(host=host, path=str(source.base), local=local)
        host.bind(local, target.path)
        (local / "daemon.json").write_text(json.dumps({
            "storage-driver": "overlay2", "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "runtimes": {"lab-runc": {"path": str(LAB / "docker-runc")}}, "default-runtime": "lab-runc",
            "bip": "172.28.255.1/24", "default-address-pools": [{"base": BRIDGE_POOL, "size": 24}]}))
        p = target.path
        host.spawn(["dockerd", "--config-file", f"{p}/daemon.json", "--data-root", f"{p}/droot", "--exec-root",
                    f"{p}/dexec", "--pidfile", f"{p}/dockerd.pid", "-H", f"unix://{p}/docker.sock"], log_name="dockerd")
        # The daemon as seen from here: the same files under `local` (for the docker CLI and assertions).
        target.daemon = Dockerd(dir=local, data_root=local, netns=host.netns, socket_name="docker.sock")
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(target.daemon.socket_path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"target dockerd did not come up: {(host.workdir / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(POLL)
        try:
            yield target
        finally:
            with contextlib.suppress(Exception):
                target.daemon.clean()
            # host.stop() (leaving the block) stops dockerd by pid, then everything in its netns.
    _umount_below(local)
    shutil.rmtree(local, ignore_errors=True)
