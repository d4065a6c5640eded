"""Where migrator keeps its state: /var/lib/migrator (mode 0700) or $MIGRATOR_STATE_DIR."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/migrator"
# Unix socket paths are limited to 108 bytes, so sockets live under a short runtime dir, not the state dir.
RUNTIME_ROOT = "/run/migrator"


def state_dir(create: bool = True) -> Path:
    path = Path(os.environ.get("MIGRATOR_STATE_DIR", DEFAULT_STATE_DIR))
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkdir's mode is masked by umask and ignored for existing dirs; enforce 0700 (it holds the
        # secrets path, the journal and the operation history).
        if (path.stat().st_mode & 0o777) != 0o700:
            path.chmod(0o700)
    return path


def runtime_dir(host_name: str) -> Path:
    """Short per-(state dir, Host) directory for the Host container's inner engine socket."""
    key = hashlib.sha256(f"{state_dir(create=False).resolve()}\0{host_name}".encode()).hexdigest()[:12]
    path = Path(os.environ.get("MIGRATOR_RUNTIME_DIR", RUNTIME_ROOT)) / key
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
