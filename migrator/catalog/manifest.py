"""Snapshot ids and manifests: create, serialise, and read back from an untrusted store."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from migrator import jsonschemas
from migrator.errors import IntegrityError

if TYPE_CHECKING:
    from migrator.state.conforming import ConformingDocs

MANIFEST = "manifest.json"
PLAN_COPY = "plan.json"
# A manifest lists at most a few hundred objects: anything bigger than this is not ours.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_PLAN_BYTES = 1024 * 1024


def new_snapshot_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def snapshot_time(snapshot_id: str) -> float:
    return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def is_snapshot_id(name: str) -> bool:
    try:
        return len(name) == 23 and name[16] == "-" and int(name[17:], 16) >= 0 and snapshot_time(name) > 0
    except ValueError:
        return False


def object_name(volume: str, phase: int, two_phase: bool, encrypted: bool) -> str:
    stem = f"{volume}.{phase}" if two_phase else volume
    return f"{stem}.tar.zst" + (".age" if encrypted else "")


@dataclass
class ObjectEntry:
    name: str
    volume: str
    phase: int
    size: int
    sha256: str
    files: int
    uncompressed: int
    acls: int | None = None  # members with POSIX ACLs; None in manifests written before 0.3


@dataclass
class Manifest:
    snapshot_id: str
    vsn: str
    created: float
    hostname: str
    migrator_version: str
    plan_sha256: str
    tags: list[str]
    volumes: dict[str, dict]
    objects: list[ObjectEntry] = field(default_factory=list)
    timings: dict = field(default_factory=lambda: {"capture": 0.0, "downtime": {}})
    encrypted: bool = False
    compression: str = "zstd"

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["format"] = 1
        out["objects"] = [{k: v for k, v in o.__dict__.items() if v is not None} for o in self.objects]
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    def objects_of(self, volume: str) -> list[ObjectEntry]:
        return sorted((o for o in self.objects if o.volume == volume), key=lambda o: o.phase)

    @classmethod
    def parse(cls, data: bytes, where: str, conforming: ConformingDocs | None = None) -> Manifest:
        """Parse and validate a manifest read from a store. Anything off -> IntegrityError (exit 6).
        With `conforming`, the schema check of bytes already seen to pass is skipped (not the others)."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntegrityError(f"manifest {where} is not valid JSON: {exc}") from exc
        schema = jsonschemas.schema_bytes("manifest")
        known = conforming is not None and conforming.knows(schema, data)
        errors = [] if known else jsonschemas.errors("manifest", raw)
        if errors:
            first = errors[0]
            path = "/".join(map(str, first.absolute_path)) or "(root)"
            raise IntegrityError(f"manifest {where} is malformed at {path}: {first.message[:200]}",
                                 details=[f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
                                          for e in errors[:50]])
        names = [o["name"] for o in raw["objects"]]
        if len(set(names)) != len(names):
            raise IntegrityError(f"manifest {where} lists an object twice")
        for o in raw["objects"]:
            if o["volume"] not in raw["volumes"] or not o["name"].startswith(o["volume"] + "."):
                raise IntegrityError(f"manifest {where}: object {o['name']} does not belong to a listed volume")
        if conforming is not None and not known:
            conforming.add(schema, data)
        raw.pop("format")
        raw["objects"] = [ObjectEntry(**o) for o in raw["objects"]]
        return cls(**raw)
