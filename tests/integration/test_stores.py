"""Snapshot stores against real servers: a local dir, moto's S3 server over HTTP, sshd in a network
namespace reached through an ssh_config alias. The same contract runs on all three; then what only one
backend has: S3 SSE/storage class, missing bucket, retried 503s/500s/resets through a fault proxy,
resumed reads, flat memory; SSH host-key refusal, auth refusal, config/HOME defaults.

Partials: local and ssh writers stream into `<name>.partial-<pid>-<n|hex>` next to the final name;
list_dir never returns such names, abort removes the file, delete_prefix removes leftovers. S3 has no
partials (an open multipart upload is invisible), abort aborts the upload.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import tracemalloc
import uuid
from pathlib import Path

import botocore.exceptions as bex
import pytest

from migrator.errors import IntegrityError, ObjectMissing, ObjectTooLarge, Unreachable, UsageError
from migrator.retry import RetryPolicy
from migrator.storage import check_key, get_store, is_hidden_name, options_for
from migrator.storage.base import SnapshotStore
from migrator.storage.s3 import PART_SIZE, S3Store, is_transient
from migrator.storage.ssh import SSHStore
from tests.lab.s3server import REGION, FaultProxy, S3Bucket, aws_test_env, create_bucket
from tests.lab.sshhost import SSHHost

# Lab fixtures used here (s3_bucket, s3_env, s3_fault_proxy, s3_server_process, ssh_host) come from
# tests/conftest.py, which registers tests.lab.s3server and tests.lab.sshhost as plugins.

integration = pytest.mark.integration
# A hung transfer must fail this module in minutes, not at the global 10-minute timeout.
pytestmark = pytest.mark.timeout(120)

MB = 1_000_000
BIG = 20 * MB + 12_345  # not a multiple of any chunk or part size
CHUNK = 700_001  # odd write size so chunks straddle part and buffer boundaries


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def write_streaming(store: SnapshotStore, key: str, data: bytes, chunk: int = CHUNK):
    w = store.open_writer(key)
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        w.write(view[i:i + chunk])
    return w


def read_streaming(store: SnapshotStore, key: str, n: int = 65_536) -> tuple[int, str]:
    h, total = hashlib.sha256(), 0
    with store.open_reader(key) as f:
        while True:
            block = f.read(n)
            if not block:
                break
            h.update(block)
            total += len(block)
    return total, h.hexdigest()


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def fast_policy(attempts: int = 6) -> tuple[RetryPolicy, FakeSleep]:
    sleep = FakeSleep()
    return RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.05, sleep=sleep), sleep


# -- one contract, three backends -------------------------------------------------------------------


@pytest.fixture(params=["file", "s3", "ssh"])
def store_case(request, tmp_path):
    """(store, physical_dir or None): physical_dir is where the store root lives locally (file, ssh)."""
    kind = request.param
    sub = f"t-{uuid.uuid4().hex[:8]}"
    if kind == "file":
        root = tmp_path / "store"
        store, physical = get_store(f"file://{root}"), root
    elif kind == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        store, physical = get_store(bucket.url(sub), options=bucket.options()), None
    else:
        host: SSHHost = request.getfixturevalue("ssh_host")
        store, physical = get_store(host.url(sub), options=host.store_options()), host.local_root / sub
    try:
        yield store, physical
    finally:
        store.close()


@integration
def test_streaming_write_commit_read_back(store_case):
    store, physical = store_case
    data = payload(BIG)
    key = "vsn1/20250101T000000Z-abcdef/data.tar.zst"
    w = write_streaming(store, key, data)
    # Not visible before commit, and no partial shows up in a listing.
    assert store.size(key) is None
    assert store.list_dir("vsn1/20250101T000000Z-abcdef") == []
    if physical is not None:
        names = os.listdir(physical / "vsn1/20250101T000000Z-abcdef")
        assert len(names) == 1 and ".partial-" in names[0] and is_hidden_name(names[0])
    w.commit()
    assert store.size(key) == len(data)
    assert store.list_dir("vsn1/20250101T000000Z-abcdef") == ["data.tar.zst"]
    assert read_streaming(store, key) == (len(data), hashlib.sha256(data).hexdigest())
    if physical is not None:
        assert os.listdir(physical / "vsn1/20250101T000000Z-abcdef") == ["data.tar.zst"]
        assert (physical / key).stat().st_mode & 0o777 == 0o600


@integration
def test_store_usable_while_a_writer_is_open(store_case):
    """Other requests between a writer's writes (listing, size, another object) must not disturb it.
    (Regression: on a shared SFTP channel they swallowed pipelined write replies and commit hung.)"""
    store, _ = store_case
    data = payload(8 * MB, seed=11)
    w = store.open_writer("v/s/vol.tar.zst")
    for i in range(8):
        w.write(data[i * MB:(i + 1) * MB])
        assert store.list_dir("v/s") == ([] if i == 0 else ["plan.json"])
        assert store.size("v/s/vol.tar.zst") is None
        store.put_bytes("v/s/plan.json", b"%d" % i)
    w.commit()
    assert store.get_bytes("v/s/plan.json", 10) == b"7"
    assert read_streaming(store, "v/s/vol.tar.zst") == (len(data), hashlib.sha256(data).hexdigest())


@integration
def test_abort_leaves_nothing(store_case):
    store, physical = store_case
    key = "v/s/vol.tar.zst"
    w = write_streaming(store, key, payload(6 * MB), chunk=1_000_000)
    w.abort()
    w.abort()  # idempotent
    assert store.size(key) is None
    assert store.list_dir("v/s") == []
    if physical is not None:
        assert os.listdir(physical / "v/s") == []
    # The context manager aborts when the block raises (or forgets to commit).
    with pytest.raises(RuntimeError), store.open_writer(key) as w2:
        w2.write(b"x" * 1000)
        raise RuntimeError("capture failed")
    assert store.size(key) is None
    if isinstance(store, S3Store):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        assert uploads == []


@integration
def test_put_get_bytes_and_limits(store_case):
    store, _ = store_case
    store.put_bytes("v/s/manifest.json", b'{"a": 1}')
    assert store.get_bytes("v/s/manifest.json", 1024) == b'{"a": 1}'
    store.put_bytes("v/s/manifest.json", b'{"a": 2}')  # replaces atomically
    assert store.get_bytes("v/s/manifest.json", 8) == b'{"a": 2}'
    with pytest.raises(ObjectTooLarge) as info:
        store.get_bytes("v/s/manifest.json", 7)
    assert info.value.exit_code == 6
    with pytest.raises(ObjectMissing):
        store.get_bytes("v/s/nope.json", 1024)
    with pytest.raises(ObjectMissing):
        store.open_reader("v/s/nope.json")
    store.put_bytes("v/s/empty", b"")
    assert store.size("v/s/empty") == 0 and store.get_bytes("v/s/empty", 0) == b""


@integration
def test_list_dir_mtime_delete_prefix(store_case):
    store, physical = store_case
    before = time.time() - 5
    for key in ("vsn/snap1/a.tar.zst", "vsn/snap1/manifest.json", "vsn/snap2/b.tar.zst", "other/x"):
        store.put_bytes(key, key.encode())
    assert store.list_dir("") == ["other", "vsn"]
    assert store.list_dir("vsn") == ["snap1", "snap2"]
    assert store.list_dir("vsn/") == ["snap1", "snap2"]
    assert store.list_dir("vsn/snap1") == ["a.tar.zst", "manifest.json"]
    assert store.list_dir("missing") == []
    assert store.size("vsn/snap1") is None  # a "directory" is not an object
    for what in ("vsn/snap1/a.tar.zst", "vsn/snap1", "vsn"):
        stamp = store.mtime(what)
        assert stamp is not None and before <= stamp <= time.time() + 5, what
    assert store.mtime("vsn/nothing") is None

    store.delete_prefix("vsn/snap1")
    assert store.list_dir("vsn") == ["snap2"]
    assert store.size("vsn/snap1/a.tar.zst") is None
    assert store.get_bytes("vsn/snap2/b.tar.zst", 100) == b"vsn/snap2/b.tar.zst"
    store.delete_prefix("vsn/snap1")  # missing: no-op
    with pytest.raises(IntegrityError):
        store.delete_prefix("")  # never the whole store
    if physical is not None:
        assert not (physical / "vsn/snap1").exists()


@integration
def test_delete_prefix_removes_partial_debris(store_case):
    store, physical = store_case
    """A writer still open (or killed) leaves a partial (local, ssh); delete_prefix removes it.
    (S3's equivalent, an open multipart upload, is covered by test_s3_delete_prefix_aborts_stale_...)"""
    store.put_bytes("vsn/snapX/plan.json", b"{}")
    w = write_streaming(store, "vsn/snapX/vol.tar.zst", payload(MB))
    store.delete_prefix("vsn/snapX")
    assert store.list_dir("vsn") == []
    if physical is not None:
        assert not (physical / "vsn/snapX").exists()
    w.abort()  # its partial is already gone: abort must not fail


@integration
def test_check_and_unsafe_keys(store_case):
    store, physical = store_case
    store.check()
    assert store.list_dir("") == []  # the probe is gone
    for bad in ("../escape", "/abs", "a/../../b", "a//b", "a/./b"):
        with pytest.raises(IntegrityError):
            store.put_bytes(bad, b"x")
        with pytest.raises(IntegrityError):
            store.size(bad)


def test_file_store_unwritable_is_unreachable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    store = get_store(f"file://{ro}/store")
    (ro / "store").write_text("a file where the store dir should be")
    with pytest.raises(Unreachable) as info:
        store.check()
    assert info.value.exit_code == 8 and str(ro) in info.value.message


def test_file_store_hands_big_objects_to_the_disk_while_writing(tmp_path, monkeypatch):
    """Writeback starts every WRITEBACK_STEP bytes (so the commit's fsync waits for little), over
    contiguous ranges from offset 0, and the committed object is byte-exact."""
    from migrator.storage import local

    ranges: list[tuple[int, int]] = []
    real = local.start_writeback
    monkeypatch.setattr(local, "start_writeback", lambda fd, off, n: (ranges.append((off, n)), real(fd, off, n)))
    store = get_store(f"file://{tmp_path}/store")
    data = os.urandom(3 * local.WRITEBACK_STEP + 12345)
    writer = store.open_writer("vsn/snap/obj")
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i:i + (1 << 20)])
    writer.commit()
    assert (tmp_path / "store" / "vsn" / "snap" / "obj").read_bytes() == data
    assert len(ranges) == 3 and ranges[0][0] == 0
    assert all(off + n == nxt for (off, n), (nxt, _) in zip(ranges, ranges[1:], strict=False))
    assert all(n >= local.WRITEBACK_STEP for _, n in ranges)


