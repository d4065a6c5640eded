"""What an archive member may be and where it may land: the safety rules of DESIGN.md §4.

Owns the rules shared by both ends, so that capture never writes an archive that restore would refuse:
- `member_parts`: a member or link name is relative, without `..`; `.` and empty components are dropped.
- `symlink_refusal`: a symlink target is relative and climbs (`..`) only at its start and never above the
  archive root. Because `..` may not follow a name, resolving any accepted link only ever climbs real
  directories, so no chain of accepted links can lead outside the root, whatever order they arrive in.
- `MemberGuard` (extraction): tracks what this stream has created on top of what the destination already
  holds (phase 2 lands on phase 1), and refuses a member that would pass through a symlink, replace a
  directory, turn a symlink into a directory, or hard-link to anything but an earlier regular member.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR, FILE, LINK = "directory", "file", "symlink"


class Refused(Exception):
    """A member breaks a rule; `str(exc)` says which. Callers wrap it in their own MigratorError."""


def member_parts(name: str) -> tuple[str, ...]:
    """The components of a member (or hard-link target) name; () is the archive root itself."""
    if not name:
        raise Refused("empty member name")
    if name.startswith("/"):
        raise Refused("absolute path")
    if "\x00" in name:
        raise Refused("NUL byte in name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused("'..' component in path")
    return parts


def symlink_refusal(parts: tuple[str, ...], target: str) -> str | None:
    """Why a symlink at `parts` pointing to `target` is refused, or None if it is safe."""
    if not target:
        return "empty symlink target"
    if target.startswith("/"):
        return f"symlink target {target!r} is absolute"
    if "\x00" in target:
        return "NUL byte in symlink target"
    ups = 0
    for i, comp in enumerate(c for c in target.split("/") if c not in ("", ".")):
        if comp == "..":
            if i != ups:
                return f"symlink target {target!r} has '..' after a name"
            ups += 1
    if ups > max(len(parts) - 1, 0):
        return f"symlink target {target!r} leads outside the archive root"
    return None


class MemberGuard:
    """Checks members one by one, in stream order, against the destination they are extracted into.

    The model (`kinds`) holds every path this stream created or implied (ancestors GNU tar will create);
    a path not in it is looked up on disk, where nothing but this stream changes it (deletions ran before).
    Ancestors are checked from the root down, so `lstat` never runs through a symlink. With `fresh=True`
    (the caller verified that dest was empty before this stream started) the model is the whole truth
    and the disk is never consulted.

    A path is DIR in the model only once all its ancestors were checked to be directories, and a
    directory is never replaced, so a member whose parent is a known DIR skips the ancestor walk.
    """

    def __init__(self, dest: Path, *, fresh: bool = False):
        self.dest = os.fspath(dest)
        self.fresh = fresh
        self.kinds: dict[str, str] = {"": DIR}
        self.symlinks: list[str] = []

    def _kind(self, key: str) -> str | None:
        kind = self.kinds.get(key)
        if kind is not None or self.fresh:
            return kind
        try:
            st = os.lstat(os.path.join(self.dest, key))
        except FileNotFoundError:
            return None
        kind = DIR if stat.S_ISDIR(st.st_mode) else LINK if stat.S_ISLNK(st.st_mode) else FILE
        if kind == DIR:
            self.kinds[key] = DIR  # cache: a directory is never replaced (see check)
        return kind

    def _check_ancestors(self, parts: tuple[str, ...], what: str) -> None:
        for i in range(1, len(parts)):
            key = "/".join(parts[:i])
            kind = self._kind(key)
            if kind is None:
                self.kinds[key] = DIR  # GNU tar creates missing parents as directories
            elif kind == LINK:
                raise Refused(f"{what} passes through the symlink {key!r}")
            elif kind != DIR:
                raise Refused(f"{what} passes through the non-directory {key!r}")

    def check(self, parts: tuple[str, ...], kind: str, *, symlink_target: str | None = None,
              link_parts: tuple[str, ...] | None = None) -> None:
        """Accept the member (and record it) or raise Refused. `kind` is DIR, FILE or LINK; a hard link
        is kind FILE with `link_parts` set."""
        key = "/".join(parts)
        if self.kinds.get(key.rpartition("/")[0]) != DIR:
            self._check_ancestors(parts, "path")
        current = self._kind(key)
        if kind == DIR:
            if current not in (None, DIR):
                raise Refused(f"would turn the {current} {key!r} into a directory")
        else:
            if not parts:
                raise Refused("the archive root must be a directory")
            if current == DIR:
                raise Refused(f"would replace the directory {key!r} with a {kind}")
        if kind == LINK:
            reason = symlink_refusal(parts, symlink_target or "")
            if reason:
                raise Refused(reason)
            self.symlinks.append(key)
        if link_parts is not None:
            target = "/".join(link_parts)
            if not link_parts or self.kinds.get(target) != FILE:
                raise Refused(f"hard link to {target!r}, which is not an earlier regular member")
        self.kinds[key] = kind
