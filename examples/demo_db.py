"""The demo's database client: commits numbered, checksummed rows to the demo's MariaDB while migrator
backs it up, and checks a restored database holds an intact prefix of them.

    demo_db.py load --port 13306 --state FILE   commit rows until FILE.stop exists; FILE (JSON) says how
                                                 many were acknowledged and, per outage, the last one
                                                 acknowledged before the server went away
    demo_db.py check --port 13306 [--database app]
                                                 print N after checking rows 1..N are all there, intact

The password comes from the MIGRATOR_DEMO_DB_PASSWORD environment variable (the demo reads it from its
secrets file), never from argv."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pymysql


def connect(port: int, database: str = "app", deadline: float = 300):
    until = time.monotonic() + deadline
    while True:
        try:
            return pymysql.connect(host="127.0.0.1", port=port, user="app", database=database,
                                   password=os.environ["MIGRATOR_DEMO_DB_PASSWORD"], connect_timeout=5,
                                   read_timeout=30, write_timeout=30, autocommit=False)
        except pymysql.err.OperationalError:
            if time.monotonic() > until:
                raise
            time.sleep(0.2)  # the server is starting or stopped for a backup: retry until the deadline


def load(port: int, state: Path) -> None:
    conn = connect(port)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS ledger (seq BIGINT PRIMARY KEY, payload VARCHAR(1024) NOT NULL, "
                    "digest CHAR(64) NOT NULL) ENGINE=InnoDB")
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
        acked = int(cur.fetchone()[0])
    conn.commit()
    outages: list[int] = []
    stop = state.with_name(state.name + ".stop")
    last_save = 0.0
    while not stop.exists():
        try:
            n = acked + 1
            payload = os.urandom(32).hex() * (1 + n % 4)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO ledger VALUES (%s, %s, %s)",
                            (n, payload, hashlib.sha256(payload.encode()).hexdigest()))
            conn.commit()
            acked = n
        except pymysql.err.MySQLError:
            outages.append(acked)
            conn = connect(port)
            with conn.cursor() as cur:  # a commit in flight when the server went down may have made it
                cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
                acked = int(cur.fetchone()[0])
            conn.commit()
        if time.monotonic() - last_save > 0.2 or stop.exists():
            tmp = state.with_name(state.name + ".tmp")
            tmp.write_text(json.dumps({"acked": acked, "outages": outages}))
            tmp.replace(state)
            last_save = time.monotonic()
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(json.dumps({"acked": acked, "outages": outages, "stopped": True}))
    tmp.replace(state)


def check(port: int, database: str) -> int:
    conn = connect(port, database, deadline=60)
    with conn.cursor() as cur:
        cur.execute("SELECT seq, payload, digest FROM ledger ORDER BY seq")
        rows = cur.fetchall()
    for i, (seq, payload, digest) in enumerate(rows, start=1):
        if seq != i:
            sys.exit(f"demo_db: ledger gap in {database}: row {i} holds seq {seq}")
        if hashlib.sha256(payload.encode()).hexdigest() != digest:
            sys.exit(f"demo_db: row {seq} of {database} is not intact")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_load = sub.add_parser("load")
    p_load.add_argument("--port", type=int, required=True)
    p_load.add_argument("--state", type=Path, required=True)
    p_check = sub.add_parser("check")
    p_check.add_argument("--port", type=int, required=True)
    p_check.add_argument("--database", default="app")
    args = parser.parse_args()
    if args.cmd == "load":
        load(args.port, args.state)
    else:
        print(check(args.port, args.database))


if __name__ == "__main__":
    main()
