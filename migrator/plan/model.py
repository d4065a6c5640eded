"""Plain dataclasses for a validated plan; nothing here touches the VSN.

Built only from JSON that passed the schema and special checks, so constructors trust shapes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from migrator.plan.sizes import DEFAULT_MAX_VOLUME_SIZE, parse_size

DEFAULT_HOST_NAME = "migrator-host"
DEFAULT_SOCKETS = {"podman": "unix:///run/podman/podman.sock", "docker": "unix:///var/run/docker.sock"}
DEFAULT_INNER_SUBNET = "10.124.0.0/24"
DEFAULT_MIN_FREE = 1024**3  # keep 1 GiB free on the data root: below that databases start failing writes


@dataclass(frozen=True)
class PortMapping:
    host: int
    container: int
    address: str = "127.0.0.1"
    protocol: str = "tcp"

    @classmethod
    def from_json(cls, raw: dict) -> PortMapping:
        return cls(raw["host"], raw["container"], raw.get("address", "127.0.0.1"), raw.get("protocol", "tcp"))


@dataclass(frozen=True)
class TLSConfig:
    ca_cert: str
    client_cert: str
    client_key: str
    verify: bool = True


@dataclass(frozen=True)
class VSN:
    name: str
    engine: str
    socket: str
    data_root: str
    tls: TLSConfig | None = None
    min_free: int = DEFAULT_MIN_FREE


@dataclass(frozen=True)
class Host:
    name: str
    image: str
    ports: tuple[PortMapping, ...] = ()
    privileged: bool = True
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: int = 60


@dataclass(frozen=True)
class Mount:
    name: str
    path: str


@dataclass(frozen=True)
class Volume:
    name: str
    image: str
    mounts: tuple[Mount, ...]
    max_size: int = DEFAULT_MAX_VOLUME_SIZE

    def data_dir(self, data_root: str, mount: Mount) -> str:
        return str(PurePosixPath(data_root) / self.name / mount.name)

    def root_dir(self, data_root: str) -> str:
        return str(PurePosixPath(data_root) / self.name)


@dataclass(frozen=True)
class Probe:
    type: str
    port: int | None = None
    path: str = "/"
    expect_status: int = 200
    command: tuple[str, ...] = ()
    timeout: int = 60
    interval: float = 0.5


@dataclass(frozen=True)
class Hook:
    command: tuple[str, ...]
    container: str | None = None
    timeout: int = 300


@dataclass(frozen=True)
class Dump:
    """A service's logical database dump, streamed into every snapshot beside its data directories."""

    kind: str  # mariadb | postgres
    databases: tuple[str, ...]
    user: str = "app"
    password_secret: str | None = None
    timeout: int = 21600


