"""Database dumps without a database: the sealed stream (real zstd and age), the dump and load commands
(no password in argv), the manifest's dump entries read back untrusted, and the plan's dump section.
The integration tests (tests/integration/test_databases.py) run the same code against real servers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess

import pytest

from migrator.archive.sealstream import check_object, open_stream, seal_stream
from migrator.catalog.manifest import DumpEntry, Manifest, dump_name
from migrator.errors import IntegrityError
from migrator.plan.model import Dump
from migrator.stack.dumps import dump_command, load_commands

SECRET = "s3cret-'pw'"


class Sink:
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buf.write(data)


def _seal(data: bytes, recipients=()) -> tuple[bytes, object]:
    sink = Sink()

    def produce(write):
        for i in range(0, len(data), 100_000):
            write(data[i:i + 100_000])

    stats = seal_stream(produce, [sink], recipients=list(recipients))
    return sink.buf.getvalue(), stats


@pytest.fixture(scope="module")
def age_key(tmp_path_factory):
    key = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = next(line.split(": ")[1] for line in key.read_text().splitlines() if line.startswith("# public key"))
    return key, public


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_sealed_stream_opens_to_the_same_bytes(encrypted, age_key):
    key, public = age_key
    data = os.urandom(300_000) + b"-- dump --\n" * 50_000
    obj, stats = _seal(data, [public] if encrypted else [])
    assert stats.size == len(obj) and stats.sha256 == hashlib.sha256(obj).hexdigest()
    assert stats.uncompressed == len(data)
    assert len(obj) < len(data) - 400_000  # compressed: the 550 kB of repeated text shrank to almost nothing
    check_object(io.BytesIO(obj), size=stats.size, sha256=stats.sha256, where="t")
    out = b"".join(open_stream(io.BytesIO(obj), plain_size=len(data), encrypted=encrypted,
                               identity_file=key if encrypted else None, where="t"))
    assert out == data


def test_a_changed_object_is_refused_before_a_byte_is_loaded():
    obj, stats = _seal(b"x" * 10_000)
    bad = bytearray(obj)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        check_object(io.BytesIO(bytes(bad)), size=stats.size, sha256=stats.sha256, where="t")
    with pytest.raises(IntegrityError, match="larger than its manifest"):
        check_object(io.BytesIO(obj + b"!"), size=stats.size, sha256=stats.sha256, where="t")


def test_open_stream_never_produces_more_than_the_recorded_size():
    obj, _stats = _seal(b"\0" * 5_000_000)  # 5 MB of zeros: a few hundred compressed bytes
    with pytest.raises(IntegrityError, match="more than its recorded"):
        for _chunk in open_stream(io.BytesIO(obj), plain_size=1000, encrypted=False, identity_file=None, where="t"):
            pass
    with pytest.raises(IntegrityError, match="its manifest says"):
        list(open_stream(io.BytesIO(obj), plain_size=6_000_000, encrypted=False, identity_file=None, where="t"))


def test_a_failing_producer_leaves_no_finished_object():
    sink = Sink()

    def produce(write):
        write(b"partial " * 1000)
        raise RuntimeError("the dump tool failed")

    with pytest.raises(RuntimeError):
        seal_stream(produce, [sink])
    # Whatever reached the sink is not a complete zstd frame: opening it fails.
    with pytest.raises(IntegrityError):
        list(open_stream(io.BytesIO(sink.buf.getvalue()), plain_size=8000, encrypted=False, identity_file=None,
                         where="t"))


@pytest.mark.parametrize("kind", ["mariadb", "postgres"])
def test_the_password_travels_in_the_environment_never_in_argv(kind):
    dump = Dump(kind=kind, databases=("app",), user="app", password_secret="pw")
    cmds = [dump_command(dump, "app", SECRET), *load_commands(dump, "app", SECRET, into="app_check")]
    for cmd in cmds:
        assert not any(SECRET in arg for arg in cmd.argv)
        assert SECRET in cmd.env.values()
        assert SECRET not in repr(cmd)
    assert "app_check" in " ".join(cmds[1].argv)  # --as creates the new database first


def test_without_a_password_the_tools_use_the_local_superuser():
    maria = dump_command(Dump(kind="mariadb", databases=("app",)), "app", None)
    assert "--user=root" in maria.argv and maria.env == {} and "--single-transaction" in maria.argv
    pg = dump_command(Dump(kind="postgres", databases=("app",)), "app", None)
    assert pg.user == "postgres" and pg.env == {} and "--format=custom" in pg.argv
    (restore,) = load_commands(Dump(kind="postgres", databases=("app",)), "app", None)
    assert "--single-transaction" in restore.argv and "--clean" in restore.argv


def _manifest_with(dump: dict) -> bytes:
    m = Manifest(snapshot_id="20261207T120000Z-abcdef", vsn="v", created=1.0, hostname="h", migrator_version="0",
                 plan_sha256="0" * 64, tags=[], volumes={"data": {"mounts": ["d"], "mode": "stop"}})
    raw = json.loads(m.to_bytes())
    raw["dumps"] = [dump]
    return json.dumps(raw).encode()


def test_manifest_dump_entries_round_trip_and_are_checked():
    entry = {"name": dump_name("db", "app", "postgres", False), "service": "db", "kind": "postgres",
             "database": "app", "size": 10, "sha256": "a" * 64, "uncompressed": 100}
    m = Manifest.parse(_manifest_with(entry), "t")
    assert m.dumps == [DumpEntry(**entry)] and m.size == 10
    assert Manifest.parse(m.to_bytes(), "t").dumps == m.dumps
    # A name that is not the service's and database's (e.g. another snapshot's object, a path) is refused.
    for name in ("dump.db.other.pgdump.zst", "dump.db.app.sql.zst", "../x", "data.tar.zst"):
        with pytest.raises(IntegrityError):
            Manifest.parse(_manifest_with({**entry, "name": name}), "t")
    with pytest.raises(IntegrityError):
        Manifest.parse(_manifest_with({**entry, "size": -1}), "t")


def test_load_dump_refuses_a_scratch_name_that_is_not_a_plain_database_name(tmp_path):
    from migrator.errors import UsageError
    from migrator.ops.load_dump import load_dump

    for bad in ("x`; DROP DATABASE app; --", "-c", "a b", "", "a" * 64):
        with pytest.raises(UsageError, match="not a database name"):
            load_dump(None, "v", "latest", plan=None, secrets=None, service="db", as_name=bad)
