"""Atomic small-file writes for the state dir: temp file, fsync, rename, fsync the dir.

JSON is written without NaN/Infinity and read back strictly (strictjson), like every document we read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from migrator import strictjson
from migrator.durable import fsync_dir


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n")


def read_json(path: Path, default=None):
    try:
        return strictjson.loads(path.read_bytes())
    except FileNotFoundError:
        return default