# A service that mounts a volume runs in the network namespace of a holder container named after it
# (see Service.netns_holder); plan checks reserve these names.
NETNS_HOLDER_SUFFIX = "-netns"


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    enabled: bool = True
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    env_secrets: dict[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    volumes_from: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    health: Probe | None = None
    quiesce: str = "two-phase"
    pre_backup: tuple[Hook, ...] = ()
    post_backup: tuple[Hook, ...] = ()
    stop_timeout: int = 10
    dump: Dump | None = None

    @property
    def netns_holder(self) -> str | None:
        """The container that holds this service's network namespace (its IP, DNS name and published ports),
        so that stopping the service for a backup or restore tears no network down and sets none up again
        (podman: ~0.3 s of the ~0.45 s a stop and start cost). Services that mount a volume, the ones quiesce
        stops, have one; the others own their network themselves."""
        return f"{self.name}{NETNS_HOLDER_SUFFIX}" if self.volumes_from else None


@dataclass(frozen=True)
class Plan:
    vsn: VSN
    host: Host | None
    network: str
    network_subnet: str | None
    volumes: tuple[Volume, ...]
    services: tuple[Service, ...]
    raw: dict = field(compare=False, repr=False)

    @property
    def backup(self) -> dict:
        return self.raw.get("backup", {})

    @property
    def health(self) -> dict:
        return self.raw.get("health", {})

    @property
    def enabled_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.enabled)

    def volume(self, name: str) -> Volume:
        return next(v for v in self.volumes if v.name == name)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.raw)).hexdigest()

    @classmethod
    def from_json(cls, raw: dict) -> Plan:
        v = raw["vsn"]
        tls = TLSConfig(**v["tls"]) if "tls" in v else None
        vsn = VSN(
            name=v["name"],
            engine=v["engine"],
            socket=v.get("socket", DEFAULT_SOCKETS[v["engine"]]),
            data_root=str(PurePosixPath(v["data_root"])),
            tls=tls,
            min_free=parse_size(v.get("min_free", DEFAULT_MIN_FREE)),
        )
        host = None
        if "host" in raw:
            h = raw["host"]
            opts = h.get("options", {})
            host = Host(
                name=h.get("name", DEFAULT_HOST_NAME),
                image=h["image"],
                ports=tuple(PortMapping.from_json(p) for p in h.get("ports", [])),
                privileged=opts.get("privileged", True),
                env=dict(opts.get("env", {})),
                startup_timeout=opts.get("startup_timeout", 60),
            )
        volumes = tuple(
            Volume(
                name=vol["name"],
                image=vol["image"],
                mounts=tuple(Mount(m["name"], m["path"]) for m in vol["mounts"]),
                max_size=parse_size(vol.get("max_size", DEFAULT_MAX_VOLUME_SIZE)),
            )
            for vol in raw["volumes"]
        )
        return cls(
            vsn=vsn,
            host=host,
            network=raw.get("network", f"{vsn.name}-net"),
            # Inside the Host, a network from podman's default pool can shadow the Host's own eth0 subnet
            # (published ports then time out): use a fixed private subnet unless the plan names one.
            network_subnet=raw.get("network_subnet", DEFAULT_INNER_SUBNET if host else None),
            volumes=volumes,
            services=tuple(_service(s) for s in raw["services"]),
            raw=raw,
        )


def _probe(raw: dict | None) -> Probe | None:
    if raw is None:
        return None
    return Probe(
        type=raw["type"],
        port=raw.get("port"),
        path=raw.get("path", "/"),
        expect_status=raw.get("expect_status", 200),
        command=tuple(raw.get("command", ())),
        timeout=raw.get("timeout", 60),
        interval=raw.get("interval", 0.5),
    )


def _hooks(raw: list[dict]) -> tuple[Hook, ...]:
    return tuple(Hook(tuple(h["command"]), h.get("container"), h.get("timeout", 300)) for h in raw)


def _service(s: dict) -> Service:
    hooks = s.get("hooks", {})
    return Service(
        name=s["name"],
        image=s["image"],
        enabled=s.get("enabled", True),
        command=tuple(s.get("command", ())),
        env=dict(s.get("env", {})),
        env_secrets=dict(s.get("env_secrets", {})),
        ports=tuple(PortMapping.from_json(p) for p in s.get("ports", [])),
        volumes_from=tuple(s.get("volumes_from", ())),
        depends_on=tuple(s.get("depends_on", ())),
        health=_probe(s.get("health")),
        quiesce=s.get("quiesce", "two-phase"),
        pre_backup=_hooks(hooks.get("pre_backup", [])),
        post_backup=_hooks(hooks.get("post_backup", [])),
        stop_timeout=s.get("stop_timeout", 10),
        dump=_dump(s.get("dump")),
    )


def _dump(raw: dict | None) -> Dump | None:
    if raw is None:
        return None
    return Dump(kind=raw["kind"], databases=tuple(raw["databases"]), user=raw.get("user", "app"),
                password_secret=raw.get("password_secret"), timeout=raw.get("timeout", 21600))


@dataclass(frozen=True)
class Secrets:
    """Secret values by key. repr() never shows values, so a stray log line cannot leak them."""

    values: dict[str, str] = field(default_factory=dict, repr=False)
    path: str | None = None

    def __repr__(self) -> str:
        return f"Secrets(path={self.path!r}, keys={sorted(self.values)!r})"

    def get(self, key: str) -> str:
        return self.values[key]


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
