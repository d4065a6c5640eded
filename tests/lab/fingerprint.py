"""A full fingerprint of a directory tree (paths, types, modes, owners, sizes, mtimes, link targets,
sha256 of contents) to prove data was not touched, or was restored exactly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fingerprint(root: Path, *, mtimes: bool = True) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                content = "->" + os.readlink(path)
            elif path.is_file():
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = "dir"
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size if not path.is_dir() else 0,
                        st.st_mtime_ns if mtimes and not path.is_dir() else 0, content)
    return out
