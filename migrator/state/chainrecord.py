"""The local record of this VSN's newest snapshot: its id, stores, and each volume's tree state.

Lets the next backup continue the chain without reading (or decrypting) the store's copy; used only when
the stores' newest snapshot matches it. Plaintext: the VSN holds the live data anyway (state dir 0700)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from migrator.archive.treestate import TreeState
from migrator.errors import ArchiveError
from migrator.state import registry
from migrator.state.files import read_json, write_json

RECORD = "record.json"


def _dir(vsn: str) -> Path:
    return registry.CHAIN.path / vsn


@dataclass
class ChainRecord:
    vsn: str
    snapshot_id: str
    stores: list[str]
    trees: dict[str, dict]  # volume -> {"file": local file name, "sha256": the object's sha256 in the manifest}

    def tree_sha256(self, volume: str) -> str | None:
        return (self.trees.get(volume) or {}).get("sha256")

    def state(self, volume: str) -> TreeState | None:
        """The recorded tree state of `volume`, or None when there is none or it cannot be read."""
        meta = self.trees.get(volume)
        if not meta:
            return None
        try:
            return TreeState.load(_dir(self.vsn) / meta["file"])
        except ArchiveError:
            return None


def load(vsn: str) -> ChainRecord | None:
    raw = read_json(_dir(vsn) / RECORD)
    if not isinstance(raw, dict):
        return None
    try:
        return ChainRecord(vsn, str(raw["snapshot_id"]), list(raw["stores"]), dict(raw["trees"]))
    except (KeyError, TypeError, ValueError):
        return None


def tree_file(vsn: str, snapshot_id: str, volume: str) -> Path:
    """Where a backup leaves `volume`'s plain tree state for the record it writes once committed."""
    where = _dir(vsn)
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    return where / f"{snapshot_id}.{volume}.tree"


def save(vsn: str, snapshot_id: str, stores: list[str], trees: dict[str, str]) -> None:
    """Record `snapshot_id` (committed to `stores`); `trees`: volume -> its tree-state object's sha256,
    the plain states already at `tree_file(...)`. Files of earlier records (or of backups that never
    committed) are removed once the new record is in place."""
    where = _dir(vsn)
    files = {volume: tree_file(vsn, snapshot_id, volume).name for volume in trees}
    write_json(where / RECORD, {"snapshot_id": snapshot_id, "stores": stores,
                                "trees": {v: {"file": files[v], "sha256": sha} for v, sha in trees.items()}})
    keep = {RECORD, *files.values()}
    for path in where.iterdir():
        if path.name not in keep:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def forget(vsn: str) -> None:
    shutil.rmtree(_dir(vsn), ignore_errors=True)
