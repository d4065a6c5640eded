"""A second VSN for `move` tests: the SSH lab host (own network and mount namespaces, sshd) with its own
podman engine, storage, data root and migrator state. Inside its mount namespace the target's own VSN
dir is bind-mounted over the source VSN's path, so the *same* plan (engine socket, data root) resolves to
the target's engine and data there — exactly like two real machines with identical plans."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lab.sshhost import SSHHost, start_ssh_host
from tests.lab.vsn import LAB, PodmanVSN


@dataclass
class TargetVSN:
    host: SSHHost
    path: str  # the VSN dir as the target sees it (same as the source's)
    local: Path  # the same dir seen from the test process

    @property
    def data_root(self) -> Path:
        return self.local / "data"

    @property
    def state_dir(self) -> Path:
        return self.local / "state"

    def remote_migrator(self, installed: bool = False) -> str:
        """How the source runs migrator on the target (through sshd's minimal environment). By default this
        checkout through the test venv's Python (the filesystem is shared); `installed=True`: a plain
        `migrator` found only in `<VSN dir>/bin` (where `move --install --install-link` puts it), so the
        target has none until it is installed."""
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env = [f"MIGRATOR_STATE_DIR={self.path}/state", f"MIGRATOR_RUNTIME_DIR={self.path}/rt",
               f"CONTAINERS_CONF={self.path}/containers.conf", f"CONTAINERS_STORAGE_CONF={self.path}/storage.conf",
               f"PATH={self.path}/bin:{path}" if installed else f"PATH={path}"]
        return shlex.join(["env", *env, *(["migrator"] if installed else [sys.executable, "-m", "migrator"])])

    def podman(self, *args: str, check: bool = True):
        return self.host.run(["env", f"CONTAINERS_CONF={self.path}/containers.conf",
                              f"CONTAINERS_STORAGE_CONF={self.path}/storage.conf", "podman", "--url",
                              f"unix://{self.path}/podman.sock", *args], check=check)

    def containers(self) -> dict[str, str]:
        rows = json.loads(self.podman("ps", "-a", "--format", "json").stdout or "[]")
        return {row["Names"][0]: row["State"] for row in rows}

    def http_get(self, port: int) -> str:
        code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/',timeout=10).read().decode())"
        return self.host.run([sys.executable, "-c", code]).stdout.strip()

    def move_args(self, installed: bool = False) -> list[str]:
        return ["--to", self.host.alias, "--ssh-config", str(self.host.ssh_config_file),
                "--remote-migrator", self.remote_migrator(installed)]


@contextmanager
def start_target(source: PodmanVSN) -> Iterator[TargetVSN]:
    local = Path(tempfile.mkdtemp(prefix="mt", dir="/tmp"))
    with start_ssh_host() as host:
        target = TargetVSN(host=host, path=str(source.base), local=local)
        host.bind(local, target.path)
        host.run([str(LAB / "vsn.sh"), "start", target.path])
        try:
            yield target
        finally:
            host.run([str(LAB / "vsn.sh"), "stop", target.path], check=False)
            host.run(["bash", "-c", f"grep -o ' {target.path}/[^ ]*' /proc/self/mounts | sort -r | "
                                    f"xargs -r -n1 umount -l"], check=False)
    import shutil

    shutil.rmtree(local, ignore_errors=True)
