"""A snapshot's tree-state object: a TreeState sealed like the data (zstd, then age when encrypted).

Read back from an untrusted store: size capped and sha256 checked before anything parses it, then loaded
untrusted. Encrypted, because it names the same paths the data does."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from migrator.archive._proc import tool_env
from migrator.archive.capture import age_encrypt_argv
from migrator.archive.treestate import TreeState
from migrator.errors import ArchiveError, IntegrityError

READ_CHUNK = 1024 * 1024
# How long age may take for one tree state (a few hundred MB at most): generous, but never forever.
AGE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Sealed:
    path: Path  # the object as it goes to the stores
    size: int
    sha256: str
    entries: int


def seal(state: TreeState, path: Path, recipients: Sequence[str] = (), plain: Path | None = None) -> Sealed:
    """Write `state` to `path` as a tree-state object (encrypted when `recipients` are given). With
    `plain`, the unencrypted serialisation is also left there (hard-linked to `path` when not encrypted)."""
    path = Path(path)
    source = Path(plain) if plain is not None else path.with_name(path.name + ".plain")
    with open(source, "wb") as fh:
        state.write(fh)
    try:
        if recipients:
            _age([*age_encrypt_argv(recipients), "--output", os.fspath(path), os.fspath(source)], "encrypt")
        else:
            path.unlink(missing_ok=True)
            os.link(source, path)
    finally:
        if plain is None:
            source.unlink(missing_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Sealed(path, size, digest.hexdigest(), len(state))


def unseal(reader: BinaryIO, *, size: int, sha256: str, encrypted: bool, identity_file: Path | None,
           workdir: Path, where: str, owner: str | None = None) -> TreeState:
    """Read a tree-state object of `size` bytes from `reader` into `workdir`, check its sha256, decrypt
    and load it untrusted; with `owner`, it must name that "<vsn>/<snapshot id>/<volume>" (an older tree
    state replayed into a newer snapshot is refused). Any mismatch or malformation is an IntegrityError;
    the files are removed."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = workdir / "tree.object"
    plain = workdir / "tree.plain"
    try:
        digest, got = hashlib.sha256(), 0
        with open(raw, "wb") as fh:
            while chunk := reader.read(READ_CHUNK):
                got += len(chunk)
                if got > size:
                    raise IntegrityError(f"tree state {where} is larger than its manifest says ({size} bytes)")
                digest.update(chunk)
                fh.write(chunk)
        if got != size or digest.hexdigest() != sha256:
            raise IntegrityError(f"tree state {where} does not match its manifest (size or sha256)")
        if encrypted:
            if identity_file is None:
                raise IntegrityError(f"tree state {where} is encrypted and no identity is at hand")
            _age(["age", "--decrypt", "--identity", os.fspath(identity_file), "--output", os.fspath(plain),
                  os.fspath(raw)], "decrypt", IntegrityError)
            raw.unlink()
        state = TreeState.load(plain if encrypted else raw, untrusted=True)
        if owner is not None and state.owner != owner:
            raise IntegrityError(f"tree state {where} is the tree of {state.owner[:200]!r}, not of {owner!r}")
        return state
    finally:
        raw.unlink(missing_ok=True)
        plain.unlink(missing_ok=True)


def _age(argv: list[str], what: str, error=ArchiveError) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, env=tool_env(), timeout=AGE_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ArchiveError("`age` is not installed", hint="apt-get install age") from None
    except subprocess.TimeoutExpired:
        raise error(f"age did not {what} a tree state within {AGE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise error(f"age could not {what} a tree state: {detail[0][:200]}")
