"""The stack topology of one plan: which engine holds which container, and how each is specified.

Also how to reach the containerless state; shared by every verb that needs "the services that mount
volume V" or "stop/start in order"."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from migrator.engine.base import LABEL_ROLE, LABEL_STACK, ContainerEngine, ContainerInfo, ContainerSpec, Mount, Port
from migrator.engine.factory import inner_engine, outer_engine
from migrator.errors import EngineError, EngineUnreachable, ImageMissing
from migrator.plan.model import Plan, Secrets, Service
from migrator.state.paths import runtime_dir, state_dir

Report = Callable[[str], None]

INNER_SOCKET_DIR = "/run/migrator-inner"  # inside the Host container; bind-mounted from the VSN runtime dir
INNER_SOCKET_NAME = "podman.sock"


def quiet(_: str) -> None:
    pass


def start_order(services: tuple[Service, ...]) -> list[Service]:
    """Services sorted so every service comes after what it depends on (plan order breaks ties)."""
    by_name = {s.name: s for s in services}
    done: list[Service] = []
    seen: set[str] = set()

    def visit(s: Service) -> None:
        if s.name in seen:
            return
        seen.add(s.name)
        for dep in s.depends_on:
            if dep in by_name:
                visit(by_name[dep])
        done.append(s)

    for s in services:
        visit(s)
    return done


@dataclass
class Stack:
    plan: Plan
    report: Report = quiet
    _outer: ContainerEngine | None = None
    _inner: ContainerEngine | None = None

    @classmethod
    def for_plan(cls, plan: Plan, report: Report = quiet) -> Stack:
        return cls(plan=plan, report=report)

    @property
    def outer(self) -> ContainerEngine:
        """The VSN's own engine, connected on first use: a backup with nothing to stop never loads an SDK."""
        if self._outer is None:
            self._outer = outer_engine(self.plan)
        return self._outer

    # --- topology -------------------------------------------------------------------------------
    @property
    def nested(self) -> bool:
        return self.plan.host is not None

    def labels(self, role: str) -> dict[str, str]:
        return {LABEL_STACK: self.plan.vsn.name, LABEL_ROLE: role}

    @property
    def inner_socket_path(self) -> Path:
        assert self.plan.host is not None
        return runtime_dir(self.plan.host.name) / INNER_SOCKET_NAME

    def rest_engine(self) -> ContainerEngine:
        """The engine that holds the volume and service containers."""
        if not self.nested:
            return self.outer
        if self._inner is None:
            self._inner = inner_engine(str(self.inner_socket_path))
        return self._inner

    def host_info(self) -> ContainerInfo | None:
        return self.outer.get(self.plan.host.name) if self.nested else None

    def rest_reachable(self) -> bool:
        """REST containers can be listed: flat plan, or the Host runs and its socket answers."""
        if not self.nested:
            return True
        host = self.host_info()
        if host is None or not host.running:
            return False
        try:
            self.rest_engine().ping()
            return True
        except EngineUnreachable:
            return False

    # --- specs ----------------------------------------------------------------------------------
    def host_spec(self) -> ContainerSpec:
        host = self.plan.host
        data_root = self.plan.vsn.data_root
        ports = [Port(p.host, p.container, p.address, p.protocol) for p in host.ports]
        # Services publish inside the Host's network namespace on their VSN port number; the Host then
        # publishes that same number on the VSN address the plan asks for.
        for svc in self.plan.enabled_services:
            ports += [Port(p.host, p.host, p.address, p.protocol) for p in svc.ports]
        return ContainerSpec(
            name=host.name,
            image=host.image,
            env=dict(host.env),
            labels=self.labels("host"),
            ports=ports,
            mounts=[Mount(data_root, data_root), Mount(str(self.inner_socket_path.parent), INNER_SOCKET_DIR)],
            privileged=host.privileged,
        )

    def volume_spec(self, volume) -> ContainerSpec:
        mounts = [Mount(volume.data_dir(self.plan.vsn.data_root, m), m.path) for m in volume.mounts]
        # Volume containers hold no process of interest: created, never started (volumes-from works on
        # created containers in podman and docker).
        return ContainerSpec(name=volume.name, image=volume.image, command=["true"], mounts=mounts,
                             labels=self.labels("volume"), network=None)

    def _published(self, svc: Service) -> list[Port]:
        if self.nested:
            return [Port(p.host, p.container, "0.0.0.0", p.protocol) for p in svc.ports]
        return [Port(p.host, p.container, p.address, p.protocol) for p in svc.ports]

    def service_spec(self, svc: Service, secrets: Secrets, image: str | None = None) -> ContainerSpec:
        env = dict(svc.env)
        env.update({name: secrets.get(key) for name, key in svc.env_secrets.items()})
        joins = svc.netns_holder  # its holder has the network, DNS name and published ports (holder_spec)
        return ContainerSpec(
            name=svc.name,
            image=image or svc.image,
            command=list(svc.command) or None,
            env=env,
            labels=self.labels("service"),
            ports=[] if joins else self._published(svc),
            volumes_from=list(svc.volumes_from),
            network=None if joins else self.plan.network,
            network_from=joins,
            stop_timeout=svc.stop_timeout,
        )

    def holder_spec(self, svc: Service) -> ContainerSpec:
        """The network holder of a service that mounts a volume (Service.netns_holder): a process that sleeps
        in the service's network namespace, on the plan's network under the service's name, publishing the
        service's ports. Image: that of the service's first volume (a busybox: it has `sleep`). It holds
        nothing worth a clean shutdown, so it is killed outright when removed."""
        assert svc.netns_holder is not None
        return ContainerSpec(
            name=svc.netns_holder,
            image=self.plan.volume(svc.volumes_from[0]).image,
            command=["sleep", "2147483647"],
            labels=self.labels("netns"),
            ports=self._published(svc),
            network=self.plan.network,
            aliases=[svc.name],
            stop_signal="SIGKILL",
            stop_timeout=0,
        )

    def ensure_holder(self, engine: ContainerEngine, svc: Service) -> bool:
        """Create and start the service's network holder unless it runs (deploy, and upgrade of a stack an
        older migrator deployed without one). True when it had to be created."""
        if svc.netns_holder is None:
            return False
        info = engine.get(svc.netns_holder)
        if info is not None and info.running:
            return False
        if info is None:
            self.report(f"creating network holder {svc.netns_holder} of {svc.name}")
            engine.create(self.holder_spec(svc))
        engine.start(svc.netns_holder)
        return info is None

    def stop_holders(self) -> list[str]:
        """Stop the running network holders (their services are down and meant to stay so): they publish
        the services' ports. A later start of a service starts its holder again (an engine dependency)."""
        if not self.rest_reachable():
            return []
        engine = self.rest_engine()
        stopped = []
        for svc in self.plan.enabled_services:
            info = engine.get(svc.netns_holder) if svc.netns_holder else None
            if info is not None and info.running:
                engine.stop(svc.netns_holder, timeout=0)
                stopped.append(svc.netns_holder)
        return stopped

    # --- images -----------------------------------------------------------------------------------
    def ensure_image(self, engine: ContainerEngine, ref: str) -> str:
        """Make `ref` available on `engine`: present, else copied from the VSN engine, else pulled.
        Returns how it was found (for the report)."""
        if engine.image_exists(ref):
            return "present"
        if engine is not self.outer and self.outer.image_exists(ref):
            with tempfile.TemporaryDirectory(dir=state_dir(), prefix="image-") as tmp:
                archive = Path(tmp) / "image.tar"
                self.outer.save_image(ref, archive)
                engine.load_image(archive)
            return "copied from the VSN engine"
        try:
            engine.pull(ref)
        except EngineError as exc:
            raise ImageMissing(f"image {ref} is not on the engine and cannot be pulled: {exc.message}") from exc
        return "pulled"

    # --- lifecycle ----------------------------------------------------------------------------------
    def stack_containers(self) -> list[ContainerInfo]:
        """Every container carrying this stack's label on the engines we can reach."""
        found = self.outer.list({LABEL_STACK: self.plan.vsn.name})
        if self.nested and self.rest_reachable():
            found += self.rest_engine().list({LABEL_STACK: self.plan.vsn.name})
        return found

    def drop_all(self) -> list[str]:
        """Containerless state: stop services (reverse start order), remove REST containers, the
        network and the Host. Data dirs are bind mounts: removing containers never touches them."""
        removed: list[str] = []
        if self.rest_reachable():
            engine = self.rest_engine()
            present = {c.name: c for c in engine.list({LABEL_STACK: self.plan.vsn.name})}
            for svc in reversed(start_order(self.plan.services)):
                if svc.name in present:
                    self.report(f"removing service {svc.name}")
                    if present[svc.name].running:
                        engine.stop(svc.name, timeout=svc.stop_timeout)
                    engine.remove(svc.name)
                    removed.append(svc.name)
            # network holders last: an engine refuses to remove a namespace another container still joins
            rest = sorted((c for c in present.values() if c.name not in removed),
                          key=lambda c: c.labels.get(LABEL_ROLE) == "netns")
            for name in (c.name for c in rest):
                if name not in removed:
                    self.report(f"removing {name}")
                    engine.remove(name)
                    removed.append(name)
            engine.remove_network(self.plan.network)
        for c in self.outer.list({LABEL_STACK: self.plan.vsn.name}):
            self.report(f"removing {c.name}")
            self.outer.remove(c.name)
            removed.append(c.name)
        if self.nested:
            self._inner = None
            shutil.rmtree(self.inner_socket_path.parent, ignore_errors=True)
        return removed
