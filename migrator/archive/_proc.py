"""Child processes and helper threads of the archive pipelines (tar, age): no shell, always reaped.

Whatever fails (a sink, the decompressor, a hostile member, the child), the child is killed and waited
for and its stderr thread joined: no zombie, no thread blocked on a pipe. `Stage` runs a consumer behind a
small bounded queue, so two CPU-heavy steps overlap while memory stays at a few chunks."""

from __future__ import annotations

import fcntl
import os
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence

from migrator.errors import PreflightFailed

# GNU tar and age run in the C locale: English diagnostics (we quote them to the operator) and file
# names passed through as raw bytes, with no charset conversion that could mangle non-UTF-8 names.
TOOL_ENV_OVERRIDES = {"LC_ALL": "C", "LANG": "C"}
# Keep at most this much of a child's stderr: plenty for the lines that name a failing file, while a
# flood of "file changed as we read it" warnings on a busy tree cannot grow memory.
STDERR_KEEP = 64 * 1024
# Kernel pipe buffer we ask for (default 64 KiB): fewer wake-ups between tar and us at GB/s rates.
# Linux caps unprivileged requests at /proc/sys/fs/pipe-max-size (1 MiB by default); failure is harmless.
PIPE_SIZE = 1024 * 1024
# How long a child that has already closed its output gets to exit by itself before we kill it.
EXIT_GRACE_S = 5.0

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TOOL_ENV_OVERRIDES)
    return env


def grow_pipe(fileobj) -> None:
    try:
        fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only costs speed


class Child:
    """One child process with a stderr-draining thread. `close()` always reaps it (kill if still running)."""

    def __init__(self, argv: Sequence[str], *, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 what: str | None = None):
        self.what = what or argv[0]
        try:
            self.proc = subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                         env=tool_env(), close_fds=True)
        except FileNotFoundError:
            raise PreflightFailed(f"`{argv[0]}` is not installed; the archive pipeline needs it",
                                  hint="install it (Debian: apt-get install tar zstd age) and retry") from None
        self._err = bytearray()
        self._err_dropped = False
        self._drain = threading.Thread(target=self._drain_stderr, name=f"{self.what}-stderr", daemon=True)
        self._drain.start()
        self.returncode: int | None = None

    @property
    def stdin(self):
        return self.proc.stdin

    @property
    def stdout(self):
        return self.proc.stdout

    def _drain_stderr(self) -> None:
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._err += chunk
            if len(self._err) > STDERR_KEEP:
                # Keep the head (the first failure is the one to report) and the tail.
                half = STDERR_KEEP // 2
                self._err[half:-half] = b"\n...\n"
                self._err_dropped = True

    def stderr_lines(self) -> list[str]:
        text = bytes(self._err).decode("utf-8", "replace")
        return [line.strip() for line in text.splitlines() if line.strip()]

    def wait(self, timeout: float | None = None) -> int:
        """Wait for a child that is finishing on its own; raises subprocess.TimeoutExpired."""
        rc = self.proc.wait(timeout)
        self._finish()
        self.returncode = rc
        return rc

    def close(self) -> None:
        """Reap the child whatever state it is in: kill if running, wait, close pipes, join the drain."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.returncode = self.proc.wait()
        self._finish()

    def _finish(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # e.g. a broken pipe while flushing stdin of a dead child
        self._drain.join()
        self.proc.stderr.close()

    def describe_failure(self) -> str:
        """One line for the operator: the child's first diagnostic lines, else its exit status."""
        lines = [ln for ln in self.stderr_lines() if ln != "..."]
        rc = self.returncode
        status = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        return "; ".join(lines[:3]) if lines else f"{self.what} failed ({status})"


def close_all(children: list[Child], threads: list[threading.Thread]) -> None:
    """Kill/reap every child first (that unblocks any thread stuck on one of their pipes), then join."""
    for child in reversed(children):
        child.close()
    for thread in threads:
        if thread.ident is not None:  # started
            thread.join()


class Stage:
    """`consume(item)` in its own thread, fed through a queue of at most `depth` items.

    `put` blocks while the queue is full and re-raises the consumer's error (after one, the rest is
    drained unconsumed, so a producer is never left blocked). `close` waits for every item to be consumed
    and re-raises that error; `abort` stops without consuming the rest. Either must be called, once.
    """

    _END = object()

    def __init__(self, name: str, consume: Callable[[object], None], depth: int):
        self._queue: queue.Queue = queue.Queue(depth)
        self._consume = consume
        self._skip = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._END:
            if self.error is None and not self._skip:
                try:
                    self._consume(item)
                except BaseException as exc:  # handed to the producer by put/close
                    self.error = exc

    def put(self, item: object) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(self._END)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self._skip = True
        self._queue.put(self._END)
        self._thread.join()
