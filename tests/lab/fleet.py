"""Lab: a fleet of VSNs for the Ansible playbooks — several SSH lab hosts (tests/lab/sshhost.py), each a
whole VSN of its own, driven by a real `ansible-playbook` over real SSH.

Owns: building and tearing down that fleet, its inventory, and running playbooks against it. Each host:
- is an `SSHHost` (own network namespace, own mount namespace, sshd with its own host key);
- sees the machine's root filesystem through *private overlays* on /etc, /opt, /root, /usr/local and
  /var/lib (lower: the real directory, upper: a private dir of this host), so everything provisioning
  writes (/opt/migrator, /usr/local/bin/migrator, /etc/migrator, /etc/cron.d, /var/lib/migrator,
  /root/.aws, /root/.ssh, Ansible's ~/.ansible/tmp) lands in that host's private upper dir and the
  real machine's files are never touched. The lab image store (/var/lib/migrator-lab) is moved back on
  top of the /var/lib overlay so the shared images stay the real, shared ones;
- has a private /run/migrator (the Host containers' socket dirs are keyed by state dir and Host name,
  which are the same on every host: on a shared /run two hosts would collide);
- runs its own podman engine (`lab/vsn.sh start`) on the *common* VSN path `VSN_PATH`, a private dir
  bind-mounted there, so one plan shape (socket, data root) works on every host, like identical VMs.

Network: host i reaches the controller (this machine) on its veth gateway; the S3 server (moto) listens
on host 0's gateway address, and every other host has a /32 route to it through its own gateway (no IP
forwarding is involved: the packet is addressed to this machine). Hosts reach each other (for
`migrator move`) through a direct veth pair per pair of hosts with /32 routes to each other's address:
no new subnet, no change outside the namespaces. Addresses are 10.213.<k>.0/24, only on lab veths.

Use: `with start_fleet(["vsn-a", "vsn-b"]) as fleet: fleet.playbook("provision-vsn.yml", ...)`.
Everything (processes by pid, namespaces, veths, SSH control masters, private dirs) goes on exit.
MIGRATOR_FLEET_LOGS=DIR keeps every playbook's full output in DIR.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.sshhost import SSHHost, _sh, start_ssh_host
from tests.lab.vsn import LAB, REPO

PLAYBOOKS = REPO / "playbooks"
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
# Every host's VSN dir as the host sees it (short: DIR/inner/podman.sock must stay under 108 bytes).
VSN_PATH = "/srv/vsn"
# Directories provisioning writes into, overlaid privately per host (they all exist on the machine).
OVERLAID = ("/etc", "/opt", "/root", "/usr/local", "/var/lib")
# Shared lab state that must stay shared under the /var/lib overlay: the read-only lab image store.
LAB_STORE = "/var/lib/migrator-lab"
# migrator's own state and config dirs: empty and private on every lab VSN, whatever the machine holds.
OPAQUE = ("/var/lib/migrator", "/etc/migrator")
# root's shell start-up files: a fresh VSN has Debian's defaults, not this machine's (here ~/.bashrc runs
# `pyenv init`, whose rehash waits a minute on a lock every SSH command once a dropped session left it).
SHELL_INIT = ("/root/.bashrc", "/root/.profile", "/root/.bash_profile", "/root/.bash_login")
RUNTIME_ROOT = "/run/migrator"
# Where built wheelhouses are cached between runs (like the lab images): keyed by source hash inside.
WHEELHOUSE_CACHE = Path(os.environ.get("MIGRATOR_LAB_CACHE", "/var/cache/migrator-lab")) / "wheelhouse"
S3_REGION = "us-east-1"
# One playbook run: provisioning installs ~40 wheels per host; everything else takes seconds.
PLAYBOOK_TIMEOUT = 600
RECAP_RE = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                      r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
                      r"\s+ignored=(?P<ignored>\d+)", re.M)


@dataclass
class FleetHost:
    """One VSN of the fleet: its SSH lab host plus the private dirs behind its overlays and VSN dir."""

    name: str
    ssh: SSHHost
    private: Path  # this host's private dirs on the machine (overlay uppers, VSN dir, /run/migrator)

    @property
    def address(self) -> str:
        return self.ssh.address

    @property
    def vsn_dir(self) -> Path:
        """The host's VSN dir (its VSN_PATH) seen from the test process."""
        return self.private / "vsn"

    def upper(self, path: str) -> Path:
        """Where a file that the host wrote under one of the OVERLAID dirs lives on the machine."""
        top = next(d for d in OVERLAID if path == d or path.startswith(d + "/"))
        return self.private / "ov" / top.strip("/").replace("/", "_") / "upper" / os.path.relpath(path, top)

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.ssh.run(argv, check=check, timeout=timeout)

    def migrator(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """The migrator provisioning installed, run inside the host as an operator would."""
        return self.run(["/usr/local/bin/migrator", *args], check=check)

    def migrator_json(self, *args: str) -> dict:
        proc = self.migrator(*args, "--json")
        return json.loads(proc.stdout)

    def containers(self) -> dict[str, str]:
        proc = self.run(["podman", "--url", f"unix://{VSN_PATH}/podman.sock", "ps", "-a", "--format", "json"])
        return {row["Names"][0]: row["State"] for row in json.loads(proc.stdout or "[]")}

    def http_get(self, port: int) -> str:
        code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/',timeout=10).read().decode())"
        return self.run(["/usr/bin/python3", "-c", code]).stdout.strip()


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]
    seconds: float

    def host(self, name: str) -> dict[str, int]:
        return self.recap.get(name, {})


