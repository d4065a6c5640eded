"""The target side of `migrator move`, run there over SSH as `migrator agent …`: describe this VSN,
receive archive streams into a staging dir per volume, fingerprint the staged trees, commit staging into
the data root, and remember where the stack came from. Input arrives from another machine: archives go
through the same verified, hostile-member-refusing extraction as a restore."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

from migrator import __version__
from migrator.archive import extract_archive
from migrator.archive.fingerprint import fingerprint
from migrator.errors import UsageError
from migrator.ops.datadirs import existing_ancestor
from migrator.state import deployed
from migrator.state.files import write_json
from migrator.state.paths import state_dir

STAGING_SUFFIX = ".move-incoming"


def staging_dir(data_root: str, volume: str) -> Path:
    return Path(data_root) / f".{volume}{STAGING_SUFFIX}"



def _safe_volume(name: str) -> str:
    # Same rule as plan names: a volume name is one safe path component.
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", name):
        raise UsageError(f"not a volume name: {name!r}")
    return name


def info(data_root: str) -> dict:
    root = Path(data_root)
    free = shutil.disk_usage(existing_ancestor(root)).free
    here = deployed.current() or {}
    return {"version": __version__, "euid": os.geteuid(), "hostname": socket.gethostname(),
            "state_dir": str(state_dir()), "data_root": str(root), "free_bytes": free,
            "deployed_at": here.get("deployed_at")}


def receive(data_root: str, volume: str, fresh: bool) -> dict:
    """Extract the archive stream on stdin into the volume's staging dir; report its sha256 for the sender
    to compare (the sender only knows it when the stream ends)."""
    staging = staging_dir(data_root, _safe_volume(volume))
    if fresh and staging.exists():
        shutil.rmtree(staging)
    Path(data_root).mkdir(parents=True, exist_ok=True)
    stats = extract_archive(sys.stdin.buffer, staging, expected_sha256=None)
    return {"volume": volume, "sha256": stats.sha256, "size": stats.size, "files": stats.files}


def staged_fingerprint(data_root: str, volume: str) -> dict:
    return {"volume": volume, "fingerprint": fingerprint(staging_dir(data_root, _safe_volume(volume)), content=False)}


def commit(data_root: str, volumes: list[str]) -> dict:
    """Staging -> live by rename; a live dir already there is kept aside as <dir>.pre-move-<ts>."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    kept = []
    for volume in volumes:
        staging = staging_dir(data_root, _safe_volume(volume))
        live = Path(data_root) / volume
        if not staging.is_dir():
            raise UsageError(f"nothing staged for volume {volume} under {data_root}")
        if live.exists() or live.is_symlink():
            aside = Path(data_root) / f"{volume}.pre-move-{stamp}"
            os.rename(live, aside)
            kept.append(str(aside))
        os.rename(staging, live)
    fd = os.open(data_root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"committed": volumes, "kept_aside": kept}


def mark_moved(source: str) -> dict:
    record = {"from": source, "at": time.time()}
    write_json(state_dir() / "moved-in.json", record)
    return record
