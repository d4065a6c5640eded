"""What an archive member may be and where it may land: the safety rules every snapshot keeps.

Shared by both ends, so capture never writes an archive that restore would refuse. The rules and why
no chain of accepted symlinks can escape the root: docs/snapshots.md#inside-the-objects."""

from __future__ import annotations

import os
import stat
from array import array
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
    split = name.split("/")
    # Most names have no empty or "." component: no filtering pass (this runs once per member).
    parts = tuple(p for p in split if p not in ("", ".")) if "" in split or "." in split else tuple(split)
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


class PathHashSet:
    """A set of paths that keeps only each path's 64-bit hash: 8 bytes a slot in one flat array, at most
    half full: 16-32 bytes a path (a dict of the paths themselves cost ~115, 115 MB for a million files).

    Two paths with the same 64-bit hash count as one: for a million paths the odds that any two collide
    are ~1 in 40 million per stream, and the guard's use of it is safe either way (see MemberGuard).
    No removal: the guard never needs one."""

    __slots__ = ("_slots", "_mask", "_used")
    _INITIAL = 1 << 12

    def __init__(self):
        self._slots = array("q", bytes(8 * self._INITIAL))
        self._mask = self._INITIAL - 1
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def add(self, path: str) -> None:
        h = hash(path) or 1  # 0 marks an empty slot
        slots, mask = self._slots, self._mask
        i = h & mask
        while (s := slots[i]) != h:  # linear probing (inlined: this runs once per regular file)
            if not s:
                slots[i] = h
                self._used += 1
                if 2 * self._used > mask:
                    self._grow()
                return
            i = (i + 1) & mask

    def __contains__(self, path: str) -> bool:
        h = hash(path) or 1
        slots, mask = self._slots, self._mask
        i = h & mask
        while (s := slots[i]) != h:
            if not s:
                return False
            i = (i + 1) & mask
        return True

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("q", bytes(16 * len(old)))
        mask = self._mask = 2 * len(old) - 1
        for h in old:
            if h:
                i = h & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = h


class MemberGuard:
    """Checks members one by one, in stream order, against the destination they are extracted into.

    The model holds every path this stream created or implied (ancestors GNU tar will create):
    directories and symlinks in `kinds` (they are few; every rule about passing through a path needs
    them exactly), regular files and hard links in `files` (a PathHashSet: a kind in `kinds` overrides
    it). A hash collision there can only make the guard take a path for an earlier regular file: it
    then refuses a valid archive (a directory where that "file" is) or lets a hard link name a path no
    earlier member created, which GNU tar then fails to link or links to a file inside dest, no worse
    than any hard link it accepts. A path in neither is looked up on disk, where nothing but this
    stream changes it (deletions ran before).
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
        self.files = PathHashSet()
        self.symlinks: list[str] = []

    def _kind(self, key: str) -> str | None:
        kind = self.kinds.get(key)
        if kind is not None:
            return kind
        if key in self.files:
            return FILE
        if self.fresh:
            return None
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
        # A file over an earlier file is fine: in a fresh dest only a directory or symlink there matters.
        current = self.kinds.get(key) if kind == FILE and self.fresh else self._kind(key)
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
            if not link_parts or target in self.kinds or target not in self.files:
                raise Refused(f"hard link to {target!r}, which is not an earlier regular member")
        if kind == FILE:
            self.files.add(key)
            if current == LINK:
                self.kinds.pop(key, None)  # a file replaces the symlink (tar unlinks it first)
        else:
            self.kinds[key] = kind
