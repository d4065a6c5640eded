"""s3:// snapshot store (boto3): `s3://bucket[/prefix]` on AWS or any S3-compatible endpoint.

Credentials come only from boto3's own chain and never appear in errors. Uploads are multipart with a
fixed buffer, aborted on any error (no billed debris); retries go through migrator.retry (botocore's off)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from migrator.errors import IntegrityError, MigratorError, ObjectMissing, Unreachable, UsageError
from migrator.retry import DEFAULT_ATTEMPTS, RetryPolicy, call_with_retry
from migrator.storage.base import (
    STREAM_BUFFER,
    RawReader,
    SnapshotStore,
    WriterBase,
    check_key,
    is_hidden_name,
    probe_name,
    read_limited,
    too_large,
)

T = TypeVar("T")

MiB = 1024 * 1024
# Multipart part size: the whole in-memory cost of an upload (one part buffer). 16 MiB keeps memory
# small while 1,000 parts already cover 16 GiB.
PART_SIZE = 16 * MiB
# S3 limits: every part but the last must be >= 5 MiB, at most 10,000 parts, at most 5 GiB per part.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * 1024 * MiB
# The stream's length is unknown up front, so the part size doubles every PARTS_PER_TIER parts:
# 16 MiB parts up to 31 GiB, 32 MiB up to 94 GiB, 64 MiB up to 219 GiB (a 200 GB volume), ... ~968 GiB
# in 10,000 parts. Memory grows only for volumes far larger than usual.
PARTS_PER_TIER = 2_000
# Seconds to open a TCP connection / to wait for a response byte. A part upload is sent in full before
# the server answers, so the read timeout covers the server assembling a part, not the transfer.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
# delete_objects accepts at most 1,000 keys per request.
DELETE_BATCH = 1_000

# Error codes S3 (and compatibles) use for "try again later".
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded",
    "PriorRequestNotComplete", "EC2ThrottledException",
})
# Error codes that mean "your credentials are not accepted here" (hint: the credential chain).
ACCESS_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403", "Forbidden",
})
MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class _ShortRead(Exception):
    """The GET body ended before Content-Length bytes: treated like a dropped connection."""


def _code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: bex.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(exc: BaseException) -> bool:
    """True if repeating the S3 request may succeed: 5xx, 429, throttling, dropped connections, timeouts."""
    if isinstance(exc, bex.ClientError):
        return _code(exc) in TRANSIENT_CODES or _status(exc) >= 500 or _status(exc) == 429
    if isinstance(exc, bex.SSLError):
        return False  # a certificate problem does not heal by waiting
    return isinstance(exc, (
        bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy errors
        bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
        bex.IncompleteReadError,
        _ShortRead,
        ConnectionError,  # raw resets surfacing from a streaming body
        TimeoutError,
    ))


def _parse_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket = parts.netloc
    if parts.scheme != "s3" or len(bucket) < 3 or "@" in bucket or parts.query or parts.fragment:
        raise UsageError(f"bad S3 store URL {url!r}", hint="use s3://bucket/prefix (bucket names have 3+ characters)")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            prefix = check_key(prefix)
        except ValueError as exc:
            raise UsageError(f"bad S3 store URL {url!r}: {exc}") from exc
    return bucket, prefix


class S3Store(SnapshotStore):
    """Snapshot store in an S3 bucket under an optional key prefix.

    Endpoint URL, region, SSE and storage class come from `options` (the plan's backup.s3 section), else
    the standard AWS environment (AWS_ENDPOINT_URL, AWS_REGION, ~/.aws/config), which boto3 reads itself.
    Credentials come only from boto3's chain; error messages carry error codes, never request details.
    Small objects and short streams use one put_object, the rest a multipart upload. Every request goes
    through `migrator.retry` with `is_transient` deciding; permanent failures (NoSuchBucket,
    AccessDenied, other 4xx) and exhausted retries become `Unreachable` (exit 8) naming the store URL."""

    def __init__(self, url: str, *, options: dict[str, Any] | None = None,
                 retry_policy: RetryPolicy | None = None) -> None:
        options = dict(options or {})
        self.bucket, self.prefix = _parse_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        # The caller's policy supplies attempts, delays and sleep; what is transient is S3's business.
        base = retry_policy or RetryPolicy(attempts=DEFAULT_ATTEMPTS)
        self.policy = base.with_(retry_on=is_transient)
        self.part_size = int(options.get("part_size", PART_SIZE))
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise UsageError(f"S3 part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        self._extra: dict[str, str] = {}
        if options.get("sse"):
            self._extra["ServerSideEncryption"] = str(options["sse"])
        if options.get("sse_kms_key_id"):
            self._extra["SSEKMSKeyId"] = str(options["sse_kms_key_id"])
        if options.get("storage_class"):
            self._extra["StorageClass"] = str(options["storage_class"])
        endpoint = options.get("endpoint_url") or None
        custom_endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # Path-style addressing for custom endpoints (MinIO, Ceph, moto on an IP): virtual-host style
        # would need wildcard DNS there. AWS itself gets botocore's default.
        addressing = options.get("addressing_style") or ("path" if custom_endpoint else "auto")
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"total_max_attempts": 1, "mode": "standard"},  # we retry, once, in migrator.retry
            s3={"addressing_style": addressing},
            user_agent_extra="migrator",
        )
        try:
            self.client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=options.get("region") or None, config=config)
        except bex.BotoCoreError as exc:
            raise Unreachable(f"store {self.url}: cannot set up the S3 client: {type(exc).__name__}",
                              hint="check endpoint_url/region in the plan or the AWS environment") from exc
        self._bucket_checked = False

    # -- helpers ------------------------------------------------------------------------------------

    def _key(self, key: str, *, allow_empty: bool = False) -> str:
        try:
            rel = check_key(key, allow_empty=allow_empty)
        except ValueError as exc:
            raise IntegrityError(f"{self.url}: {exc}") from exc
        if self.prefix and rel:
            return f"{self.prefix}/{rel}"
        return self.prefix or rel

    def _dir(self, prefix: str) -> str:
        """The S3 key prefix (with trailing slash) that lists the children of store prefix `prefix`."""
        full = self._key(prefix, allow_empty=True)
        return f"{full}/" if full else ""

    def translate(self, exc: BaseException, op: str, key: str = "") -> MigratorError:
        """Map a botocore (or socket) error to a migrator error naming the store, never the credentials."""
        where = f"store {self.url}"
        if isinstance(exc, MigratorError):
            return exc
        if isinstance(exc, bex.ClientError):
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket":
                return Unreachable(f"{where}: bucket {self.bucket!r} does not exist",
                                   hint="create the bucket or fix the URL / endpoint_url")
            if key and code in MISSING_KEY_CODES:
                return ObjectMissing(f"{where}: no object {key}")
            if code in ACCESS_CODES:
                return Unreachable(
                    f"{where}: access refused ({code}) on {op}",
                    hint="check the credentials boto3 finds (environment, ~/.aws, instance role) and the bucket policy")
            if is_transient(exc):
                return Unreachable(f"{where}: {op} still failing after {self.policy.attempts} attempts ({code or status})",
                                   hint="the S3 service is overloaded or down; retry later")
            return Unreachable(f"{where}: {op} refused ({code or 'HTTP'} {status})")
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return Unreachable(f"{where}: no usable AWS credentials found",
                               hint="provide credentials through the AWS environment, ~/.aws or an instance role")
        if isinstance(exc, (bex.BotoCoreError, OSError, _ShortRead)):
            return Unreachable(
                f"{where}: {op} failed: cannot talk to {self.client.meta.endpoint_url} ({type(exc).__name__})",
                hint="check the endpoint, the network and the proxy settings, then retry")
        return Unreachable(f"{where}: {op} failed ({type(exc).__name__})")

    def call(self, op: str, key: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """One S3 request, retried while transient, errors translated."""
        try:
            return call_with_retry(self.policy, fn, **kwargs)
        except Exception as exc:
            raise self.translate(exc, op, key) from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return call_with_retry(self.policy, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except bex.ClientError as exc:
            if _code(exc) in MISSING_KEY_CODES:
                # HEAD answers a bare 404 for a missing bucket too: tell the two apart once per store.
                self._ensure_bucket()
                return None
            raise self.translate(exc, "HeadObject", key) from exc
        except Exception as exc:
            raise self.translate(exc, "HeadObject", key) from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            call_with_retry(self.policy, self.client.head_bucket, Bucket=self.bucket)
        except bex.ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise Unreachable(f"store {self.url}: bucket {self.bucket!r} does not exist",
                                  hint="create the bucket or fix the URL / endpoint_url") from exc
            raise self.translate(exc, "HeadBucket") from exc
        except Exception as exc:
            raise self.translate(exc, "HeadBucket") from exc
        self._bucket_checked = True

    def _iter_objects(self, s3_prefix: str) -> list[dict[str, Any]]:
        def listing() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=s3_prefix):
                out.extend(page.get("Contents", []))
            return out

        return self.call("ListObjectsV2", "", listing)

    # -- interface ----------------------------------------------------------------------------------

    def open_writer(self, key: str) -> _S3Writer:
        return _S3Writer(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        return io.BufferedReader(_S3Reader(self, key), buffer_size=STREAM_BUFFER)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.call("PutObject", key, self.client.put_object,
                  Bucket=self.bucket, Key=self._key(key), Body=bytes(data), **self._extra)

    def get_bytes(self, key: str, max_size: int) -> bytes:
        raw = _S3Reader(self, key)
        with io.BufferedReader(raw, buffer_size=STREAM_BUFFER) as f:
            too_large(raw.size, max_size, f"{self.url}: {key}")  # refuse before downloading anything
            return read_limited(f, max_size, f"{self.url}: {key}")

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def list_dir(self, prefix: str) -> list[str]:
        s3_prefix = self._dir(prefix)

        def listing() -> set[str]:
            names: set[str] = set()
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=s3_prefix, Delimiter="/")
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    names.add(cp["Prefix"][len(s3_prefix):].rstrip("/"))
                for obj in page.get("Contents", []):
                    names.add(obj["Key"][len(s3_prefix):])
            return names

        names = self.call("ListObjectsV2", prefix, listing)
        return sorted(n for n in names if n and not is_hidden_name(n))

    def mtime(self, key_or_prefix: str) -> float | None:
        if key_or_prefix.strip("/"):
            head = self._head(key_or_prefix)
            if head is not None:
                return head["LastModified"].timestamp()
        stamps: list[datetime] = [o["LastModified"] for o in self._iter_objects(self._dir(key_or_prefix))]
        return max(stamps).timestamp() if stamps else None

    def delete(self, key: str) -> None:
        self.call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        s3_prefix = self._dir(prefix)
        if s3_prefix == "" or not prefix.strip("/"):
            raise IntegrityError(f"{self.url}: refusing to delete the whole store")
        keys = [o["Key"] for o in self._iter_objects(s3_prefix)]
        for i in range(0, len(keys), DELETE_BATCH):
            batch = {"Objects": [{"Key": k} for k in keys[i:i + DELETE_BATCH]], "Quiet": True}
            resp = self.call("DeleteObjects", prefix, self.client.delete_objects, Bucket=self.bucket, Delete=batch)
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise Unreachable(f"store {self.url}: cannot delete {len(resp['Errors'])} objects under {prefix} "
                                  f"(first: {first.get('Code')})")
        # Multipart uploads a killed process left behind are billed but invisible: abort them too.
        uploads = self.call("ListMultipartUploads", prefix, self.client.list_multipart_uploads,
                            Bucket=self.bucket, Prefix=s3_prefix)
        for up in uploads.get("Uploads", []):
            try:
                self.call("AbortMultipartUpload", prefix, self.client.abort_multipart_upload,
                          Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
            except ObjectMissing:
                continue  # finished or aborted meanwhile

    def check(self) -> None:
        self._ensure_bucket()
        probe = probe_name()
        self.call("PutObject", probe, self.client.put_object,
                  Bucket=self.bucket, Key=self._key(probe), Body=b"migrator store check\n", **self._extra)
        self.call("DeleteObject", probe, self.client.delete_object, Bucket=self.bucket, Key=self._key(probe))

    def close(self) -> None:
        self.client.close()


class _S3Writer(WriterBase):
    """Buffers one part at a time in a reused bytearray; small streams end as a single put_object."""

    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._s3_key = store._key(key)
        self._buf = bytearray()
        self._used = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._total = 0

    def _part_size(self) -> int:
        tier = len(self._parts) // PARTS_PER_TIER
        return min(MAX_PART_SIZE, self._store.part_size << tier)

    def write(self, b: bytes) -> None:
        self._ensure_open()
        view = memoryview(b).cast("B")
        try:
            while len(view):
                if len(self._buf) == 0:
                    self._buf = bytearray(self._part_size())  # allocated once per tier, then reused
                n = min(len(view), len(self._buf) - self._used)
                self._buf[self._used:self._used + n] = view[:n]
                self._used += n
                self._total += n
                view = view[n:]
                if self._used == len(self._buf):
                    self._upload_part(self._buf)
                    self._used = 0
                    if len(self._buf) != self._part_size():
                        self._buf = bytearray()  # next tier: reallocate at the larger size
        except BaseException:
            self.abort()
            raise

    def _upload_part(self, body: bytes | bytearray) -> None:
        s = self._store
        if len(self._parts) >= MAX_PARTS:
            raise Unreachable(f"store {s.url}: {self._key} exceeds the S3 limit of {MAX_PARTS} parts")
        if self._upload_id is None:
            resp = s.call("CreateMultipartUpload", self._key, s.client.create_multipart_upload,
                          Bucket=s.bucket, Key=self._s3_key, **s._extra)
            self._upload_id = resp["UploadId"]
        number = len(self._parts) + 1
        resp = s.call("UploadPart", self._key, s.client.upload_part, Bucket=s.bucket, Key=self._s3_key,
                      UploadId=self._upload_id, PartNumber=number, Body=body)
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def commit(self) -> None:
        self._ensure_open()
        s = self._store
        try:
            if self._upload_id is None:
                s.call("PutObject", self._key, s.client.put_object, Bucket=s.bucket, Key=self._s3_key,
                       Body=bytes(self._buf[:self._used]), **s._extra)
            else:
                if self._used:
                    self._upload_part(bytes(self._buf[:self._used]))
                self._buf = bytearray()
                self._complete()
        except BaseException:
            self.abort()
            raise
        self._buf = bytearray()
        self._done = True

    def _complete(self) -> None:
        s = self._store
        try:
            call_with_retry(s.policy, s.client.complete_multipart_upload, Bucket=s.bucket, Key=self._s3_key,
                            UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
        except bex.ClientError as exc:
            # A retried Complete whose first attempt succeeded (reply lost) answers NoSuchUpload:
            # accept it when the object is there with exactly our size.
            if _code(exc) == "NoSuchUpload" and s.size(self._key) == self._total:
                self._upload_id = None
                return
            raise s.translate(exc, "CompleteMultipartUpload", self._key) from exc
        except Exception as exc:
            raise s.translate(exc, "CompleteMultipartUpload", self._key) from exc
        self._upload_id = None

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buf = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                s = self._store
                call_with_retry(s.policy, s.client.abort_multipart_upload,
                                Bucket=s.bucket, Key=self._s3_key, UploadId=upload_id)
            except Exception:
                pass  # best effort: delete_prefix/prune also aborts stale uploads under a snapshot


class _S3Reader(RawReader):
    """GET body as a raw stream; after a dropped connection it resumes with a Range request pinned to
    the object's ETag, so a multi-GB download survives a flaky link without starting over."""

    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._s3_key = store._key(key)
        self._pos = 0
        self._body: Any = None
        self._etag: str | None = None
        self._size = 0
        try:
            call_with_retry(store.policy, self._open)
        except Exception as exc:
            raise store.translate(exc, "GetObject", key) from exc

    @property
    def size(self) -> int:
        return self._size

    def _open(self) -> None:
        s = self._store
        kwargs: dict[str, Any] = {"Bucket": s.bucket, "Key": self._s3_key}
        if self._etag is not None:
            kwargs.update(IfMatch=self._etag, Range=f"bytes={self._pos}-")
        resp = s.client.get_object(**kwargs)
        if self._etag is None:
            self._etag = resp["ETag"]
            self._size = int(resp["ContentLength"])
        self._body = resp["Body"]

    def _read_some(self, n: int) -> bytes:
        if self._body is None:
            self._open()
        try:
            data = self._body.read(n)
        except Exception:
            self._drop_body()  # the next attempt reopens at self._pos
            raise
        if not data:
            self._drop_body()
            raise _ShortRead(f"body ended at {self._pos} of {self._size} bytes")
        return data

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:
                pass  # the connection is already broken; we only release it

    def readinto(self, b: Any) -> int:
        if self._pos >= self._size:
            return 0
        n = min(len(b), self._size - self._pos)
        try:
            data = call_with_retry(self._store.policy, self._read_some, n)
        except bex.ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412"):
                raise IntegrityError(f"store {self._store.url}: {self._key} changed while it was being read") from exc
            raise self._store.translate(exc, "GetObject", self._key) from exc
        except Exception as exc:
            raise self._store.translate(exc, "GetObject", self._key) from exc
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._drop_body()
        super().close()

