"""Pick the engine implementation for a plan or a URL."""

from __future__ import annotations

from migrator.engine.base import ContainerEngine


def engine_for_url(kind: str, url: str, tls=None) -> ContainerEngine:
    if kind == "docker":
        from migrator.engine.docker import DockerEngine

        return DockerEngine(url, tls=tls)
    from migrator.engine.podman import PodmanEngine

    return PodmanEngine(url)


def outer_engine(plan) -> ContainerEngine:
    """The VSN's own engine (runs the Host container, or the REST containers of a flat plan)."""
    return engine_for_url(plan.vsn.engine, plan.vsn.socket, plan.vsn.tls)


def inner_engine(socket_path: str) -> ContainerEngine:
    """The Host container's own podman, reached through its bind-mounted socket."""
    return engine_for_url("podman", f"unix://{socket_path}")
