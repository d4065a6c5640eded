"""Snapshot ids and manifests: create, serialise, and read back from an untrusted store."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from migrator import jsonschemas, strictjson
from migrator.errors import IntegrityError

if TYPE_CHECKING:
    from migrator.state.conforming import ConformingDocs

MANIFEST = "manifest.json"
PLAN_COPY = "plan.json"
# Format 1: every volume captured whole. Format 2 adds incremental volumes (`parent`, `incremental`) and
# the per-volume tree-state objects (`trees`) the next snapshot continues from; format 1 is still read.
FORMAT = 2
FORMATS = (1, 2)
# A manifest lists at most a few hundred objects: anything bigger than this is not ours.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_PLAN_BYTES = 1024 * 1024


def new_snapshot_id(now: float | None = None, after: str | None = None) -> str:
    """A new id; with `after`, one that sorts after it (an incremental's id must sort after its parent's,
    also when both are taken within one second)."""
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
    sid = f"{stamp}-{secrets.token_hex(3)}"
    if after is None or sid > after:
        return sid
    low = int(after[17:], 16) + 1
    if after[:16] >= stamp and low <= 0xFFFFFF:
        return f"{after[:16]}-{secrets.randbelow(0x1000000 - low) + low:06x}"
    return new_snapshot_id(snapshot_time(after) + 1)


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


def tree_name(volume: str, encrypted: bool) -> str:
    return f"{volume}.tree.zst" + (".age" if encrypted else "")


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
class TreeEntry:
    """A volume's tree state as of the snapshot (archive/treestate.py): what the next incremental diffs
    against. Never read by restore: a bad one can only cost a full backup."""
    name: str
    volume: str
    size: int
    sha256: str
    entries: int  # paths it lists


def dump_name(service: str, database: str, kind: str, encrypted: bool) -> str:
    return f"dump.{service}.{database}." + ("pgdump" if kind == "postgres" else "sql") + ".zst" + \
        (".age" if encrypted else "")


@dataclass
class DumpEntry:
    """A logical dump of one database, streamed from its running service (plan services[].dump)."""
    name: str
    service: str
    kind: str  # mariadb | postgres
    database: str
    size: int
    sha256: str
    uncompressed: int


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
    parent: str | None = None  # the snapshot the incremental volumes continue (volumes[v]["incremental"])
    trees: list[TreeEntry] = field(default_factory=list)
    dumps: list[DumpEntry] = field(default_factory=list)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["format"] = FORMAT
        out["objects"] = [{k: v for k, v in o.__dict__.items() if v is not None} for o in self.objects]
        out["trees"] = [dict(t.__dict__) for t in self.trees]
        out["dumps"] = [dict(d.__dict__) for d in self.dumps]
        if not self.dumps:
            out.pop("dumps")
        if self.parent is None:
            out.pop("parent")
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"

    @property
    def size(self) -> int:
        """Bytes this snapshot added to the store: its archive objects, tree states and dumps."""
        return sum(o.size for o in self.objects) + sum(t.size for t in self.trees) + sum(d.size for d in self.dumps)

    def objects_of(self, volume: str) -> list[ObjectEntry]:
        return sorted((o for o in self.objects if o.volume == volume), key=lambda o: o.phase)

    def incremental(self, volume: str) -> bool:
        """Whether `volume`'s objects are a delta on the parent's tree (else they hold it whole)."""
        return bool(self.volumes.get(volume, {}).get("incremental"))

    @property
    def kind(self) -> str:
        return "incremental" if any(self.incremental(v) for v in self.volumes) else "full"

    def tree_of(self, volume: str) -> TreeEntry | None:
        return next((t for t in self.trees if t.volume == volume), None)

    @classmethod
    def parse(cls, data: bytes, where: str, conforming: ConformingDocs | None = None) -> Manifest:
        """Parse and validate a manifest read from a store. Anything off -> IntegrityError (exit 6).
        With `conforming`, the schema check of bytes already seen to pass is skipped (not the others)."""
        try:
            raw = strictjson.loads(data)
        except strictjson.Refused as exc:  # NaN, a duplicate key, runaway digits or nesting
            raise IntegrityError(f"manifest {where} is malformed at {exc.problems[0]}",
                                 details=exc.problems[:50]) from None
        except ValueError as exc:  # not UTF-8, not JSON
            raise IntegrityError(f"manifest {where} is not valid JSON: {exc}") from None
        schema = jsonschemas.schema_bytes("manifest")
        known = conforming is not None and conforming.knows(schema, data)
        errors = [] if known else jsonschemas.errors("manifest", raw)
        if errors:
            first = errors[0]
            path = "/".join(map(str, first.absolute_path)) or "(root)"
            raise IntegrityError(f"manifest {where} is malformed at {path}: {first.message[:200]}",
                                 details=[f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
                                          for e in errors[:50]])
        trees = raw.get("trees", [])
        dumps = raw.get("dumps", [])
        names = [o["name"] for o in raw["objects"]] + [t["name"] for t in trees] + [d["name"] for d in dumps]
        if len(set(names)) != len(names):
            raise IntegrityError(f"manifest {where} lists an object twice")
        for o in [*raw["objects"], *trees]:
            if o["volume"] not in raw["volumes"] or not o["name"].startswith(o["volume"] + "."):
                raise IntegrityError(f"manifest {where}: object {o['name']} does not belong to a listed volume")
        for d in dumps:
            if d["name"] not in (dump_name(d["service"], d["database"], d["kind"], False),
                                 dump_name(d["service"], d["database"], d["kind"], True)):
                raise IntegrityError(f"manifest {where}: dump object {d['name']} is not named after its service "
                                     f"and database")
        if len({t["volume"] for t in trees}) != len(trees):
            raise IntegrityError(f"manifest {where} lists two tree states for one volume")
        parent = raw.get("parent")
        incremental = [v for v, meta in raw["volumes"].items() if meta.get("incremental")]
        if incremental and parent is None:
            raise IntegrityError(f"manifest {where}: volume {incremental[0]} is incremental but no parent is named")
        if parent is not None and not parent < raw["snapshot_id"]:
            raise IntegrityError(f"manifest {where}: parent {parent} is not older than the snapshot")
        if conforming is not None and not known:
            conforming.add(schema, data)
        raw.pop("format")
        raw["objects"] = [ObjectEntry(**o) for o in raw["objects"]]
        raw["trees"] = [TreeEntry(**t) for t in trees]
        raw["dumps"] = [DumpEntry(**d) for d in dumps]
        return cls(**raw)
