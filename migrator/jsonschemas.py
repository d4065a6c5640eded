"""The JSON schemas migrator ships (migrator/schemas/*.schema.json): their bytes and a document's errors.

jsonschema (~50 ms to import) is loaded only when a document is validated. Its `pattern` keyword is
replaced (`ecma_pattern`) to keep JSON Schema's `$`: with Python's, a name ending in a newline passed."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


@cache
def schema_bytes(name: str) -> bytes:
    return (SCHEMA_DIR / f"{name}.schema.json").read_bytes()


@cache
def ecma_pattern(pattern: str) -> re.Pattern:
    """A schema `pattern` compiled with JSON Schema's (ECMA-262) meaning of `$`: the very end of the string.
    Python's `$` also matches before a final newline, so "web" + newline would pass "^[a-z]+$": every `$`
    outside a character class becomes backslash-Z."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            j = i + 1 + (pattern[i + 1:i + 2] == "^")
            j += pattern[j:j + 1] == "]"  # for Python's re, a ] first in a class is a member, not its end
            out.append(pattern[i:j])
            i, in_class = j, True
            continue
        if in_class:
            in_class = c != "]"
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return re.compile("".join(out))


@cache
def plan_definition(name: str) -> dict:
    """One of the plan schema's `$defs`, for values that arrive outside a plan but follow the same rule (a
    move agent's volume names, `load-dump --as`, event URLs in the secrets file)."""
    return json.loads(schema_bytes("plan"))["$defs"][name]


def plan_pattern(name: str) -> re.Pattern:
    """The `pattern` of the plan schema's `$defs[name]`, with JSON Schema's meaning of `$`."""
    return ecma_pattern(plan_definition(name)["pattern"])


def _pattern_keyword(validator, pattern, instance, schema):
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator(name: str, check_formats: bool):
    from jsonschema import Draft202012Validator, FormatChecker, validators

    strict = validators.extend(Draft202012Validator, {"pattern": _pattern_keyword})
    return strict(json.loads(schema_bytes(name)), format_checker=FormatChecker() if check_formats else None)


def errors(name: str, doc: object, *, check_formats: bool = False) -> list:
    """jsonschema's errors of `doc` against schema `name`, sorted by their path in the document."""
    return sorted(_validator(name, check_formats).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
