"""Podman through podman-py on the engine's REST socket (also the Host container's inner socket)."""

from __future__ import annotations

import signal
from pathlib import Path

import requests
from podman import PodmanClient
from podman import api as podman_api
from podman import errors as perr

from migrator.engine.base import ContainerEngine, ContainerInfo, ContainerSpec
from migrator.errors import EngineError, EngineUnreachable, ImageMissing

# Seconds one API call may take before we call the engine hung: creating a container on vfs storage
# copies the image, which takes a few seconds on a slow disk.
API_TIMEOUT = 120


def _connection_failed(exc: BaseException) -> bool:
    """podman-py 5 reports a dead socket as APIError("GET operation failed") chained from the
    requests/socket error; tell that apart from a refusal by the engine."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, (requests.ConnectionError, ConnectionError, FileNotFoundError)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _info(c) -> ContainerInfo:
    attrs = c.attrs
    state = attrs.get("State")
    status = state.get("Status") if isinstance(state, dict) else (state or c.status)
    exit_code = state.get("ExitCode") if isinstance(state, dict) else attrs.get("ExitCode")
    image = attrs.get("ImageName") or attrs.get("Image") or ""
    labels = attrs.get("Labels") or (attrs.get("Config") or {}).get("Labels") or {}
    return ContainerInfo(name=c.name, state=str(status).lower(), image=image, labels=dict(labels), exit_code=exit_code)


def _binding(p):
    # An explicit 0.0.0.0 makes podman 4.3's netavark write DNAT rules for "-d 0.0.0.0/32", which never
    # match: bind-all must be the bare port number.
    return p.host_port if p.host_ip in ("", "0.0.0.0") else (p.host_ip, p.host_port)


class PodmanEngine(ContainerEngine):
    def __init__(self, url: str):
        self.url = url
        self.client = PodmanClient(base_url=url, timeout=API_TIMEOUT)

    def _wrap(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (requests.ConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise EngineUnreachable(f"podman at {self.url} does not answer ({what})") from exc
        except perr.ImageNotFound as exc:
            raise ImageMissing(f"{what}: image not found: {exc.explanation or exc}") from exc
        except perr.APIError as exc:
            if _connection_failed(exc):
                raise EngineUnreachable(f"podman at {self.url} does not answer ({what})") from exc
            raise EngineError(f"podman refused {what}: {exc.explanation or exc}") from exc
        except perr.PodmanError as exc:
            raise EngineError(f"podman error during {what}: {exc}") from exc

    def ping(self) -> str:
        return self._wrap("version", self.client.version)["Version"]

    def get(self, name: str) -> ContainerInfo | None:
        try:
            return _info(self._wrap(f"inspect {name}", self.client.containers.get, name))
        except EngineError as exc:
            if isinstance(exc.__cause__, perr.NotFound):
                return None
            raise

    def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        # podman-py encodes a list of label filters so that podman 4.3 matches nothing: filter on one label
        # server-side and check the others here.
        items = list(labels.items())
        filters = {"label": f"{items[0][0]}={items[0][1]}"} if items else {}
        found = [_info(c) for c in self._wrap("list containers", self.client.containers.list, all=True, filters=filters)]
        return [c for c in found if all(c.labels.get(k) == v for k, v in items)]

    def create(self, spec: ContainerSpec) -> None:
        kwargs = {
            "name": spec.name,
            "labels": spec.labels,
            "environment": spec.env,
            "mounts": [{"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
                       for m in spec.mounts],
            "privileged": spec.privileged,
            "stop_timeout": spec.stop_timeout,
        }
        if spec.command:
            kwargs["command"] = spec.command
        if spec.volumes_from:
            kwargs["volumes_from"] = spec.volumes_from
        if spec.ports:
            kwargs["ports"] = {f"{p.container_port}/{p.protocol}": _binding(p) for p in spec.ports}
        if spec.network:
            kwargs["networks"] = {spec.network: {"aliases": list(spec.aliases)} if spec.aliases else {}}
        if spec.stop_signal:
            kwargs["stop_signal"] = signal.Signals[spec.stop_signal].value  # podman's API takes the number
        if spec.network_from:
            self._wrap(f"create {spec.name}", self._create_in_netns_of, spec.network_from, spec.image, kwargs)
            return
        self._wrap(f"create {spec.name}", self.client.containers.create, spec.image, **kwargs)

    def _create_in_netns_of(self, holder: str, image: str, kwargs: dict) -> None:
        """containers.create for a container joining `holder`'s network namespace: podman-py 5 has no keyword
        for a "container:" netns (its network_mode passes the whole string as the mode, which podman refuses),
        so the same payload is posted with netns set."""
        payload = self.client.containers._render_payload({"image": image, **kwargs})
        payload["netns"] = {"nsmode": "container", "value": holder}
        response = self.client.api.post("/containers/create", headers={"content-type": "application/json"},
                                        data=podman_api.prepare_body(payload))
        response.raise_for_status(not_found=perr.ImageNotFound)

    def _container(self, name: str):
        return self._wrap(f"inspect {name}", self.client.containers.get, name)

    def start(self, name: str) -> None:
        c = self._container(name)
        self._wrap(f"start {name}", c.start)

    def stop(self, name: str, timeout: int = 10) -> None:
        c = self._container(name)
        self._wrap(f"stop {name}", c.stop, timeout=timeout)

    def remove(self, name: str) -> None:
        try:
            self.client.containers.remove(name, force=True, v=True)
        except perr.NotFound:
            return
        except (requests.ConnectionError, FileNotFoundError) as exc:
            raise EngineUnreachable(f"podman at {self.url} does not answer (remove {name})") from exc
        except perr.APIError as exc:
            if _connection_failed(exc):
                raise EngineUnreachable(f"podman at {self.url} does not answer (remove {name})") from exc
            raise EngineError(f"podman refused remove {name}: {exc.explanation or exc}") from exc

    def rename(self, name: str, new_name: str) -> None:
        c = self._container(name)
        self._wrap(f"rename {name}", c.rename, new_name)

    def exec(self, name: str, argv: list[str], timeout: float = 60) -> tuple[int, str]:
        c = self._container(name)
        code, output = self._wrap(f"exec in {name}", c.exec_run, argv, demux=True)
        out, err = output if isinstance(output, tuple) else (output, b"")
        return int(code if code is not None else 1), ((out or b"") + (err or b"")).decode(errors="replace")

    def logs(self, name: str, tail: int = 20) -> str:
        try:
            c = self.client.containers.get(name)
            chunks = c.logs(stdout=True, stderr=True, tail=tail, stream=False)
            data = chunks if isinstance(chunks, bytes) else b"".join(chunks)
            return data.decode(errors="replace").strip()
        except Exception:  # logs are best-effort context for an error message
            return ""

    def image_exists(self, ref: str) -> bool:
        return bool(self._wrap(f"image exists {ref}", self.client.images.exists, ref))

    def pull(self, ref: str) -> None:
        self._wrap(f"pull {ref}", self.client.images.pull, ref)

    def save_image(self, ref: str, path: Path) -> None:
        image = self._wrap(f"inspect image {ref}", self.client.images.get, ref)
        with open(path, "wb") as fh:
            for chunk in self._wrap(f"save {ref}", image.save, named=ref):
                fh.write(chunk)

    def load_image(self, path: Path) -> None:
        self._wrap(f"load {path.name}", lambda: list(self.client.images.load(file_path=str(path))))

    def ensure_network(self, name: str, labels: dict[str, str], subnet: str | None = None) -> None:
        if self._wrap(f"network exists {name}", self.client.networks.exists, name):
            return
        extra = {"subnets": [{"subnet": subnet}]} if subnet else {}
        self._wrap(f"create network {name}", self.client.networks.create, name, labels=labels, **extra)

    def remove_network(self, name: str) -> None:
        if self._wrap(f"network exists {name}", self.client.networks.exists, name):
            self._wrap(f"remove network {name}", self.client.networks.remove, name, force=True)

    def exec_api(self):
        import docker  # the Docker-compatible endpoints: podman-py cannot attach an exec's stdin

        if getattr(self, "_exec_api", None) is None:
            self._exec_api = docker.APIClient(base_url=self.url, timeout=API_TIMEOUT, version="1.41")
        return self._exec_api

    def close(self) -> None:
        if getattr(self, "_exec_api", None) is not None:
            self._exec_api.close()
        self.client.close()
