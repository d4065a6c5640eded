"""Lab: a second "host" (a fake VSN) in its own network and mount namespaces, reached only over SSH.

Owns: building and tearing down that host. What it is made of:
- a named network namespace `miglab-<pid>-<n>` joined to ours by a veth pair with addresses in
  10.213.<k>.0/24 (this machine's lab range, used ONLY on the veth ends created here; no routes
  anywhere else): our end .1, the host's end .2;
- an *anchor* process (`ip netns exec NS unshare --mount --propagation private sleep infinity`)
  whose mount namespace is the host's filesystem view: a private tmpfs on /srv with the host's data
  dir (a local temp dir) bind-mounted on /srv/remote, so remote paths differ from local ones;
- sshd (`/usr/sbin/sshd -D`) with its own generated host key and config, spawned inside the
  anchor's namespaces with `nsenter`; more daemons (podman later) are started the same way via
  `SSHHost.spawn`, and `SSHHost.bind` adds bind mounts (e.g. /var/lib/containers);
- client side files: an ed25519 identity, a known_hosts with the host key, and an ssh_config with a
  Host alias (`vsn2` by default), so tests can use `ssh://vsn2/srv/remote/...` through the config.

Everything is stopped by pid and removed in `stop()`, also when start-up fails half way. A run that
was SIGKILLed leaves a namespace behind; the next start reaps namespaces of this lab whose creating
pid is dead (only names with our prefix).

Use:  `with start_ssh_host() as host: ...`  or the pytest fixtures `ssh_host` (module scope) and
`fresh_ssh_host` (function scope).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.procs import run_checked as _sh
from tests.lab.procs import stop_process

NETNS_PREFIX = "miglab"
# 10.213.<k>.0/24: the private range this lab uses; only ever assigned to veth ends created here.
SUBNET_PREFIX = "10.213"
# Serialises subnet choice between concurrent test sessions on this machine.
LOCK_FILE = Path(tempfile.gettempdir()) / "migrator-lab-netns.lock"
SSHD = "/usr/sbin/sshd"
REMOTE_ROOT = "/srv/remote"
# Bounded waits (seconds): namespace processes settle in milliseconds, sshd binds in well under 1 s.
READY_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
STOP_TIMEOUT = 5.0

_counter = itertools.count(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(netns: str) -> list[int]:
    proc = _sh(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_netns(netns: str) -> None:
    """Kill what runs in one of OUR namespaces (processes this lab started and their children), then delete it."""
    deadline = time.monotonic() + STOP_TIMEOUT
    pids = _netns_pids(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while pids and time.monotonic() < deadline:
        pids = [p for p in _netns_pids(netns) if _pid_alive(p)]
        if pids:
            time.sleep(POLL_INTERVAL)
    _sh(["ip", "netns", "del", netns], check=False)


def reap_stale() -> None:
    """Delete namespaces `miglab-<pid>-<n>` (and their temp dirs) left by lab runs whose process no
    longer exists, e.g. a test run that was SIGKILLed."""
    for line in _sh(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NETNS_PREFIX}-(\d+)-\d+", name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_netns(name)
    for path in Path(tempfile.gettempdir()).glob(f"{NETNS_PREFIX}-*-*-*"):
        m = re.match(rf"{NETNS_PREFIX}-(\d+)-\d+-", path.name)
        if m and path.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _used_subnets() -> set[int]:
    out = _sh(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    return {int(m.group(1)) for m in re.finditer(rf"inet {re.escape(SUBNET_PREFIX)}\.(\d+)\.", out)}


def _keygen(path: Path, comment: str) -> str:
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return (path.with_name(path.name + ".pub")).read_text().strip()


def _wait_for_ssh_banner(address: str, port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=1.0) as s:
                s.settimeout(2.0)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"sshd on {address}:{port} not ready after {READY_TIMEOUT}s ({last}); log: "
                       f"{log.read_text(errors='replace')[-2000:]}")


@dataclass
class SSHHost:
    """A running lab host. Paths on the client side are local files; `remote_root` is the path as
    sshd sees it, `local_root` the same directory seen from the test process (for assertions)."""

    name: str
    netns: str
    address: str
    gateway: str  # our end of the veth, reachable from inside the host
    port: int
    alias: str
    workdir: Path
    identity_file: Path
    known_hosts_file: Path
    ssh_config_file: Path
    host_key_line: str  # known_hosts line for the host key ("<address> ssh-ed25519 AAAA...")
    remote_root: str = REMOTE_ROOT
    local_root: Path = Path()
    veth_host: str = ""
    anchor: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    # -- running things inside ----------------------------------------------------------------------

    def _enter(self) -> list[str]:
        assert self.anchor is not None, "host not started"
        return ["nsenter", "--target", str(self.anchor.pid), "--mount", "--net", "--"]

    def run(self, argv: list[str], *, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a command inside the host's network and mount namespaces; capture text output."""
        return _sh(self._enter() + list(argv), check=check, **kw)

    def spawn(self, argv: list[str], *, log_name: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a long-running process (a daemon in the foreground) inside the host; `stop()` ends it.
        Its stdout+stderr go to `<workdir>/<log_name>.log`. nsenter execs, so the Popen pid is the daemon's."""
        log = self.workdir / f"{log_name or Path(argv[0]).name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(self._enter() + list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        self.procs.append(proc)
        return proc

    def drop_ssh_sessions(self) -> None:
        """Kill this host's sshd session processes (a dropped connection), and only this host's: the pid
        namespace is shared, so a plain `pkill -f` would cut every lab host's sessions."""
        for pid in _netns_pids(self.netns):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"sshd: root"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def bind(self, source: str | Path, target: str) -> None:
        """Bind-mount a local directory on `target` in the host's private mount namespace. A missing
        `target` is created first: under /srv that is the host's private tmpfs; elsewhere (e.g.
        /var/lib/containers) prefer targets that already exist, since the root filesystem is shared."""
        self.run(["mkdir", "-p", target])
        self.run(["mount", "--bind", str(source), target])

    # -- client-side helpers ------------------------------------------------------------------------

    def url(self, path: str = "") -> str:
        """Store URL through the ssh_config alias, e.g. ssh://vsn2/srv/remote/backups."""
        return f"ssh://{self.alias}{self.remote_root}{('/' + path.strip('/')) if path else ''}"

    def store_options(self) -> dict[str, str]:
        """Options for migrator.storage.get_store: just the config file (it names key and known_hosts)."""
        return {"ssh_config_file": str(self.ssh_config_file)}

    def local(self, remote_path: str) -> Path:
        """Where a path under remote_root lives locally."""
        rel = os.path.relpath(remote_path, self.remote_root)
        assert not rel.startswith(".."), remote_path
        return self.local_root / rel

    # -- teardown -----------------------------------------------------------------------------------

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop every process started inside (by pid), remove the namespace and veth, delete files."""
        for proc in reversed(self.procs):
            stop_process(proc, STOP_TIMEOUT)
        self.procs.clear()
        # sshd session children (connections a test left open) live on after their parent: kill by netns.
        _kill_netns(self.netns)
        if self.anchor is not None:
            stop_process(self.anchor, STOP_TIMEOUT)
            self.anchor = None
        if self.veth_host:
            _sh(["ip", "link", "del", self.veth_host], check=False)  # normally gone with the netns
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _make_link(netns: str, veth_host: str, veth_ns: str) -> int:
    """Create the veth pair and pick a free 10.213.<k>.0/24; returns k."""
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = _used_subnets()
        start = os.getpid() % 250
        k = next((1 + (start + i) % 250 for i in range(250) if 1 + (start + i) % 250 not in used), None)
        if k is None:
            raise RuntimeError(f"no free {SUBNET_PREFIX}.<k>.0/24 left for the lab")
        _sh(["ip", "netns", "add", netns])
        _sh(["ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns])
        _sh(["ip", "link", "set", veth_ns, "netns", netns])
        _sh(["ip", "addr", "add", f"{SUBNET_PREFIX}.{k}.1/24", "dev", veth_host])
        _sh(["ip", "link", "set", veth_host, "up"])
    _sh(["ip", "-n", netns, "addr", "add", f"{SUBNET_PREFIX}.{k}.2/24", "dev", veth_ns])
    _sh(["ip", "-n", netns, "link", "set", veth_ns, "up"])
    _sh(["ip", "-n", netns, "link", "set", "lo", "up"])
    return k


def _start_anchor(netns: str) -> subprocess.Popen:
    # Not `ip netns exec`: it remounts /sys for the namespace, which drops /sys/fs/cgroup, and podman
    # (runc) inside the host needs the cgroup mounts. nsenter --net joins the netns and keeps /sys.
    anchor = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "nsenter", f"--net=/run/netns/{netns}", "--",
         "sleep", "infinity"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    own_mnt = os.readlink("/proc/self/ns/mnt")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if anchor.poll() is not None:
            raise RuntimeError(f"namespace anchor exited: {anchor.stderr.read().decode(errors='replace') if anchor.stderr else ''}")
        try:
            # Both execs (unshare -> nsenter -> sleep) are done once the pid runs `sleep`.
            comm = Path(f"/proc/{anchor.pid}/comm").read_text().strip()
            if comm == "sleep" and os.readlink(f"/proc/{anchor.pid}/ns/mnt") != own_mnt:
                return anchor
        except OSError:
            pass
        time.sleep(POLL_INTERVAL)
    stop_process(anchor, STOP_TIMEOUT)
    raise RuntimeError("namespace anchor did not start")


def _write_sshd_config(host: SSHHost, host_key: Path, authorized: Path) -> Path:
    cfg = host.workdir / "sshd_config"
    cfg.write_text(
        f"Port {host.port}\n"
        f"ListenAddress {host.address}\n"
        f"HostKey {host_key}\n"
        f"PidFile {host.workdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "UseDNS no\n"
        "MaxStartups 50\n"
        "MaxSessions 50\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )
    return cfg


@contextlib.contextmanager
def start_ssh_host(alias: str = "vsn2", port: int = 22) -> Iterator[SSHHost]:
    """Start a lab host and yield it; everything is torn down on exit (also after a failed start)."""
    if os.geteuid() != 0:
        pytest.skip("the SSH lab host needs root (network namespaces)")
    reap_stale()
    n = next(_counter)
    tag = f"{os.getpid()}-{n}"
    netns = f"{NETNS_PREFIX}-{tag}"
    short = f"{os.getpid() % 100000}{n}"[-9:]  # interface names are limited to 15 characters
    workdir = Path(tempfile.mkdtemp(prefix=f"miglab-{tag}-"))
    host = SSHHost(
        name=f"lab-{tag}", netns=netns, address="", gateway="", port=port, alias=alias, workdir=workdir,
        identity_file=workdir / "client_ed25519", known_hosts_file=workdir / "known_hosts",
        ssh_config_file=workdir / "ssh_config", host_key_line="", local_root=workdir / "remote",
        veth_host=f"mlh{short}",
    )
    try:
        host.local_root.mkdir(mode=0o755)
        host_key = workdir / "ssh_host_ed25519_key"
        host_pub = _keygen(host_key, f"{host.name}-hostkey")
        client_pub = _keygen(host.identity_file, f"{host.name}-client")
        authorized = workdir / "authorized_keys"
        authorized.write_text(client_pub + "\n")

        k = _make_link(netns, host.veth_host, f"mln{short}")
        host.address, host.gateway = f"{SUBNET_PREFIX}.{k}.2", f"{SUBNET_PREFIX}.{k}.1"
        host.anchor = _start_anchor(netns)

        # The host's filesystem view: a private /srv holding its data dir, sshd's privsep dir.
        host.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "miglab-srv", "/srv"])
        host.bind(host.local_root, host.remote_root)
        host.run(["mkdir", "-p", "/run/sshd"])

        keytype, keyb64 = host_pub.split()[:2]
        hostname = host.address if port == 22 else f"[{host.address}]:{port}"
        host.host_key_line = f"{hostname} {keytype} {keyb64}"
        host.known_hosts_file.write_text(host.host_key_line + "\n")
        host.ssh_config_file.write_text(
            f"Host {alias}\n"
            f"    HostName {host.address}\n"
            f"    Port {port}\n"
            "    User root\n"
            f"    IdentityFile {host.identity_file}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {host.known_hosts_file}\n"
            "    StrictHostKeyChecking yes\n"
        )
        cfg = _write_sshd_config(host, host_key, authorized)
        host.run([SSHD, "-t", "-f", str(cfg)])  # config errors show up here, with sshd's message
        sshd = host.spawn([SSHD, "-D", "-e", "-f", str(cfg)], log_name="sshd")
        _wait_for_ssh_banner(host.address, port, sshd, workdir / "sshd.log")
    except BaseException:
        host.stop()
        raise
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def ssh_host() -> Iterator[SSHHost]:
    """One lab SSH host shared by the tests of a module (alias `vsn2`)."""
    with start_ssh_host() as host:
        yield host


@pytest.fixture
def fresh_ssh_host() -> Iterator[SSHHost]:
    """A lab SSH host of its own for one test."""
    with start_ssh_host() as host:
        yield host
