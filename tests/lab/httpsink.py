"""A real HTTP server on loopback that keeps every request it receives (method, path, headers, body), for
ping and webhook tests; `wait_for` polls for what a test expects, with a deadline."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.lab.vsn import free_port


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: str


@dataclass
class HTTPSink:
    port: int = field(default_factory=free_port)
    requests: list[Request] = field(default_factory=list)
    status: int = 200

    def __post_init__(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                sink.requests.append(Request(self.command, self.path, dict(self.headers), body))
                self.send_response(sink.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _any  # noqa: N815 - http.server's names

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HTTPSink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, predicate, timeout: float = 30.0) -> list[Request]:
        """Poll until predicate(requests) is true; the requests so far either way (the caller asserts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate(list(self.requests)):
            time.sleep(0.05)
        return list(self.requests)
