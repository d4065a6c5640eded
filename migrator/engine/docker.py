"""Docker through the docker SDK: a local socket, or a remote daemon over TLS (tcp://host:2376).

Tested against a real Docker Engine (dockerd 20.10 with containerd) and podman's Docker-compatible API.
A tcp:// daemon is only ever spoken to over TLS with the plan's CA and client certificate: a handshake that
fails (wrong CA, a client certificate the daemon refuses, a daemon without TLS) is EngineRefused (exit 8),
never retried in plain TCP."""

from __future__ import annotations

from pathlib import Path

import docker
import requests
from docker import errors as derr
from docker.types import Mount as DockerMount

from migrator.engine.base import ContainerEngine, ContainerInfo, ContainerSpec
from migrator.errors import EngineError, EngineRefused, EngineUnreachable, ImageMissing

API_TIMEOUT = 120  # same reasoning as the podman engine: vfs-backed creates are slow
# What OpenSSL says when the peer is not speaking TLS at all (a plain-TCP daemon on the port).
_NOT_TLS = ("wrong version number", "record layer failure", "unknown protocol", "packet length too long",
            "http request")
# ... when the daemon refused our client certificate (TLS 1.2 alerts, or TLS 1.3's after the handshake).
_CLIENT_REFUSED = ("certificate required", "bad certificate", "unknown ca", "certificate unknown",
                   "access denied", "handshake failure")


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


def _tls_config(url: str, tls):
    """The client TLS settings, refusing (exit 8) a tcp:// daemon without them or a certificate file that
    is not there: the SDK would otherwise fail later with a message that names neither."""
    if tls is None:
        if url.startswith(("tcp://", "https://", "http://")):
            raise EngineRefused(f"docker at {url}: refusing to talk to a TCP daemon without TLS (vsn.tls)")
        return None
    for field_name in ("ca_cert", "client_cert", "client_key"):
        path = getattr(tls, field_name)
        if not Path(path).is_file():
            raise EngineRefused(f"docker at {url}: vsn.tls.{field_name} {path} is not a readable file")
    try:
        return docker.tls.TLSConfig(client_cert=(tls.client_cert, tls.client_key), ca_cert=tls.ca_cert,
                                    verify=tls.verify)
    except derr.TLSParameterError as exc:
        raise EngineRefused(f"docker at {url}: bad TLS settings: {exc}") from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error chain, as text (lower case), for classification."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        for arg in getattr(exc, "args", ()):
            if isinstance(arg, BaseException):
                parts.append(str(arg))
                reason = getattr(arg, "reason", None)
                if isinstance(reason, BaseException):
                    parts.append(str(reason))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts).lower()


class DockerEngine(ContainerEngine):
    def __init__(self, url: str, tls=None):
        self.url = url
        self.tls = tls is not None
        tls_config = _tls_config(url, tls)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment override the session's CA:
        # the plan's pinned CA would silently give way to a system bundle. So the sessions ignore the
        # environment (trust_env), and the API version is asked for here rather than by the SDK's "auto",
        # which would ask before trust_env can be switched off.
        try:
            probe = docker.APIClient(base_url=url, tls=tls_config, timeout=API_TIMEOUT,
                                     version=docker.constants.MINIMUM_DOCKER_API_VERSION)
            probe.trust_env = False
            try:
                api_version = probe.version(api_version=False)["ApiVersion"]
            finally:
                probe.close()
            self.client = docker.DockerClient(base_url=url, tls=tls_config, timeout=API_TIMEOUT, version=api_version)
        except (derr.DockerException, requests.ConnectionError) as exc:
            raise self._unreachable("version", exc) from exc
        self.client.api.trust_env = False

    def _unreachable(self, what: str, exc: BaseException) -> Exception:
        """Say why the daemon cannot be reached: TLS refusals (exit 8) apart from a daemon that is down,
        a socket we may not open, or one that is missing (exit 4, with what to do)."""
        cause = _root_cause(exc)
        if self.tls:
            if "certificate verify failed" in cause:
                return EngineRefused(f"docker at {self.url}: the daemon's certificate is not signed by vsn.tls.ca_cert "
                                     f"or does not name this host ({what})")
            if any(s in cause for s in _NOT_TLS):
                return EngineRefused(f"docker at {self.url} does not speak TLS (a plain-TCP daemon?): refusing to "
                                     f"send the API over an unencrypted connection ({what})")
            if any(s in cause for s in _CLIENT_REFUSED) or isinstance(exc, requests.exceptions.SSLError) \
                    or "connection reset" in cause or "connection aborted" in cause or "eof occurred" in cause:
                return EngineRefused(f"docker at {self.url} refused the TLS connection: our client certificate "
                                     f"(vsn.tls.client_cert) is not signed by the CA it trusts ({what})")
        sock = self.url[len("unix://"):] if self.url.startswith("unix://") else None
        if sock and "permission denied" in cause:
            return EngineUnreachable(f"docker at {self.url}: permission denied on the socket ({what})",
                                     hint="run migrator as root (or as a member of the socket's group, e.g. docker)")
        if sock and not Path(sock).exists():
            return EngineUnreachable(f"docker at {self.url}: no socket at {sock}, the daemon is not running ({what})",
                                     hint="start dockerd (e.g. `systemctl start docker`), or fix vsn.socket")
        return EngineUnreachable(f"docker at {self.url} does not answer ({what})",
                                 hint="start dockerd (e.g. `systemctl start docker`); `migrator check` says more")

    def _wrap(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (requests.ConnectionError, FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise self._unreachable(what, exc) from exc
        except derr.ImageNotFound as exc:
            raise ImageMissing(f"{what}: image not found: {exc.explanation or exc}") from exc
        except derr.APIError as exc:
            raise EngineError(f"docker refused {what}: {exc.explanation or exc}") from exc
        except derr.DockerException as exc:
            raise EngineError(f"docker error during {what}: {exc}") from exc

    def ping(self) -> str:
        return self._wrap("version", self.client.version)["Version"]

    def facts(self) -> dict[str, str]:
        info = self._wrap("info", self.client.info)
        return {"storage_driver": str(info.get("Driver", "")), "cgroup_driver": str(info.get("CgroupDriver", "")),
                "cgroup_version": str(info.get("CgroupVersion", "")), "server": "docker"}

    def get(self, name: str) -> ContainerInfo | None:
        try:
            return _info(self.client.containers.get(name))
        except derr.NotFound:
            return None
        except requests.ConnectionError as exc:
            raise self._unreachable(f"inspect {name}", exc) from exc

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
        if spec.stop_signal:  # else the image's (PostgreSQL's lab image stops on SIGINT: a fast shutdown)
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
            raise self._unreachable(f"remove {name}", exc) from exc
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
            raise self._unreachable(f"image {ref}", exc) from exc

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

    def exec_api(self):
        return self.client.api

    def close(self) -> None:
        self.client.close()
