"""A data fingerprint of a directory tree: per path its type, mode, owner, size, mtime, link, sha256.

Proves data unchanged across an OS update (with content hashes) and identical on both sides of a move
(metadata only, during downtime)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

READ_CHUNK = 1024 * 1024


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(root: Path, *, content: bool = True) -> dict[str, list]:
    """{relative path: [type, mode, uid, gid, size, mtime_ns, target-or-sha256]}; "." is the root itself.
    Symlinks are never followed; directory sizes and mtimes are left out (they change with no data change
    on some filesystems, and a changed entry shows up as its own path anyway)."""
    out: dict[str, list] = {}
    root_str = str(root)
    for dirpath, dirnames, filenames in os.walk(root_str):
        dirnames.sort()
        for name in ["."] if dirpath == root_str else []:
            st = os.lstat(root_str)
            out[name] = ["d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0, 0, ""]
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_str)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ["l", mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, os.readlink(full)]
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ["d", mode, st.st_uid, st.st_gid, 0, 0, ""]
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ["f", mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                            _sha256(full) if content else ""]
            else:
                out[rel] = ["o", mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, ""]
    return out


FIELDS = ("type", "mode", "uid", "gid", "size", "mtime", "content")


def compare(before: dict[str, list], after: dict[str, list], limit: int = 200) -> list[str]:
    """Human lines naming each difference (at most `limit`, then a count of the rest)."""
    lines: list[str] = []
    total = 0
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        total += 1
        if len(lines) >= limit:
            continue
        if old is None:
            lines.append(f"{path}: added")
        elif new is None:
            lines.append(f"{path}: removed")
        else:
            changed = [f"{f} {o!r} -> {n!r}" for f, o, n in zip(FIELDS, old, new, strict=True) if o != n]
            lines.append(f"{path}: " + ", ".join(changed))
    if total > len(lines):
        lines.append(f"... and {total - len(lines)} more difference(s)")
    return lines
