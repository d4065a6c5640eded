"""Lab: an S3 service on loopback (moto's server, real HTTP) and a fault-injecting proxy in front of it.

Owns:
- `moto_server()`: moto's `ThreadedMotoServer` on 127.0.0.1 on a free port (in this process), or with
  `in_process=False` moto in a child process (needed when a test measures this process's memory:
  the in-process server keeps every uploaded byte in our heap and would count in tracemalloc);
- `aws_test_env(monkeypatch, endpoint)`: fake credentials and region for one test only; it also
  points AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE nowhere, so a developer's real ~/.aws is never used;
- `create_bucket(endpoint)`: a uniquely named bucket (S3 names need 3+ characters);
- `FaultProxy`: a tiny threading HTTP proxy that answers the first N requests of a kind (UploadPart,
  PutObject, ...) with 503 SlowDown, 500 InternalError or a dropped connection, and forwards the rest.

Fixtures: `s3_server` (session, threaded), `s3_server_process` (session, child process),
`s3_env` (function: env + endpoint), `s3_bucket` (function: a fresh bucket), `s3_fault_proxy` (function).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from tests.lab.procs import stop_process

HOST = "127.0.0.1"
REGION = "us-east-1"
# The child-process server imports flask and all of moto: a few seconds on a loaded 2-core machine.
START_TIMEOUT = 60.0
POLL_INTERVAL = 0.1
STOP_TIMEOUT = 10.0
# Headers that describe one hop of an HTTP connection and must not be forwarded.
FAULTS = {"503": ("SlowDown", 503), "500": ("InternalError", 500), "403": ("AccessDenied", 403),
          "reset": None, "truncate": None}
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                         "trailer", "upgrade", "proxy-authorization", "proxy-authenticate"})


@dataclass
class S3Server:
    endpoint_url: str
    stop: object  # callable; kept as a field so both server kinds look the same


@dataclass
class S3Bucket:
    name: str
    endpoint_url: str

    def url(self, prefix: str = "backups") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def options(self, **extra: object) -> dict:
        """Store options (like the plan's backup.s3 section) pointing at this server."""
        return {"endpoint_url": self.endpoint_url, "region": REGION, **extra}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_http(port: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/moto-api/data.json")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"moto server on {HOST}:{port} not ready after {START_TIMEOUT}s")


@contextlib.contextmanager
def moto_server(*, in_process: bool = True) -> Iterator[S3Server]:
    """Run an S3 server on 127.0.0.1 and yield its endpoint; stopped on exit."""
    if in_process:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield S3Server(endpoint_url=f"http://{host}:{port}", stop=server.stop)
        finally:
            server.stop()
        return
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        stop_process(proc, STOP_TIMEOUT)

    try:
        _wait_http(port, proc)
        yield S3Server(endpoint_url=f"http://{HOST}:{port}", stop=stop)
    finally:
        stop()


def aws_test_env(monkeypatch: pytest.MonkeyPatch, endpoint_url: str | None = None) -> None:
    """Fake credentials/region for this test only; no real AWS configuration is read."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/migrator-lab/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/migrator-lab/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket (unique name unless given) on the server; needs `aws_test_env` active."""
    name = name or f"mig-{uuid.uuid4().hex[:12]}"
    assert len(name) >= 3
    boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION).create_bucket(Bucket=name)
    return name


# -- fault injection ------------------------------------------------------------------------------------


def request_kind(method: str, target: str) -> str:
    """Name the S3 operation of a path-style request, e.g. PUT /b/k?partNumber=1&uploadId=x -> UploadPart."""
    parts = urlsplit(target)
    q = parse_qs(parts.query, keep_blank_values=True)
    segments = [s for s in parts.path.split("/") if s]
    has_key = len(segments) > 1
    if method == "PUT":
        if "partNumber" in q and "uploadId" in q:
            return "UploadPart"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "delete" in q:
            return "DeleteObjects"
        return "Post"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if has_key:
            return "GetObject"
        if "uploads" in q:
            return "ListMultipartUploads"
        return "ListObjectsV2" if q.get("list-type") == ["2"] else "ListObjects"
    return method


class FaultProxy:
    """HTTP proxy in front of an S3 endpoint that fails chosen requests.

    `proxy.fail("UploadPart", 2)` makes the next two UploadPart requests answer 503 SlowDown;
    fault may also be "500" (InternalError), "403" (AccessDenied), "reset" (connection dropped without
    an answer) or "truncate" (forwarded, but the connection drops after half the response body).
    Request bodies are read in full before answering, like S3. `seen` / `injected` count per kind.
    """

    def __init__(self, upstream_url: str) -> None:
        up = urlsplit(upstream_url)
        self.upstream = (up.hostname or HOST, up.port or 80)
        self.seen: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True
        self.endpoint_url = f"http://{HOST}:{self._server.server_address[1]}"
        # Short poll interval: shutdown() waits for it, and every test using the proxy stops it.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="s3-fault-proxy", daemon=True)

    def fail(self, kind: str, count: int = 1, fault: str = "503") -> None:
        assert fault in FAULTS
        with self._lock:
            self._faults[kind].extend([fault] * count)

    def _next_fault(self, kind: str) -> str | None:
        with self._lock:
            self.seen[kind] += 1
            queue = self._faults.get(kind)
            if queue:
                self.injected[kind] += 1
                return queue.popleft()
            return None

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as botocore expects

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base)
                return  # quiet: pytest shows failures, not every request

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _inject(self, fault: str) -> None:
                if fault == "reset":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                code, status = FAULTS[fault]
                payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                           f"<Message>injected by the lab fault proxy</Message><RequestId>lab</RequestId></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes, *, truncate: bool = False) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if truncate:
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                    elif self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._next_fault(request_kind(self.command, self.path))
                if fault == "truncate":
                    self._forward(body, truncate=True)
                elif fault:
                    self._inject(fault)
                else:
                    self._forward(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 (http.server names)

        return Handler


# -- pytest fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's ThreadedMotoServer on 127.0.0.1 (this process), for the whole session."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server_process() -> Iterator[S3Server]:
    """moto in a child process, for tests that measure this process's memory."""
    with moto_server(in_process=False) as server:
        yield server


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> S3Server:
    """Fake AWS credentials and AWS_ENDPOINT_URL=the lab server, for one test."""
    aws_test_env(monkeypatch, s3_server.endpoint_url)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> S3Bucket:
    """A fresh bucket on the lab server (credentials set for this test)."""
    return S3Bucket(name=create_bucket(s3_env.endpoint_url), endpoint_url=s3_env.endpoint_url)


@pytest.fixture
def s3_fault_proxy(s3_env: S3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the lab server; use `proxy.endpoint_url` as the store's endpoint_url."""
    proxy = FaultProxy(s3_env.endpoint_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
