"""The ContainerEngine interface and the plain data it speaks.

Implementations translate library errors into migrator errors at their edge; callers never see
podman/docker exception types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

# Labels every container migrator creates carries; "containerless" means no container with our stack label.
LABEL_STACK = "io.migrator.stack"
LABEL_ROLE = "io.migrator.role"  # host | volume | service | netns | network


@dataclass(frozen=True)
class Port:
    host_port: int
    container_port: int
    host_ip: str = "127.0.0.1"
    protocol: str = "tcp"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass
class ContainerSpec:
    name: str
    image: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets: never repr'd
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[Port] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    volumes_from: list[str] = field(default_factory=list)
    network: str | None = None
    aliases: list[str] = field(default_factory=list)  # more DNS names on `network`
    network_from: str | None = None  # join this container's network namespace (instead of `network`, `ports`)
    privileged: bool = False
    stop_timeout: int = 10
    stop_signal: str | None = None  # None: the image's


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    state: str  # created | running | exited | paused | stopped | ...
    image: str
    labels: dict[str, str]
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class ContainerEngine(ABC):
    """What migrator needs from podman or docker, nothing more."""

    url: str

    @abstractmethod
    def ping(self) -> str:
        """Return the engine version; raise EngineUnreachable when the socket does not answer."""

    def facts(self) -> dict[str, str]:
        """What `check` reports about the daemon (storage and cgroup driver); {} where not known."""
        return {}

    @abstractmethod
    def get(self, name: str) -> ContainerInfo | None: ...

    @abstractmethod
    def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        """All containers (any state) carrying every given label."""

    @abstractmethod
    def create(self, spec: ContainerSpec) -> None: ...

    @abstractmethod
    def start(self, name: str) -> None: ...

    @abstractmethod
    def stop(self, name: str, timeout: int = 10) -> None: ...

    @abstractmethod
    def remove(self, name: str) -> None:
        """Force-remove a container (and its anonymous volumes); no error if it is gone."""

    @abstractmethod
    def rename(self, name: str, new_name: str) -> None: ...

    @abstractmethod
    def exec(self, name: str, argv: list[str], timeout: float = 60) -> tuple[int, str]:
        """Run argv inside a running container (no shell); return (exit code, combined output)."""

    def exec_stream(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, user: str | None = None,
                    stdin=None, on_stdout=None):
        """Run argv in a running container with streamed stdin/stdout (engine/execio.py); env stays out of
        argv. Returns an ExecResult (exit code, stderr tail)."""
        from migrator.engine.execio import exec_stream

        return exec_stream(self.exec_api(), name, argv, env=env, user=user, stdin=stdin, on_stdout=on_stdout)

    def exec_api(self):
        """A docker-py APIClient on this engine's Docker-compatible API (podman serves one too)."""
        raise NotImplementedError(f"{type(self).__name__} cannot stream an exec")

    @abstractmethod
    def logs(self, name: str, tail: int = 20) -> str: ...

    @abstractmethod
    def image_exists(self, ref: str) -> bool: ...

    @abstractmethod
    def pull(self, ref: str) -> None: ...

    @abstractmethod
    def save_image(self, ref: str, path: Path) -> None:
        """Write the image as a docker-archive tarball to `path` (streamed)."""

    @abstractmethod
    def load_image(self, path: Path) -> None: ...

    @abstractmethod
    def ensure_network(self, name: str, labels: dict[str, str], subnet: str | None = None) -> None: ...

    @abstractmethod
    def remove_network(self, name: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
