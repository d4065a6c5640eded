"""The JSON schemas migrator ships (migrator/schemas/*.schema.json): their bytes, and a document's errors
against one of them in path order. jsonschema costs ~50 ms to import, so it is loaded only when a
document is actually validated (plan/load.py, catalog/manifest.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


@cache
def schema_bytes(name: str) -> bytes:
    return (SCHEMA_DIR / f"{name}.schema.json").read_bytes()


@cache
def _validator(name: str, check_formats: bool):
    from jsonschema import Draft202012Validator, FormatChecker

    return Draft202012Validator(json.loads(schema_bytes(name)),
                                format_checker=FormatChecker() if check_formats else None)


def errors(name: str, doc: object, *, check_formats: bool = False) -> list:
    """jsonschema's errors of `doc` against schema `name`, sorted by their path in the document."""
    return sorted(_validator(name, check_formats).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
