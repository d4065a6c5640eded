"""Docker through the docker SDK: a local socket, or a remote daemon over TLS (tcp://host:2376).
Tested against podman's Docker-compatible API on the same socket."""

from __future__ import annotations

from pathlib import Path

import docker
import requests
from docker import errors as derr
from docker.types import Mount as DockerMount

from migrator.engine.base import ContainerEngine, ContainerInfo, ContainerSpec
from migrator.errors import EngineError, EngineUnreachable, ImageMissing

API_TIMEOUT = 120  # same reasoning as the podman engine: vfs-backed creates are slow


def _info(c) -> ContainerInfo:
    state = c.attrs.get("State") or {}
    labels = (c.attrs.get("Config") or {}).get("Labels") or {}
    image = (c.attrs.get("Config") or {}).get("Image") or ""
    return ContainerInfo(name=c.name, state=str(state.get("Status", c.status)).lower(), image=image,
                         labels=dict(labels), exit_code=state.get("ExitCode"))


def _binding(p):
    # An explicit 0.0.0.0 makes podman 4.3's netavark write DNAT rules for "-d 0.0.0.0/32", which never
    # match: bind-all must be the bare port number.
    return p.host_port if p.host_ip in ("", "0.0.0.0") else (p.host_ip, p.host_port)


class DockerEngine(ContainerEngine):
    def __init__(self, url: str, tls=None):
        self.url = url
        tls_config = None
        if tls is not None:
            tls_config = docker.tls.TLSConfig(client_cert=(tls.client_cert, tls.client_key),
                                              ca_cert=tls.ca_cert, verify=tls.verify)
        self.client = docker.DockerClient(base_url=url, tls=tls_config, timeout=API_TIMEOUT)

    def _wrap(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (requests.ConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise EngineUnreachable(f"docker at {self.url} does not answer ({what})") from exc
        except derr.ImageNotFound as exc:
            raise ImageMissing(f"{what}: image not found: {exc.explanation or exc}") from exc
        except derr.APIError as exc:
            raise EngineError(f"docker refused {what}: {exc.explanation or exc}") from exc
        except derr.DockerException as exc:
            raise EngineError(f"docker error during {what}: {exc}") from exc

    def ping(self) -> str:
        return self._wrap("version", self.client.version)["Version"]

    def get(self, name: str) -> ContainerInfo | None:
        try:
            return _info(self.client.containers.get(name))
        except derr.NotFound:
            return None
        except requests.ConnectionError as exc:
            raise EngineUnreachable(f"docker at {self.url} does not answer (inspect {name})") from exc

    def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return [_info(c) for c in self._wrap("list containers", self.client.containers.list, all=True, filters=filters)]

    def create(self, spec: ContainerSpec) -> None:
        kwargs = {
            "name": spec.name,
            "labels": spec.labels,
            "environment": spec.env,
            "mounts": [DockerMount(m.target, m.source, type="bind", read_only=m.read_only) for m in spec.mounts],
            "privileged": spec.privileged,
            "stop_signal": "SIGTERM",
        }
        if spec.command:
            kwargs["command"] = spec.command
        if spec.volumes_from:
            kwargs["volumes_from"] = spec.volumes_from
        if spec.ports:
            kwargs["ports"] = {f"{p.container_port}/{p.protocol}": _binding(p) for p in spec.ports}
        if spec.network:
            kwargs["network"] = spec.network
            if spec.aliases:
                kwargs["networking_config"] = {
                    spec.network: self.client.api.create_endpoint_config(aliases=list(spec.aliases))}
        if spec.network_from:
            kwargs["network_mode"] = f"container:{spec.network_from}"
        if spec.stop_signal:
            kwargs["stop_signal"] = spec.stop_signal
        self._wrap(f"create {spec.name}", self.client.containers.create, spec.image, **kwargs)

    def _container(self, name: str):
        return self._wrap(f"inspect {name}", self.client.containers.get, name)

    def start(self, name: str) -> None:
        self._wrap(f"start {name}", self._container(name).start)

    def stop(self, name: str, timeout: int = 10) -> None:
        self._wrap(f"stop {name}", self._container(name).stop, timeout=timeout)

    def remove(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True, v=True)
        except derr.NotFound:
            return
        except requests.ConnectionError as exc:
            raise EngineUnreachable(f"docker at {self.url} does not answer (remove {name})") from exc
        except derr.APIError as exc:
            raise EngineError(f"docker refused remove {name}: {exc.explanation or exc}") from exc

    def rename(self, name: str, new_name: str) -> None:
        self._wrap(f"rename {name}", self._container(name).rename, new_name)

    def exec(self, name: str, argv: list[str], timeout: float = 60) -> tuple[int, str]:
        result = self._wrap(f"exec in {name}", self._container(name).exec_run, argv)
        return int(result.exit_code if result.exit_code is not None else 1), (result.output or b"").decode(errors="replace")

    def logs(self, name: str, tail: int = 20) -> str:
        try:
            return self.client.containers.get(name).logs(tail=tail).decode(errors="replace").strip()
        except Exception:  # best-effort context for an error message
            return ""

    def image_exists(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
            return True
        except derr.ImageNotFound:
            return False
        except requests.ConnectionError as exc:
            raise EngineUnreachable(f"docker at {self.url} does not answer (image {ref})") from exc

    def pull(self, ref: str) -> None:
        self._wrap(f"pull {ref}", self.client.images.pull, ref)

    def save_image(self, ref: str, path: Path) -> None:
        image = self._wrap(f"inspect image {ref}", self.client.images.get, ref)
        with open(path, "wb") as fh:
            for chunk in self._wrap(f"save {ref}", image.save, named=ref):  # True would name it tags[0]
                fh.write(chunk)

    def load_image(self, path: Path) -> None:
        with open(path, "rb") as fh:
            self._wrap(f"load {path.name}", self.client.images.load, fh)

    def ensure_network(self, name: str, labels: dict[str, str], subnet: str | None = None) -> None:
        if self._wrap(f"list networks {name}", self.client.networks.list, names=[name]):
            return
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]) if subnet else None
        self._wrap(f"create network {name}", self.client.networks.create, name, labels=labels, ipam=ipam)

    def remove_network(self, name: str) -> None:
        for net in self._wrap(f"list networks {name}", self.client.networks.list, names=[name]):
            if net.name == name:
                self._wrap(f"remove network {name}", net.remove)

    def close(self) -> None:
        self.client.close()
