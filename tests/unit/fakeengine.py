"""An in-memory container engine for the unit tests of the verbs' decisions (what stops, in which order,
what the journal says, what recover undoes). It is a fake on purpose: these tests check migrator's
decisions, while tests/integration runs the same verbs against real podman and docker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from migrator.engine.base import ContainerEngine, ContainerInfo, ContainerSpec
from migrator.errors import EngineError


@dataclass
class FakeContainer:
    name: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "created"


class FakeEngine(ContainerEngine):
    """Containers as dicts; every state change is appended to `calls` as (verb, name).

    `unhealthy`: names whose probe command fails (exit 1); `fail_start`: names whose start raises."""

    url = "fake://"

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, str]] = []
        self.unhealthy: set[str] = set()
        self.fail_start: set[str] = set()
        self.on_stop = None  # called with the name after a stop (a test's hook into the stopped window)

    def add(self, name: str, labels: dict[str, str] | None = None, state: str = "running",
            image: str = "localhost/busybox") -> None:
        self.containers[name] = FakeContainer(name, image, dict(labels or {}), state)

    def running(self) -> set[str]:
        return {c.name for c in self.containers.values() if c.state == "running"}

    def verbs(self, verb: str) -> list[str]:
        return [name for v, name in self.calls if v == verb]

    # --- ContainerEngine --------------------------------------------------------------------------
    def ping(self) -> str:
        return "fake"

    def get(self, name: str) -> ContainerInfo | None:
        c = self.containers.get(name)
        return None if c is None else ContainerInfo(c.name, c.state, c.image, dict(c.labels))

    def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        return [self.get(c.name) for c in self.containers.values()
                if all(c.labels.get(k) == v for k, v in labels.items())]

    def create(self, spec: ContainerSpec) -> None:
        if spec.name in self.containers:
            raise EngineError(f"container {spec.name} exists")
        self.calls.append(("create", spec.name))
        self.containers[spec.name] = FakeContainer(spec.name, spec.image, dict(spec.labels))

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        if name in self.fail_start:
            raise EngineError(f"cannot start {name}")
        self.containers[name].state = "running"

    def stop(self, name: str, timeout: int = 10) -> None:
        self.calls.append(("stop", name))
        self.containers[name].state = "exited"
        if self.on_stop is not None:
            self.on_stop(name)

    def remove(self, name: str) -> None:
        if self.containers.pop(name, None) is not None:
            self.calls.append(("remove", name))

    def rename(self, name: str, new_name: str) -> None:
        self.calls.append(("rename", f"{name}->{new_name}"))
        c = self.containers.pop(name)
        c.name = new_name
        self.containers[new_name] = c

    def exec(self, name: str, argv: list[str], timeout: float = 60) -> tuple[int, str]:
        self.calls.append(("exec", name))
        return (1, "unhealthy") if name in self.unhealthy else (0, "")

    def logs(self, name: str, tail: int = 20) -> str:
        return ""

    def image_exists(self, ref: str) -> bool:
        return True

    def pull(self, ref: str) -> None:
        pass

    def save_image(self, ref: str, path: Path) -> None:
        raise NotImplementedError

    def load_image(self, path: Path) -> None:
        raise NotImplementedError

    def ensure_network(self, name: str, labels: dict[str, str], subnet: str | None = None) -> None:
        pass

    def remove_network(self, name: str) -> None:
        self.calls.append(("remove_network", name))
