"""Streaming exec: a command in a container with stdin and stdout as byte streams.

The engines' `exec` buffers a probe's few lines; a database dump is gigabytes, so neither side is ever
held in memory or in a temp file. Environment variables (a database password) travel in the exec's create
request: never in argv, so never in `ps`, a log line or the history."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import docker
import requests
from docker import errors as derr
from docker.utils.socket import STDERR, STDOUT, frames_iter

from migrator.errors import EngineError, EngineUnreachable

STDERR_KEEP = 64 * 1024  # bytes of the command's stderr kept for an error message (the tail)
EXIT_WAIT = 30.0  # seconds an exec may take to be seen as ended once its streams closed


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stderr: str  # the tail, for error messages


def _raw_socket(sock):
    return getattr(sock, "_sock", sock)


def exec_stream(api: docker.APIClient, container: str, argv: list[str], *, env: dict[str, str] | None = None,
                user: str | None = None, stdin: Iterable[bytes] | None = None,
                on_stdout: Callable[[bytes], None] | None = None) -> ExecResult:
    """Run `argv` in `container`; feed `stdin` (when given) and hand stdout to `on_stdout` as it arrives.
    Through the Docker-compatible exec API that podman and dockerd both serve: stdout goes to `on_stdout`
    chunk by chunk, and stdin is fed from its iterator while stdout is read. An error raised by `on_stdout`
    or by the `stdin` iterator stops the exec's streams and is re-raised."""
    what = f"exec in {container}"
    try:
        created = api.exec_create(container, argv, stdout=True, stderr=True, stdin=stdin is not None,
                                  environment=[f"{k}={v}" for k, v in (env or {}).items()], user=user or "")
        sock = api.exec_start(created["Id"], socket=True)
    except (requests.ConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise EngineUnreachable(f"the container engine does not answer ({what})") from exc
    except derr.APIError as exc:
        raise EngineError(f"the container engine refused {what}: {exc.explanation or exc}") from exc
    raw = _raw_socket(sock)
    feeder, feed_error = None, []
    if stdin is not None:
        def feed() -> None:
            try:
                for chunk in stdin:
                    raw.sendall(chunk)
                raw.shutdown(socket.SHUT_WR)
            except OSError as exc:  # the command stopped reading (it failed): its exit code says why
                feed_error.append(exc)
            except BaseException as exc:  # noqa: BLE001 - the iterator's own error, re-raised by the caller
                feed_error.append(exc)
                _shutdown(raw)

        feeder = threading.Thread(target=feed, name=f"exec-stdin-{container}", daemon=True)
        feeder.start()
    err = bytearray()
    read_error: OSError | None = None
    try:
        for stream, data in frames_iter(sock, tty=False):
            if stream == STDOUT:
                if on_stdout is not None:
                    on_stdout(data)
            elif stream == STDERR:
                err += data
                if len(err) > 2 * STDERR_KEEP:
                    del err[:-STDERR_KEEP]
    except OSError as exc:  # the engine dropped the stream: the exit code below says whether it matters
        read_error = exc
    except BaseException:
        _shutdown(raw)
        raise
    finally:
        if read_error is not None or feeder is not None and feed_error:
            _shutdown(raw)
        if feeder is not None:
            feeder.join()
        sock.close()
    if feed_error and not isinstance(feed_error[0], OSError):
        raise feed_error[0]
    code = _exit_code(api, created["Id"], what)
    if code == 0 and (read_error is not None or feed_error):
        raise EngineError(f"the container engine dropped the streams of {what} "
                          f"({read_error or feed_error[0]}) though the command succeeded")
    return ExecResult(exit_code=code, stderr=bytes(err[-STDERR_KEEP:]).decode(errors="replace"))


def _shutdown(raw) -> None:
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _exit_code(api: docker.APIClient, exec_id: str, what: str) -> int:
    """The exec's exit code, once the engine has seen the command end (bounded wait after a dropped stream)."""
    deadline = time.monotonic() + EXIT_WAIT
    while True:
        try:
            info = api.exec_inspect(exec_id)
        except derr.APIError as exc:
            raise EngineError(f"the container engine lost {what}: {exc.explanation or exc}") from exc
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() > deadline:
            raise EngineError(f"{what} still runs {EXIT_WAIT:.0f} s after its output ended")
        time.sleep(0.1)  # polling the engine for the exit, bounded by EXIT_WAIT
