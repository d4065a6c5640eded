"""Documents known to conform to their JSON schema: a small persistent set of sha256 keys in the state dir.

plan/load.py asks it before validating a plan or secrets file against its schema, and adds a key when one
passes. A key covers the schema's bytes and the document's bytes, so any change to either is a miss. Only
the schema verdict is remembered; the special checks (which also look at the data dirs) always run."""

from __future__ import annotations

import json
from pathlib import Path

from migrator.state.files import write_json

FILE = "conforming-docs.json"
KEEP = 32  # a VSN has one plan and one secrets file; a few old versions are plenty


class ConformingDocs:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        try:
            keys = json.loads(self.path.read_text())
        except (OSError, ValueError):
            keys = []
        self._keys = [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        """Remember `key` (newest first). Best effort: a state dir that cannot be written only costs time."""
        self._keys = [key, *(k for k in self._keys if k != key)][:KEEP]
        try:
            write_json(self.path, self._keys)
        except OSError:
            pass
