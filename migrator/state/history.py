"""Operation history: one row per operation in <state dir>/history.sqlite, read by `migrator log`.

Arguments are redacted before they are stored and the environment is never recorded, so no credential
lands in the log. Columns and redaction: docs/operations.md#operation-history."""

from __future__ import annotations

import json
import os
import pwd
import re
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field

from migrator.state import registry

REDACTED = "***"
# A cron'd health check every 5 minutes writes at most one row per change; other verbs are rare. This
# cap keeps years of history while the file stays small.
MAX_ROWS = 50_000
# Secret values shorter than this are not searched for in arguments: "1" or "no" would redact noise.
MIN_SECRET_LEN = 4

_SECRET_NAME = re.compile(r"(pass(word|wd|phrase)?|token|secret(?!s$)|credential|api[-_]?key|access[-_]?key|"
                          r"private[-_]?key|auth)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]+@")
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
# AWS secret access keys: 40 characters of base64 alphabet with upper, lower and digits mixed.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+=]*[a-z])(?=[A-Za-z0-9/+=]*[A-Z])"
                         r"(?=[A-Za-z0-9/+=]*[0-9])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    verb TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    result TEXT NOT NULL,          -- ok | failed | interrupted
    exit_code INTEGER,
    snapshot_id TEXT,
    downtime TEXT,                 -- JSON {service: seconds}
    bytes INTEGER,
    user TEXT,
    args TEXT NOT NULL,            -- JSON list, redacted
    message TEXT
);
CREATE INDEX IF NOT EXISTS operations_verb ON operations (verb, started);
"""


def redact_args(args: Iterable[str], secret_values: Iterable[str] = ()) -> list[str]:
    """Arguments with anything credential-like replaced by ***; paths, ids and names stay readable."""
    secrets = sorted({v for v in secret_values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)
    out: list[str] = []
    hide_next = False
    for arg in args:
        arg = str(arg)
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-") and not arg.startswith("---"):
            name, eq, _value = arg.partition("=")
            if _SECRET_NAME.search(name):
                if eq:
                    out.append(f"{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        elif "=" in arg and _SECRET_NAME.search(arg.partition("=")[0]) and "://" not in arg.partition("=")[0]:
            out.append(f"{arg.partition('=')[0]}={REDACTED}")
            continue
        for value in secrets:
            arg = arg.replace(value, REDACTED)
        arg = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", arg)
        arg = _AWS_KEY_ID.sub(REDACTED, arg)
        arg = _AWS_SECRET.sub(REDACTED, arg)
        out.append(arg)
    return out


def current_user() -> str:
    """The person behind the run: the authenticated user of `migrator serve` that started it
    (MIGRATOR_ACTOR, set by serve for the runs it starts), else sudo's caller, else the process owner."""
    sudo = os.environ.get("MIGRATOR_ACTOR") or os.environ.get("SUDO_USER")
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = str(os.getuid())
    return f"{sudo} (as {me})" if sudo and sudo != me else me


@dataclass
class Entry:
    verb: str
    started: float
    ended: float | None
    result: str
    exit_code: int | None
    args: list[str]
    user: str = field(default_factory=current_user)
    snapshot_id: str | None = None
    downtime: dict | None = None
    bytes: int | None = None
    message: str | None = None
    id: int | None = None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["duration"] = round(self.ended - self.started, 3) if self.ended is not None else None
        return d


def _connect() -> sqlite3.Connection:
    path = registry.HISTORY.path
    fresh = not path.exists()
    conn = sqlite3.connect(path, timeout=30)  # cron jobs may finish together: wait for the writer
    if fresh:
        os.chmod(path, 0o600)
    conn.executescript(SCHEMA)
    return conn


def record(entry: Entry) -> int:
    with closing(_connect()) as conn, conn:
        cur = conn.execute(
            "INSERT INTO operations (verb, started, ended, result, exit_code, snapshot_id, downtime, bytes, user, "
            "args, message) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (entry.verb, entry.started, entry.ended, entry.result, entry.exit_code, entry.snapshot_id,
             json.dumps(entry.downtime) if entry.downtime is not None else None, entry.bytes, entry.user,
             json.dumps(entry.args), entry.message))
        conn.execute("DELETE FROM operations WHERE id <= ?", (cur.lastrowid - MAX_ROWS,))
        return cur.lastrowid


def _row(r: tuple) -> Entry:
    (id_, verb, started, ended, result, exit_code, snapshot_id, downtime, nbytes, user, args, message) = r
    return Entry(verb=verb, started=started, ended=ended, result=result, exit_code=exit_code,
                 args=json.loads(args), user=user, snapshot_id=snapshot_id,
                 downtime=json.loads(downtime) if downtime else None, bytes=nbytes, message=message, id=id_)


COLUMNS = "id, verb, started, ended, result, exit_code, snapshot_id, downtime, bytes, user, args, message"


def entries(limit: int = 20, verb: str | None = None) -> list[Entry]:
    """Newest first."""
    if not registry.HISTORY.path.exists():
        return []
    with closing(_connect()) as conn:
        if verb:
            rows = conn.execute(f"SELECT {COLUMNS} FROM operations WHERE verb = ? ORDER BY id DESC LIMIT ?",
                                (verb, limit)).fetchall()
        else:
            rows = conn.execute(f"SELECT {COLUMNS} FROM operations ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [_row(r) for r in rows]


def last(verb: str) -> Entry | None:
    found = entries(1, verb)
    return found[0] if found else None
