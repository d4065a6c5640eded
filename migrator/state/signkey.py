"""This VSN's snapshot signing key: ed25519, created on first use, `<state dir>/signing/ed25519.key` (0600).

The private key never leaves this file: not into a snapshot, a log, argv or an error message (errors
name the path only)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from migrator.durable import fsync_dir
from migrator.errors import PreflightFailed
from migrator.state import registry

KEY_FILE = "ed25519.key"
MAX_KEY_BYTES = 4096


def key_path() -> Path:
    return registry.SIGNING.path / KEY_FILE


def load_or_create():
    """(the private key, whether it was created now). Two first uses at once agree on one key: the new
    file is linked into place, never renamed over one another process made."""
    path = key_path()
    if path.exists() or path.is_symlink():
        return _load(path), False
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_name(f".{KEY_FILE}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return _load(path), created


def _load(path: Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise PreflightFailed(f"cannot read the signing key {path}: {exc.strerror}",
                              hint="it must be a regular file owned by the user migrator runs as") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PreflightFailed(f"the signing key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise PreflightFailed(f"the signing key {path} is readable by others (mode {st.st_mode & 0o777:o})",
                                  hint=f"chmod 600 {path}; if others could read it, treat it as leaked: remove "
                                       f"it (a new one is made), record the new public key and drop the old one "
                                       f"from backup.trusted_keys")
        data = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    try:
        key = load_pem_private_key(data, password=None) if len(data) <= MAX_KEY_BYTES else None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        # Never the file's content: it is (or was meant to be) a private key.
        raise PreflightFailed(f"the signing key {path} is damaged (not an ed25519 private key in PEM)",
                              hint="restore it from your own copy, or remove it: a new key is made and its "
                                   "public key must be recorded in backup.trusted_keys")
    return key