@dataclass
class Fleet:
    hosts: list[FleetHost]
    workdir: Path  # short path: SSH control sockets live here
    known_hosts: Path
    s3_endpoint: str = ""
    bucket: str = ""
    source: Path = Path()  # frozen copy of the checkout the wheelhouse is built from
    runs: list[tuple[str, float]] = field(default_factory=list)  # (playbook, seconds), for the report

    def __getitem__(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)

    # -- inventory -----------------------------------------------------------------------------------

    def host_vars(self, host: FleetHost) -> dict:
        """Connection and lab facts of one host (a real VSN would have /etc/ssh and ~/.ssh defaults)."""
        return {
            "ansible_host": host.address,
            "ansible_ssh_private_key_file": str(host.ssh.identity_file),
            # sshd of the lab reads its authorized keys and host key from its workdir, not ~/.ssh, /etc/ssh.
            "migrator_authorized_keys_file": str(host.ssh.workdir / "authorized_keys"),
            "migrator_ssh_host_key_file": str(host.ssh.workdir / "ssh_host_ed25519_key.pub"),
        }

    def write_inventory(self, path: Path, groups: dict[str, list[str]], host_vars: dict[str, dict] | None = None,
                        group_vars: dict | None = None) -> Path:
        """A YAML inventory (written as JSON, which is YAML): groups of hosts under `fleet`, lab connection
        settings, and extra per-host vars (plans, secrets). Host keys are checked against the lab's
        known_hosts, never skipped."""
        children = {}
        for group, names in groups.items():
            children[group] = {"hosts": {n: {**self.host_vars(self[n]), **(host_vars or {}).get(n, {})} for n in names}}
        inventory = {"fleet": {
            "children": children,
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
                                           "-o IdentitiesOnly=yes -o GlobalKnownHostsFile=/dev/null",
                **(group_vars or {}),
            },
        }}
        path.write_text(json.dumps(inventory, indent=2))
        return path

    # -- running playbooks ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AWS_"))}
        env.update({
            "ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg"),
            # Ansible's own files (control sockets, local temp) stay in this fleet's dir, not in ~/.ansible.
            "ANSIBLE_HOME": str(self.workdir / "ah"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ah" / "tmp"),
            # also the controller-side (delegate_to: localhost) tasks: not in ~/.ansible either
            "ANSIBLE_REMOTE_TMP": str(self.workdir / "ah" / "remote-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_TIMEOUT": "60",  # SSH connect: the lab machine may be busy with other suites
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        })
        return env

    def playbook(self, name: str, inventory: Path, extra_vars: dict | None = None, *args: str) -> PlaybookRun:
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(PLAYBOOKS / name), *args]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        (self.workdir / "logs").mkdir(exist_ok=True)
        log = self.workdir / "logs" / f"{len(self.runs) + 1:02d}-{name}.log"
        started = time.monotonic()
        # Output goes straight to the log, so a run that hangs still shows how far it got.
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT, cwd=PLAYBOOKS,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(PLAYBOOK_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: ansible-playbook and its workers
                proc.wait()
                raise AssertionError(f"{name} did not finish in {PLAYBOOK_TIMEOUT}s; output so far:\n"
                                     f"{log.read_text()[-6000:]}") from None
        seconds = round(time.monotonic() - started, 1)
        self.runs.append((name, seconds))
        output = log.read_text()
        recap = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
                 for m in RECAP_RE.finditer(output.split("PLAY RECAP", 1)[-1])}
        return PlaybookRun(proc.returncode, output, recap, seconds)

    # -- teardown ------------------------------------------------------------------------------------

    def close_ssh_masters(self) -> None:
        """End the ControlPersist masters Ansible left (ours only: by their control socket)."""
        for sock in (self.workdir / "cp").glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "fleet-host"], capture_output=True,
                           timeout=10, check=False)