# -- URL handling (no servers) ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://x/y", "file://relative/path", "s3://ab/x", "ssh://host", "ssh://host:notaport/x",
                                 "ssh://user:pw@host/srv", "ssh:///srv", "nonsense"])
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError):
        get_store(url)


def test_url_normalisation_and_options_for():
    assert get_store("file:///srv/backups/").url == "file:///srv/backups"
    s = get_store("ssh://backup@host:2222/srv/b/")
    assert isinstance(s, SSHStore) and s.url == "ssh://backup@host:2222/srv/b" and s.root == "/srv/b"
    assert options_for("s3://bkt/x", {"s3": {"region": "eu-west-1"}, "ssh": {}}) == {"region": "eu-west-1"}
    assert options_for("file:///x", {"s3": {"region": "r"}}) == {}
    assert check_key("a/b/") == "a/b"


def test_s3_error_classification():
    def client_error(code: str, status: int) -> bex.ClientError:
        return bex.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    assert is_transient(client_error("SlowDown", 503))
    assert is_transient(client_error("InternalError", 500))
    assert is_transient(client_error("whatever", 502))
    assert is_transient(client_error("TooManyRequests", 429))
    assert is_transient(bex.EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(bex.ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(bex.ReadTimeoutError(endpoint_url="http://x"))
    assert not is_transient(bex.SSLError(endpoint_url="http://x", error="cert"))
    for code, status in (("AccessDenied", 403), ("NoSuchBucket", 404), ("InvalidAccessKeyId", 403), ("NoSuchKey", 404)):
        assert not is_transient(client_error(code, status))


# -- S3 only ----------------------------------------------------------------------------------------


@integration
def test_s3_sse_and_storage_class_passed_through(s3_bucket):
    store = get_store(s3_bucket.url(), options=s3_bucket.options(sse="AES256", storage_class="STANDARD_IA",
                                                                  part_size=5 * 1024 * 1024))
    store.put_bytes("v/s/manifest.json", b"{}")
    w = write_streaming(store, "v/s/big.tar.zst", payload(11 * MB))
    w.commit()
    client = s3_bucket.client()
    for key in ("backups/v/s/manifest.json", "backups/v/s/big.tar.zst"):
        head = client.head_object(Bucket=s3_bucket.name, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
        assert head["StorageClass"] == "STANDARD_IA", key
    assert client.head_object(Bucket=s3_bucket.name, Key="backups/v/s/big.tar.zst")["ContentLength"] == 11 * MB


@integration
def test_s3_missing_bucket_is_unreachable(s3_env):
    url = "s3://no-such-bucket-migrator/backups"
    store = get_store(url, options={"endpoint_url": s3_env.endpoint_url})
    for action in (store.check, lambda: store.put_bytes("a/b", b"x"), lambda: store.list_dir("a"),
                   lambda: store.size("a/b")):
        with pytest.raises(Unreachable) as info:
            action()
        assert info.value.exit_code == 8
        assert url in info.value.message and "does not exist" in info.value.message


@integration
def test_s3_endpoint_down_is_unreachable_after_retries(s3_env, unused_port):
    policy, sleep = fast_policy(attempts=3)
    store = get_store("s3://bucket-x/p", options={"endpoint_url": f"http://127.0.0.1:{unused_port}"},
                      retry_policy=policy)
    with pytest.raises(Unreachable) as info:
        store.check()
    assert "s3://bucket-x/p" in info.value.message and f"127.0.0.1:{unused_port}" in info.value.message
    assert len(sleep.calls) == 2  # 3 attempts


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@integration
def test_s3_transient_errors_are_retried(s3_bucket, s3_fault_proxy: FaultProxy):
    proxy = s3_fault_proxy
    policy, sleep = fast_policy(attempts=4)
    store = get_store(s3_bucket.url(), options={**s3_bucket.options(), "endpoint_url": proxy.endpoint_url,
                                                "part_size": 5 * 1024 * 1024}, retry_policy=policy)
    proxy.fail("CreateMultipartUpload", 1)
    proxy.fail("UploadPart", 2)  # 503 SlowDown
    proxy.fail("UploadPart", 1, "reset")  # connection dropped without an answer
    proxy.fail("CompleteMultipartUpload", 1, "500")
    proxy.fail("PutObject", 3)
    proxy.fail("HeadObject", 1)
    proxy.fail("ListObjectsV2", 1, "500")
    proxy.fail("GetObject", 1)
    data = payload(BIG, seed=7)
    write_streaming(store, "v/s/big.tar.zst", data).commit()
    store.put_bytes("v/s/manifest.json", b"{}")
    assert store.size("v/s/big.tar.zst") == len(data)
    assert store.list_dir("v/s") == ["big.tar.zst", "manifest.json"]
    assert read_streaming(store, "v/s/big.tar.zst") == (len(data), hashlib.sha256(data).hexdigest())
    expected = {"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1, "PutObject": 3,
                "HeadObject": 1, "ListObjectsV2": 1, "GetObject": 1}
    assert dict(proxy.injected) == expected
    assert len(sleep.calls) == sum(expected.values())
    assert proxy.seen["UploadPart"] == 4 + 3  # 4 parts + 3 retries


@integration
def test_s3_gives_up_when_errors_persist(s3_bucket, s3_fault_proxy: FaultProxy):
    proxy = s3_fault_proxy
    policy, sleep = fast_policy(attempts=3)
    store = get_store(s3_bucket.url(), options={**s3_bucket.options(), "endpoint_url": proxy.endpoint_url},
                      retry_policy=policy)
    proxy.fail("PutObject", 10)
    with pytest.raises(Unreachable) as info:
        store.put_bytes("v/s/manifest.json", b"{}")
    assert "after 3 attempts" in info.value.message and s3_bucket.url() in info.value.message
    assert proxy.injected["PutObject"] == 3 and len(sleep.calls) == 2


@integration
def test_s3_multipart_failure_aborts_upload(s3_bucket, s3_fault_proxy: FaultProxy):
    proxy = s3_fault_proxy
    policy, _ = fast_policy(attempts=2)
    store = get_store(s3_bucket.url(), options={**s3_bucket.options(), "endpoint_url": proxy.endpoint_url,
                                                "part_size": 5 * 1024 * 1024}, retry_policy=policy)
    proxy.fail("UploadPart", 1, "500")  # first part fails once, is retried
    w = write_streaming(store, "v/s/x.tar.zst", payload(6 * MB))
    proxy.fail("UploadPart", 5, "500")  # the last part never gets through
    with pytest.raises(Unreachable):
        w.commit()
    assert store.size("v/s/x.tar.zst") is None
    assert s3_bucket.client().list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []


@integration
def test_s3_access_denied_names_store_not_secrets(s3_bucket, s3_fault_proxy: FaultProxy, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SUPERSECRETVALUE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    proxy = s3_fault_proxy
    proxy.fail("PutObject", 1, "403")
    store = get_store(s3_bucket.url(), options={**s3_bucket.options(), "endpoint_url": proxy.endpoint_url})
    with pytest.raises(Unreachable) as info:
        store.put_bytes("a", b"x")
    text = f"{info.value.message} {info.value.hint}"
    assert "AccessDenied" in text and s3_bucket.url() in text
    assert "SUPERSECRETVALUE" not in text and "AKIAEXAMPLEKEYID" not in text
    assert proxy.injected["PutObject"] == 1  # permanent: not retried


@integration
def test_s3_read_resumes_after_dropped_body(s3_bucket, s3_fault_proxy: FaultProxy):
    proxy = s3_fault_proxy
    policy, sleep = fast_policy()
    store = get_store(s3_bucket.url(), options={**s3_bucket.options(), "endpoint_url": proxy.endpoint_url},
                      retry_policy=policy)
    data = payload(3 * MB, seed=3)
    store.put_bytes("v/s/obj", data)
    proxy.fail("GetObject", 1, "truncate")  # headers + half the body, then the connection drops
    assert read_streaming(store, "v/s/obj") == (len(data), hashlib.sha256(data).hexdigest())
    assert proxy.seen["GetObject"] == 2 and len(sleep.calls) == 1  # one resume with a Range request


@integration
def test_s3_delete_prefix_aborts_stale_multipart_uploads(s3_bucket):
    store = get_store(s3_bucket.url(), options=s3_bucket.options())
    client = s3_bucket.client()
    client.create_multipart_upload(Bucket=s3_bucket.name, Key="backups/v/dead/vol.tar.zst")
    client.create_multipart_upload(Bucket=s3_bucket.name, Key="backups/v/alive/vol.tar.zst")
    store.delete_prefix("v/dead")
    keys = [u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])]
    assert keys == ["backups/v/alive/vol.tar.zst"]


@integration
def test_s3_no_credentials_is_unreachable(s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = get_store(s3_bucket.url(), options=s3_bucket.options())
    with pytest.raises(Unreachable, match="no usable AWS credentials") as info:
        store.check()
    assert s3_bucket.url() in info.value.message


@integration
def test_s3_endpoint_from_environment(s3_bucket, monkeypatch):
    # s3_env set AWS_ENDPOINT_URL: no endpoint in the options, boto3 finds it in the environment.
    store = get_store(s3_bucket.url())
    store.put_bytes("k", b"v")
    assert store.get_bytes("k", 10) == b"v"


@integration
def test_s3_multipart_memory_stays_flat(s3_server_process, monkeypatch):
    """100 MB streamed as 16 MiB parts: Python's peak allocation stays below 3 part sizes.
    moto runs in a child process here: in-process it would hold the uploaded bytes in our heap."""
    aws_test_env(monkeypatch, s3_server_process.endpoint_url)
    bucket = create_bucket(s3_server_process.endpoint_url)
    store = get_store(f"s3://{bucket}/mem", options={"endpoint_url": s3_server_process.endpoint_url, "region": REGION})
    store.check()  # load botocore's models and open the connection before measuring
    block = bytearray(random.Random(5).randbytes(1024 * 1024))
    total = 100 * 1024 * 1024
    tracemalloc.start()
    try:
        w = store.open_writer("v/s/huge.tar.zst")
        for i in range(total // len(block)):
            block[:8] = i.to_bytes(8, "big")  # the caller reuses its buffer, as a real pipeline does
            w.write(block)
        w.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.size("v/s/huge.tar.zst") == total
    assert peak < 3 * PART_SIZE, f"peak {peak / 2**20:.1f} MiB"


# -- SSH only ---------------------------------------------------------------------------------------


def ssh_opts(host: SSHHost, **extra) -> dict:
    return {**host.store_options(), **extra}


@integration
def test_ssh_alias_from_config_and_remote_path(ssh_host: SSHHost):
    store = get_store(ssh_host.url("alias-test"), options=ssh_host.store_options())
    try:
        params = store.resolve()
        assert params["hostname"] == ssh_host.address and params["username"] == "root"
        store.put_bytes("v/s/plan.json", b"plan")
        # The remote path (/srv/remote/...) is a different local directory: the bind mount.
        assert (ssh_host.local_root / "alias-test/v/s/plan.json").read_bytes() == b"plan"
        assert not Path("/srv/remote/alias-test").exists()
        assert ssh_host.run(["cat", "/srv/remote/alias-test/v/s/plan.json"]).stdout == "plan"
    finally:
        store.close()


@integration
def test_ssh_defaults_from_home(ssh_host: SSHHost, tmp_path, monkeypatch):
    """No options: ~/.ssh/config and ~/.ssh/known_hosts are used (HOME points at a scratch dir)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    cfg = ssh_host.ssh_config_file.read_text()
    (home / ".ssh/config").write_text("\n".join(x for x in cfg.splitlines() if "UserKnownHostsFile" not in x) + "\n")
    (home / ".ssh/known_hosts").write_text(ssh_host.host_key_line + "\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with get_store(ssh_host.url("home-test")) as store:
        store.check()
        assert store.resolve()["known_hosts"][0] == str(home / ".ssh/known_hosts")


@integration
def test_ssh_unknown_host_key_refused(ssh_host: SSHHost, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    store = get_store(ssh_host.url(), options=ssh_opts(ssh_host, known_hosts_file=str(empty)))
    with pytest.raises(Unreachable) as info:
        store.check()
    assert info.value.exit_code == 8
    assert "unknown" in info.value.message and ssh_host.address in info.value.message
    assert "SHA256:" in info.value.message and ssh_host.host_key_line.split()[2] in info.value.hint
    assert empty.read_text() == ""  # nothing was added


@integration
def test_ssh_pinned_host_key_accepted(ssh_host: SSHHost, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    opts = ssh_opts(ssh_host, known_hosts_file=str(empty), known_host_keys=[ssh_host.host_key_line])
    with get_store(ssh_host.url(), options=opts) as store:
        store.check()


@integration
def test_ssh_changed_host_key_refused(ssh_host: SSHHost, tmp_path):
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keytype, b64 = Path(f"{other}.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{ssh_host.address} {keytype} {b64}\n")
    store = get_store(ssh_host.url(), options=ssh_opts(ssh_host, known_hosts_file=str(wrong)))
    with pytest.raises(Unreachable) as info:
        store.check()
    assert "CHANGED" in info.value.message and ssh_host.address in info.value.message
    # a wrong pinned key is refused the same way
    pinned = ssh_opts(ssh_host, known_hosts_file=str(tmp_path / "none"),
                      known_host_keys=[f"{ssh_host.address} {keytype} {b64}"])
    with pytest.raises(Unreachable, match="CHANGED"):
        get_store(ssh_host.url(), options=pinned).check()


@integration
def test_ssh_auth_refused(ssh_host: SSHHost, tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host vsn2\n  HostName {ssh_host.address}\n  User root\n  IdentityFile {stranger}\n"
                   f"  IdentitiesOnly yes\n  UserKnownHostsFile {ssh_host.known_hosts_file}\n")
    policy, sleep = fast_policy()
    store = get_store(ssh_host.url(), options={"ssh_config_file": str(cfg)}, retry_policy=policy)
    with pytest.raises(Unreachable) as info:
        store.check()
    assert "refused authentication" in info.value.message and ssh_host.address in info.value.message
    assert sleep.calls == []  # auth failures are not retried


@integration
def test_ssh_connection_refused_is_unreachable(ssh_host: SSHHost):
    policy, sleep = fast_policy(attempts=2)
    url = f"ssh://root@{ssh_host.address}:2222/srv/remote"
    store = get_store(url, options={"identity_file": str(ssh_host.identity_file),
                                    "known_hosts_file": str(ssh_host.known_hosts_file)}, retry_policy=policy)
    with pytest.raises(Unreachable) as info:
        store.check()
    assert url in info.value.message and f"{ssh_host.address}:2222" in info.value.message
    assert len(sleep.calls) == 1  # refused connections are retried (the host may be booting)


@integration
def test_ssh_identity_file_from_the_plan_without_agent_or_config(ssh_host: SSHHost, tmp_path):
    """The cron case (issue 22, item 11): no agent, no ~/.ssh/config, no default key; the plan's
    backup.ssh.identity_file and known_host_keys are all `migrator backup` has to reach the store."""
    import json
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "data" / "vol" / "data").mkdir(parents=True)
    (tmp_path / "data" / "vol" / "data" / "f").write_text("payload")
    url = f"ssh://root@{ssh_host.address}{ssh_host.remote_root}/identity-test"
    raw = {"version": 1,
           "vsn": {"name": "idf", "engine": "podman", "data_root": str(tmp_path / "data"),
                   "socket": f"unix://{tmp_path}/no-engine.sock"},
           "volumes": [{"name": "vol", "image": "localhost/busybox", "mounts": [{"name": "data", "path": "/data"}]}],
           "services": [],
           "backup": {"targets": [url], "ssh": {"known_host_keys": [ssh_host.host_key_line],
                                                 "identity_file": str(ssh_host.identity_file)}}}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(raw))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "MIGRATOR_STATE_DIR": str(tmp_path / "state")}

    def backup() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "migrator", "backup", "--plan", str(plan), "--json"],
                              env=env, capture_output=True, text=True, timeout=100)

    done = backup()
    assert done.returncode == 0, done.stderr
    sid = json.loads(done.stdout)["snapshot_id"]
    assert (ssh_host.local_root / "identity-test" / "idf" / sid / "manifest.json").exists()
    del raw["backup"]["ssh"]["identity_file"]  # the same run without it: nothing to authenticate with
    plan.write_text(json.dumps(raw))
    refused = backup()
    assert refused.returncode == 8, refused.stderr
