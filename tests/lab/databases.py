"""Real databases for the lab: plans that run the MariaDB / PostgreSQL lab images on a volume container,
a load generator that commits numbered, checksummed transactions through a real client library (PyMySQL,
psycopg), and checks that read a database back through its own CLI inside the container.

What "consistent" means here: the ledger holds rows 1..N, every one intact (its digest is the sha256 of
its payload), no gap and nothing after N. A snapshot taken while the database was stopped must hold
exactly what had been committed when it stopped: the loader's last acknowledged sequence number before
its first error, or one more (a commit in flight when the server went down may have made it)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.lab.plans import IMAGES
from tests.lab.vsn import free_port

KINDS = ("mariadb", "postgres")
IMAGE = {"mariadb": "localhost/migrator-mariadb:latest", "postgres": "localhost/migrator-postgres:latest"}
PORT = {"mariadb": 3306, "postgres": 5432}
PASSWORD_ENV = {"mariadb": "MARIADB_PASSWORD", "postgres": "POSTGRES_PASSWORD"}
DB_PASSWORD = "db-pa55 'quoted' \\ never logged"  # quotes and a backslash: the entrypoints must escape them
# A probe that runs a real query through the database's own client over its socket.
PROBE = {
    "mariadb": ["mariadb", "--user=root", "--skip-column-names", "--execute=SELECT 1"],
    "postgres": ["psql", "--host=/run/postgresql", "--username=postgres", "--dbname=app", "--tuples-only",
                 "--command=SELECT 1"],
}
# First start initialises the data dir (initdb / mariadb-install-db): give it time on a loaded 2-core box.
START_TIMEOUT = 180


def db_plan(vsn, kind: str, *, name: str = "dbt", quiesce: str = "two-phase", dump: bool = True,
            host: bool = False) -> dict:
    """A plan with one database service on the volume `dbdata` (mount `data` at /data), its port
    published on 127.0.0.1, a real-query health probe and (by default) a dump section."""
    port = free_port()
    service = {
        "name": "db",
        "image": IMAGE[kind],
        "env_secrets": {PASSWORD_ENV[kind]: "db_password"},
        "volumes_from": ["dbdata"],
        "ports": [{"host": port, "container": PORT[kind]}],
        "health": {"type": "cmd", "command": PROBE[kind], "timeout": START_TIMEOUT, "interval": 0.5},
        "quiesce": quiesce,
        "stop_timeout": 60,
    }
    if dump:
        service["dump"] = {"kind": kind, "databases": ["app"], "user": "app", "password_secret": "db_password"}
    raw = {
        "version": 1,
        "vsn": {"name": name, "engine": "podman", "socket": vsn.socket_url, "data_root": str(vsn.data_root),
                "min_free": "64M"},
        "network": f"{name}-net",
        "volumes": [{"name": "dbdata", "image": IMAGES["busybox"], "mounts": [{"name": "data", "path": "/data"}]}],
        "services": [service],
    }
    if host:
        raw["host"] = {"name": f"{name}-host", "image": IMAGES["host"], "options": {"privileged": True,
                                                                                    "startup_timeout": 90}}
    return raw


def db_port(raw: dict) -> int:
    return raw["services"][0]["ports"][0]["host"]


def secrets_values() -> dict:
    return {"db_password": DB_PASSWORD}


# -- the load generator ---------------------------------------------------------------------------------

def _connect(kind: str, port: int):
    if kind == "mariadb":
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=port, user="app", password=DB_PASSWORD, database="app",
                               connect_timeout=5, read_timeout=120, write_timeout=120, autocommit=False)
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=port, user="app", password=DB_PASSWORD, dbname="app",
                           connect_timeout=5)


CREATE = {
    "mariadb": "CREATE TABLE IF NOT EXISTS ledger (seq BIGINT PRIMARY KEY, payload VARCHAR(1024) NOT NULL, "
               "digest CHAR(64) NOT NULL) ENGINE=InnoDB",
    "postgres": "CREATE TABLE IF NOT EXISTS ledger (seq BIGINT PRIMARY KEY, payload VARCHAR(1024) NOT NULL, "
                "digest CHAR(64) NOT NULL)",
}


@dataclass
class Outage:
    acked_before: int  # the last sequence number acknowledged before the first failed statement
    started: float
    ended: float | None = None
    resumed_from: int | None = None  # the highest row the server held when the loader got back in


@dataclass
class Loader:
    """Commits one ledger row per transaction, as fast as the server takes them, until stopped; survives
    the server going away (a backup's stop, a restore's swap) by reconnecting, and then continues after the
    highest row the server holds (a commit in flight at the failure may or may not have made it)."""

    kind: str
    port: int
    acked: int = 0
    outages: list[Outage] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, ready_rows: int = 50, timeout: float = 120) -> Loader:
        conn = self._connect_retrying(time.monotonic() + timeout)
        with conn.cursor() as cur:
            cur.execute(CREATE[self.kind])
        conn.commit()
        self._thread = threading.Thread(target=self._run, args=(conn,), name="db-loader", daemon=True)
        self._thread.start()
        self.wait_for(lambda: self.acked >= ready_rows, timeout, f"{ready_rows} committed rows")
        return self

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.error is not None:
                raise AssertionError(f"the loader failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the loader did not reach {what} in {timeout}s (acked {self.acked})")
            time.sleep(0.05)  # polling the loader's progress, bounded by the deadline

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        if self.error is not None:
            raise AssertionError(f"the loader failed: {self.error!r}")
        return self.acked

    def _connect_retrying(self, deadline: float):
        while True:
            try:
                return _connect(self.kind, self.port)
            except Exception:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                time.sleep(0.2)  # the server is (re)starting: retry until the deadline

    def _run(self, conn) -> None:
        n = self.acked
        try:
            while not self._stop.is_set():
                try:
                    n += 1
                    payload = os.urandom(48).hex() * (1 + n % 5)
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO ledger (seq, payload, digest) VALUES (%s, %s, %s)",
                                    (n, payload, hashlib.sha256(payload.encode()).hexdigest()))
                    conn.commit()
                    self.acked = n
                except Exception:
                    self.outages.append(Outage(acked_before=self.acked, started=time.time()))
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001 - the connection is already broken
                        pass
                    conn = self._connect_retrying(time.monotonic() + 300)
                    with conn.cursor() as cur:
                        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
                        n = int(cur.fetchone()[0])
                    conn.commit()
                    self.acked = n
                    self.outages[-1].resumed_from = n
                    self.outages[-1].ended = time.time()
        except BaseException as exc:  # handed to the test thread (unless it asked us to stop meanwhile)
            if not self._stop.is_set():
                self.error = exc
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


# -- reading a database back through its own CLI ---------------------------------------------------------

def _query_argv(kind: str, database: str, sql: str) -> list[str]:
    if kind == "mariadb":
        return ["mariadb", "--user=root", "--batch", "--skip-column-names", f"--database={database}",
                f"--execute={sql}"]
    return ["psql", "--host=/run/postgresql", "--username=postgres", f"--dbname={database}", "--no-align",
            "--tuples-only", "--field-separator= ", f"--command={sql}"]


def ledger(exec_in: Callable[[list[str]], str], kind: str, database: str = "app") -> int:
    """Read the ledger through the database's CLI (`exec_in(argv)` runs argv in the db container and returns
    its stdout) and return N after checking it is exactly rows 1..N, each intact."""
    out = exec_in(_query_argv(kind, database, "SELECT seq, payload, digest FROM ledger ORDER BY seq"))
    rows = [line.split() for line in out.splitlines() if line.strip()]
    for i, row in enumerate(rows, start=1):
        assert len(row) == 3, f"row {i} is malformed: {row!r}"
        seq, payload, digest = int(row[0]), row[1], row[2]
        assert seq == i, f"the ledger has a gap: row {i} holds seq {seq}"
        assert hashlib.sha256(payload.encode()).hexdigest() == digest, f"row {seq} is not intact"
    return len(rows)


def own_checks(exec_in: Callable[[list[str]], str], kind: str) -> str:
    """The database's own consistency checks; their output (exec_in raises when they fail)."""
    if kind == "mariadb":
        out = exec_in(["mariadb-check", "--user=root", "--all-databases", "--check", "--extended"])
        bad = [ln for ln in out.splitlines() if any(w in ln.lower() for w in ("error", "corrupt", "crashed"))]
        assert not bad and "app.ledger" in out, f"mariadb-check found problems: {bad[:5] or out[-500:]}"
        return out
    # amcheck verifies every B-tree index against its table; data checksums were on since initdb.
    return exec_in(["pg_amcheck", "--host=/run/postgresql", "--username=postgres", "--install-missing",
                    "--all", "--heapallindexed"])
