"""Data directories: create the missing ones, never alter existing ones; also preflight's size walk."""

from __future__ import annotations

import os
from pathlib import Path

from migrator.plan.model import Plan


def data_dirs(plan: Plan) -> list[tuple[str, str, Path]]:
    """(volume, mount, dir) for every data dir of the plan."""
    root = plan.vsn.data_root
    return [(v.name, m.name, Path(v.data_dir(root, m))) for v in plan.volumes for m in v.mounts]


def create_missing(plan: Plan) -> list[str]:
    """mkdir the data root, volume dirs and data dirs that do not exist. Existing ones are left exactly
    as they are (no chmod, chown or touch). Returns what was created."""
    created = []
    wanted = [Path(plan.vsn.data_root)]
    for _vol, _mount, d in data_dirs(plan):
        wanted += [d.parent, d]
    for path in wanted:
        if path.is_symlink():
            raise OSError(f"{path} is a symlink; refusing to use it as a data directory")
        if not path.exists():
            path.mkdir(mode=0o755)
            created.append(str(path))
    return created


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (where free space is measured)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def tree_size(path: Path) -> int:
    """Bytes allocated under `path` (like du), symlinks not followed, other filesystems included."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue
    return total
