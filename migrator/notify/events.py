"""The one event model: what an operation tells the world while it runs, as JSON lines in events.jsonl.

A file rather than a socket: operations run from cron, a shell or `serve` alike, each a process of its
own, and none of them may wait for a listener. An append of one line below PIPE_BUF is atomic between
writers. Text fields pass `scrub` first: no secret ever reaches the file, a page or a webhook."""

from __future__ import annotations

import json
import os
import secrets as _random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from migrator.state import registry
from migrator.state.history import redact_args

VERSION = 1
KINDS = ("started", "step", "progress", "state", "finished")
# One generation is ~1 MiB: thousands of operations with their steps, read whole by a new follower fast.
MAX_BYTES = 1 << 20
# A single write below PIPE_BUF (4096 on Linux) is atomic with O_APPEND; longer text is cut to stay below.
MAX_LINE = 4000
MAX_TEXT = 1000
# Progress (bytes) events at most this often per operation: a live bar needs no more, the file stays small.
PROGRESS_INTERVAL_S = 1.0
# Result fields a finished event may carry (never the whole result: it can be large).
RESULT_FIELDS = ("snapshot_id", "downtime", "bytes", "state", "healthy", "failures", "rto_seconds", "target")


def log_path() -> Path:
    return registry.EVENTS.path


def new_op_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{_random.token_hex(4)}"


def scrub(text: str | None, secret_values: Iterable[str] = ()) -> str | None:
    """`text` with secret values and credential-looking parts replaced by ***, cut to MAX_TEXT."""
    if text is None:
        return None
    return redact_args([str(text)[:MAX_TEXT]], secret_values)[0]


def scrub_all(value, secret_values: Iterable[str] = ()):
    """`scrub` applied to every string inside a JSON-like value."""
    secret_values = list(secret_values)
    if isinstance(value, str):
        return scrub(value, secret_values)
    if isinstance(value, dict):
        return {str(k): scrub_all(v, secret_values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_all(v, secret_values) for v in value]
    return value


def make(kind: str, op: str, verb: str, **fields) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return {"v": VERSION, "time": round(time.time(), 3), "kind": kind, "op": op, "verb": verb,
            **{k: v for k, v in fields.items() if v is not None}}


def append(event: dict, path: Path | None = None) -> None:
    """Append one event line (rotating first when the file is full). Raises OSError; callers treat a
    failure as a warning, never as the operation's failure."""
    path = path or log_path()
    line = json.dumps(event, sort_keys=True, default=str, allow_nan=False)
    if len(line) > MAX_LINE:
        event = {k: v for k, v in event.items() if k in ("v", "time", "kind", "op", "verb", "outcome", "exit_code")}
        line = json.dumps({**event, "truncated": True}, sort_keys=True)
    try:
        if path.stat().st_size >= MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def read_recent(limit: int = 200, path: Path | None = None) -> list[dict]:
    """The newest `limit` events, oldest first (the older generation too when the current one is short)."""
    path = path or log_path()
    lines: list[bytes] = []
    for p in (path.with_name(path.name + ".1"), path):
        try:
            lines += p.read_bytes().splitlines()
        except FileNotFoundError:
            continue
    parsed = [e for e in (_parse(raw) for raw in lines) if e is not None]
    return parsed[-limit:] if limit > 0 else []


def _parse(raw: bytes) -> dict | None:
    """An event line, or None for anything that is not one (a torn or hostile line is skipped)."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("kind") not in KINDS or not isinstance(event.get("op"), str):
        return None
    return event


def follow(path: Path | None = None, poll: float = 0.25, stop=lambda: False,
           from_end: bool = True) -> Iterator[dict | None]:
    """Events appended from now on (or from the start with from_end=False), following rotation; yields
    None on every idle poll so a caller can send keep-alives or check for its own end."""
    path = path or log_path()
    fh, ino, buf = None, None, b""
    first = True
    while not stop():
        if fh is None:
            try:
                fh = open(path, "rb")
                ino = os.fstat(fh.fileno()).st_ino
                if first and from_end:
                    fh.seek(0, os.SEEK_END)
            except FileNotFoundError:
                fh = None
            first = False
        chunk = fh.read() if fh is not None else b""
        if chunk:
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                event = _parse(raw)
                if event is not None:
                    yield event
            continue
        try:
            st = os.stat(path)
            rotated = fh is None or st.st_ino != ino or st.st_size < fh.tell()
        except FileNotFoundError:
            rotated = False
        if rotated and fh is not None:
            fh.close()
            fh, buf = None, b""
            continue
        yield None
        time.sleep(poll)
    if fh is not None:
        fh.close()
