"""Database dumps: streaming a service's logical dump out of its container and loading one back.

A dump is consistent without a stop and loads into any server version. The tools run in the service's
own container (matching client); the password goes in the exec's environment, never argv.
See docs/databases.md."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from migrator.archive.sealstream import StreamStats, seal_stream
from migrator.engine.base import ContainerEngine
from migrator.errors import MigratorError, UsageError
from migrator.plan.model import Dump, Secrets

DUMP_STDERR_SHOWN = 300  # characters of a failing tool's stderr quoted in the error


class DumpFailed(MigratorError):
    """A dump or load command failed inside the service's container (exit 1, like a failed hook)."""


@dataclass(frozen=True)
class DumpCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict, repr=False)  # a password: never repr'd
    user: str | None = None  # the container user the exec runs as (None: the container's default)


def _mariadb_login(dump: Dump, password: str | None) -> tuple[list[str], dict[str, str]]:
    if password is None:
        return ["--user=root"], {}  # unix_socket: the container's root is MariaDB's root
    return ["--host=127.0.0.1", "--protocol=tcp", f"--user={dump.user}"], {"MYSQL_PWD": password}


def _postgres_login(dump: Dump, password: str | None) -> tuple[list[str], dict[str, str], str | None]:
    if password is None:
        return ["--host=/run/postgresql"], {}, "postgres"
    return ["--host=127.0.0.1", f"--username={dump.user}", "--no-password"], {"PGPASSWORD": password}, None


def dump_command(dump: Dump, database: str, password: str | None) -> DumpCommand:
    """The command whose stdout is `database`'s dump: one consistent point in time, no lock held on writers."""
    if dump.kind == "mariadb":
        login, env = _mariadb_login(dump, password)
        return DumpCommand(["mariadb-dump", *login, "--single-transaction", "--quick", "--routines", "--triggers",
                            "--hex-blob", "--no-tablespaces", "--default-character-set=utf8mb4", database], env)
    login, env, user = _postgres_login(dump, password)
    # --compress=0: the custom format uncompressed, so zstd (multi-threaded, the snapshot's own level) does it
    # once; pg_dump's own zlib compression runs single-threaded inside the container and halves the speed.
    return DumpCommand(["pg_dump", *login, "--format=custom", "--compress=0", f"--dbname={database}"], env, user)


def load_commands(dump: Dump, database: str, password: str | None, into: str | None = None) -> list[DumpCommand]:
    """Commands that load a dump of `database` from stdin (the last one reads it). With `into`, a new
    database of that name is created first and the dump goes there (the original is left alone)."""
    target = into or database
    if dump.kind == "mariadb":
        login, env = _mariadb_login(dump, password)
        create = [DumpCommand(["mariadb", *login, "--execute", f"CREATE DATABASE `{into}`"], env)] if into else []
        return [*create, DumpCommand(["mariadb", *login, "--binary-mode", target], env)]
    login, env, user = _postgres_login(dump, password)
    create = [DumpCommand(["createdb", *login, into], env, user)] if into else []
    # One transaction: a load that fails halfway leaves the database as it was.
    return [*create, DumpCommand(["pg_restore", *login, "--clean", "--if-exists", "--no-owner", "--exit-on-error",
                                  "--single-transaction", f"--dbname={target}"], env, user)]


def take(engine: ContainerEngine, container: str, dump: Dump, database: str, password: str | None, sinks: list,
         *, level: int, recipients: list[str], progress: Callable[[int], None] | None = None) -> StreamStats:
    """Stream `database`'s dump from `container` into every sink, sealed like a volume object."""
    cmd = dump_command(dump, database, password)
    result = None

    def produce(write: Callable[[bytes], None]) -> None:
        nonlocal result
        done = 0

        def out(chunk: bytes) -> None:
            nonlocal done
            write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)

        result = engine.exec_stream(container, cmd.argv, env=cmd.env, user=cmd.user, on_stdout=out)
        if result.exit_code != 0:  # raising here leaves the object unfinished: the caller discards it
            raise DumpFailed(f"{cmd.argv[0]} of database {database} in {container} exited {result.exit_code}: "
                             f"{_tail(result.stderr)}",
                             hint="check the service's dump settings (user, password_secret, databases) in the plan")

    return seal_stream(produce, sinks, level=level, recipients=recipients)


def load(engine: ContainerEngine, container: str, dump: Dump, database: str, password: str | None,
         chunks: Iterable[bytes], into: str | None = None) -> None:
    """Load a dump of `database` (its plain bytes, as `chunks`) into the running `container`."""
    *prepare, loader = load_commands(dump, database, password, into)
    for cmd in prepare:
        result = engine.exec_stream(container, cmd.argv, env=cmd.env, user=cmd.user)
        if result.exit_code != 0:
            raise DumpFailed(f"{cmd.argv[0]} in {container} exited {result.exit_code}: {_tail(result.stderr)}",
                             hint=f"does database {into} exist already? --as names a new one")
    result = engine.exec_stream(container, loader.argv, env=loader.env, user=loader.user, stdin=chunks)
    if result.exit_code != 0:
        raise DumpFailed(f"{loader.argv[0]} into {into or database} in {container} exited {result.exit_code}: "
                         f"{_tail(result.stderr)}", hint="the database's own message above says why")


def password_of(dump: Dump, secrets: Secrets | None, service: str) -> str | None:
    """The password `dump` logs in with, from the secrets file (None: the local superuser, no password)."""
    key = dump.password_secret
    if key is None:
        return None
    if secrets is None or key not in secrets.values:
        raise UsageError(f"service {service}'s dump needs secret {key!r} and no secrets file holding it is at hand",
                         hint="pass --secrets FILE (or deploy with it, so it is remembered)")
    return secrets.get(key)


def _tail(stderr: str) -> str:
    text = " ".join(stderr.strip().split())
    return text[-DUMP_STDERR_SHOWN:] or "no message"