def _setup_private_root(host: SSHHost, private: Path) -> None:
    """Inside the host's mount namespace: private overlays over OVERLAID, the shared lab image store put back
    on top, a private /run/migrator, and the private VSN dir on VSN_PATH."""
    keep = "/srv/.lab-store"
    host.run(["mkdir", "-p", keep])
    host.run(["mount", "--bind", LAB_STORE, keep])
    for top in OVERLAID:
        base = private / "ov" / top.strip("/").replace("/", "_")
        (base / "upper").mkdir(parents=True)
        (base / "work").mkdir()
        # The overlay shows the machine's own files underneath: migrator state or config left on this
        # machine (e.g. by `make demo`) must not appear on a lab VSN. An opaque dir in the upper layer
        # hides what is below it, and the VSN's own writes still land in the upper layer.
        for own in OPAQUE:
            if own.startswith(top + "/"):
                hidden = base / "upper" / own[len(top) + 1:]
                hidden.mkdir(parents=True, mode=0o700)
                os.setxattr(hidden, "trusted.overlay.opaque", b"y")
        for init in SHELL_INIT:
            if init.startswith(top + "/"):
                (base / "upper" / init[len(top) + 1:]).write_text("# lab VSN: no shell start-up of the machine\n")
        host.run(["mount", "-t", "overlay", "overlay", "-o",
                  f"lowerdir={top},upperdir={base / 'upper'},workdir={base / 'work'}", top])
    host.run(["mount", "--move", keep, LAB_STORE])
    (private / "run-migrator").mkdir(mode=0o755)
    host.run(["mount", "--bind", str(private / "run-migrator"), RUNTIME_ROOT])
    (private / "vsn").mkdir()
    host.bind(private / "vsn", VSN_PATH)


