"""`FieldsJson`: the base of a verb's result dataclass whose `--json` output is its fields as they are."""

from __future__ import annotations

from dataclasses import fields


class FieldsJson:
    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
