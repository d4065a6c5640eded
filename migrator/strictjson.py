"""Strict JSON for every document migrator reads from a file or a store.

Python's json accepts what RFC 8259 does not (NaN, duplicate keys, huge ints, deep nesting) or fails as a
bug; `loads` refuses those as `Refused`, naming each problem by its JSON path (`json_path`)."""

from __future__ import annotations

import json
import math
import re

# Our documents are a few levels deep (a manifest 4, a plan 7); anything much deeper is not ours.
MAX_DEPTH = 64
# The biggest number any of our documents holds is a byte count (20 digits).
MAX_INT_DIGITS = 100

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class Refused(ValueError):
    """The document is JSON Python could read, but not a document we accept. `problems`: one
    "<json path>: <what>" line each; str() is the first."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0])
        self.problems = problems


def json_path(parts) -> str:
    """['services', 2, 'volumes_from', 0] -> 'services[2].volumes_from[0]'. A key that is not a plain name
    is quoted as JSON (env["A;B"]), so a hostile key can neither blur the path nor inject a line."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part)[:64])}]"
    return out or "(root)"


class _Bad:
    """Stands in for a value the parser must not return; `_find` reports it with its path."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


def loads(data: bytes | str) -> object:
    """Parse `data` (UTF-8 bytes or text) strictly; json.JSONDecodeError for what is not JSON at all,
    UnicodeDecodeError for bytes that are not UTF-8, `Refused` for the rest, each problem by its JSON path:
    - NaN, Infinity, -Infinity, and numbers that overflow to infinity (1e999): a NaN never compares, so a
      NaN limit would never fire;
    - duplicate keys in one object: json keeps the last one silently, an ambiguous document;
    - integers longer than MAX_INT_DIGITS digits (Python's int() refuses 4,300 with a bare ValueError);
    - nesting deeper than MAX_DEPTH (the parser raises RecursionError near 1,000 levels; every later
      consumer, a schema check or a repr, could too).
    The paths use `json_path`'s notation: services[2].volumes_from[0], env["A;B"]."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    found = [0]

    def bad(why: str) -> _Bad:
        found[0] += 1
        return _Bad(why)

    def pairs(items: list) -> dict:
        out: dict = {}
        for key, value in items:
            out[key] = bad(f"duplicate key {json.dumps(key[:64])}") if key in out else value
        return out

    def integer(digits: str) -> int | _Bad:
        if len(digits.lstrip("-")) > MAX_INT_DIGITS:
            return bad(f"an integer of {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
        return int(digits)

    def number(digits: str) -> float | _Bad:
        value = float(digits)
        return value if math.isfinite(value) else bad(f"the number {digits[:20]} is out of range")

    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_int=integer, parse_float=number,
                         parse_constant=lambda name: bad(f"{name} is not JSON"))
    except RecursionError:
        raise Refused([f"(root): nested deeper than {MAX_DEPTH} levels"]) from None
    problems = _find(doc, found[0])
    if problems:
        raise Refused(problems)
    return doc


def _find(doc: object, bad: int) -> list[str]:
    """Problems of a parsed document: its _Bad stand-ins, and nesting beyond MAX_DEPTH. Iterative, so a
    deep document cannot exhaust the stack here."""
    problems: list[str] = []
    stack: list[tuple[object, tuple]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Bad):
            problems.append(f"{json_path(path)}: {node.why}")
            continue
        if not isinstance(node, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            return [f"{json_path(path[:8])}: nested deeper than {MAX_DEPTH} levels (below this path)"]
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((value, (*path, key)) for key, value in items if bad or isinstance(value, dict | list))
    return sorted(problems)
