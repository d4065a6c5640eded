"""Documents known to conform to their JSON schema: a persistent set of sha256 keys in the state dir.

A key covers the validator's rules, the schema's and the document's bytes, so any change is a miss. Only
the schema verdict is kept; the checks a schema cannot express always run."""

from __future__ import annotations

import hashlib
from pathlib import Path

from migrator import strictjson
from migrator.state.files import write_json
from migrator.state.paths import state_dir

FILE = "conforming-docs.json"
# The validator's own rules, beyond the schema's bytes: bump when they change, so a verdict an older
# validator gave is not trusted. 2: schema patterns keep JSON Schema's meaning of `$` (jsonschemas.py).
RULES = 2
KEEP = 256  # one plan, one secrets file, the manifests of the snapshots in the stores (64 hex chars each)


class ConformingDocs:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        try:
            keys = strictjson.loads(self.path.read_bytes())
        except (OSError, ValueError):
            keys = []
        self._keys = [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []

    @staticmethod
    def key(schema: bytes, doc: bytes) -> str:
        return hashlib.sha256(b"rules %d;%d:" % (RULES, len(schema)) + schema + doc).hexdigest()

    def knows(self, schema: bytes, doc: bytes) -> bool:
        return self.key(schema, doc) in self._keys

    def add(self, schema: bytes, doc: bytes) -> None:
        """Remember that `doc` conforms to `schema` (newest first). Best effort: a state dir that cannot be
        written only costs time."""
        key = self.key(schema, doc)
        self._keys = [key, *(k for k in self._keys if k != key)][:KEEP]
        try:
            write_json(self.path, self._keys)
        except OSError:
            pass


def remembered() -> ConformingDocs:
    """The verdicts kept in this VSN's state dir."""
    return ConformingDocs(state_dir())