def _link_pair(a: SSHHost, b: SSHHost, name_a: str, name_b: str) -> None:
    """A direct veth between two hosts' namespaces; each routes the other's address (/32) over it."""
    _sh(["ip", "link", "del", name_a], check=False)  # a leftover of a killed run (normally gone with its netns)
    _sh(["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b])
    _sh(["ip", "link", "set", name_a, "netns", a.netns])
    _sh(["ip", "link", "set", name_b, "netns", b.netns])
    for host, dev, other in ((a, name_a, b), (b, name_b, a)):
        _sh(["ip", "-n", host.netns, "link", "set", dev, "up"])
        _sh(["ip", "-n", host.netns, "route", "add", f"{other.address}/32", "dev", dev])


def _start_s3(fleet: Fleet, stack: contextlib.ExitStack) -> None:
    """moto on host 0's gateway address (reachable from every host, no wider), one bucket for the fleet."""
    from moto.server import ThreadedMotoServer

    listen = fleet.hosts[0].ssh.gateway
    server = ThreadedMotoServer(ip_address=listen, port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    fleet.s3_endpoint = f"http://{host}:{port}"
    for other in fleet.hosts[1:]:
        _sh(["ip", "-n", other.ssh.netns, "route", "add", f"{listen}/32", "via", other.ssh.gateway])
    fleet.bucket = f"fleet-{os.getpid()}"
    s3_client(fleet.s3_endpoint).create_bucket(Bucket=fleet.bucket)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def snapshot_source(dest: Path) -> Path:
    """A frozen copy of what the wheel is built from, so one test run installs one build even while the
    checkout is being edited (the playbook would rightly reinstall on every change)."""
    dest.mkdir()
    shutil.copy2(REPO / "pyproject.toml", dest)
    shutil.copy2(REPO / "README.md", dest)
    shutil.copytree(REPO / "migrator", dest / "migrator", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@contextlib.contextmanager
def start_fleet(names: list[str]) -> Iterator[Fleet]:
    """Start one lab VSN per name (in parallel where it matters little: each takes ~1 s), mesh them, start
    the shared S3 server; yield the Fleet; tear everything down on exit, also after a failed start."""
    workdir = Path(tempfile.mkdtemp(prefix="fl", dir="/tmp"))
    os.makedirs(RUNTIME_ROOT, mode=0o755, exist_ok=True)  # mount point for the hosts' private /run/migrator
    fleet = Fleet(hosts=[], workdir=workdir, known_hosts=workdir / "known_hosts")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack.callback(_keep_logs, workdir / "logs")
        fleet.source = snapshot_source(workdir / "src")
        for name in names:
            ssh = stack.enter_context(start_ssh_host(alias=name))
            host = FleetHost(name=name, ssh=ssh, private=workdir / name)
            host.private.mkdir()
            fleet.hosts.append(host)
            _setup_private_root(ssh, host.private)
            stack.callback(_stop_vsn, host)
            host.run([str(LAB / "vsn.sh"), "start", VSN_PATH])
        fleet.known_hosts.write_text("".join(h.ssh.host_key_line + "\n" for h in fleet.hosts))
        tag = os.getpid() % 10000
        for i, a in enumerate(fleet.hosts):
            for j, b in enumerate(fleet.hosts[i + 1:], start=i + 1):
                _link_pair(a.ssh, b.ssh, f"mfl{tag}x{i}{j}a", f"mfl{tag}x{i}{j}b")
        _start_s3(fleet, stack)
        stack.callback(fleet.close_ssh_masters)  # first on the way out, while the hosts still answer
        yield fleet


def _keep_logs(logs: Path) -> None:
    """With MIGRATOR_FLEET_LOGS=DIR, every playbook's full output is kept there (for debugging)."""
    keep = os.environ.get("MIGRATOR_FLEET_LOGS")
    if keep and logs.is_dir():
        shutil.copytree(logs, Path(keep) / logs.parent.name, dirs_exist_ok=True)


def _stop_vsn(host: FleetHost) -> None:
    """Stop the host's engine (containers, podman service, subnet claim) and unmount what it mounted under
    the VSN dir; the mount namespace itself goes with the host's processes."""
    host.run([str(LAB / "vsn.sh"), "stop", VSN_PATH], check=False, timeout=120)
    host.run(["bash", "-c", f"grep -o ' {VSN_PATH}/[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l"],
             check=False)
