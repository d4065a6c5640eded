"""storage: snapshot stores behind one interface; `get_store(url)` picks the backend by URL scheme.

Backends are imported lazily, so `file://` users never import boto3 or paramiko."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from migrator.errors import UsageError
from migrator.storage.base import (
    ObjectWriter,
    SnapshotStore,
    check_key,
    is_hidden_name,
)

if TYPE_CHECKING:
    from migrator.retry import RetryPolicy

__all__ = [
    "ObjectWriter",
    "SnapshotStore",
    "check_key",
    "get_store",
    "is_hidden_name",
    "open_stores",
    "options_for",
]

# scheme -> (module, class). One module per backend, like borgstore's backends/.
_BACKENDS = {
    "file": ("migrator.storage.local", "LocalStore"),
    "s3": ("migrator.storage.s3", "S3Store"),
    "ssh": ("migrator.storage.ssh", "SSHStore"),
}


def get_store(url: str, *, options: dict[str, Any] | None = None, retry_policy: RetryPolicy | None = None) -> SnapshotStore:
    """Return the store for `url`. No network traffic happens here; call `check()` to probe the store.

        file:///abs/path                      -> local.LocalStore
        s3://bucket[/prefix]                  -> s3.S3Store     (options: the plan's backup.s3 section)
        ssh://[user@]host[:port]/abs/path     -> ssh.SSHStore   (options: the plan's backup.ssh section)

    `options` is the plan's `backup.<scheme>` section (see `options_for`) plus, for tests, backend
    extras (ssh: identity_file, known_hosts_file, ssh_config_file; s3: part_size). `retry_policy`
    overrides the backend's default retry policy (tests inject one with a fake sleep).
    Raises UsageError (exit 2) for an unsupported or malformed URL.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _BACKENDS:
        raise UsageError(
            f"unsupported store URL {url!r}",
            hint="use file:///abs/path, s3://bucket/prefix or ssh://[user@]host[:port]/abs/path",
        )
    module_name, class_name = _BACKENDS[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(url, options=dict(options or {}), retry_policy=retry_policy)


def options_for(url: str, backup_section: dict[str, Any] | None) -> dict[str, Any]:
    """Pick the options sub-section of a plan's `backup` section that applies to `url`'s scheme."""
    scheme = urlsplit(url).scheme.lower()
    return dict((backup_section or {}).get(scheme, {}) or {})


def open_stores(urls: list[str], backup_section: dict[str, Any] | None, *, writable: bool = True) -> list[SnapshotStore]:
    """A store per URL, with its options from the plan's `backup` section. `writable`: checked to answer
    and accept a write, else Unreachable (exit 8) before anything stops. Readers skip the probe write
    (a drill's read-only credentials are enough); their first read reports an unreachable store."""
    stores = []
    for url in urls:
        store = get_store(url, options=options_for(url, backup_section))
        if writable:
            store.check()
        stores.append(store)
    return stores
