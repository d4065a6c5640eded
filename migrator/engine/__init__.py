"""Container engines behind one interface (base.ContainerEngine): podman and docker.

podman through podman-py, docker through the docker SDK. The Host-container topology is just a second
engine reached through the Host's socket."""

from migrator.engine.base import ContainerEngine, ContainerInfo, ContainerSpec, Mount, Port
from migrator.engine.factory import engine_for_url, outer_engine

__all__ = ["ContainerEngine", "ContainerInfo", "ContainerSpec", "Mount", "Port", "engine_for_url", "outer_engine"]
