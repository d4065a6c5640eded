"""A session with a remote VSN over SSH: run migrator there and stream data to it.

argv is quoted with shlex for the remote shell. A dropped connection becomes Unreachable (exit 8); a
remote migrator failure becomes the same error class the remote exit code means."""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import shlex
from collections.abc import Callable
from typing import Any

import paramiko

from migrator import errors
from migrator.remote import frames
from migrator.remote.ssh import Address, connect, parse_address

# Bytes the remote side may send before we read them: only JSON results and error lines come back.
MAX_REPLY = 64 * 1024 * 1024
# A remote command with no output for this long is hung (deploy waits for health probes: minutes).
COMMAND_TIMEOUT = 3600
# Bigger SSH windows keep a long bulk stream from stalling on acknowledgements.
WINDOW_SIZE = 16 * 1024 * 1024
SEND_CHUNK = 1024 * 1024

REMOTE_ERRORS = {2: errors.UsageError, 3: errors.PlanInvalid, 4: errors.PreflightFailed, 5: errors.LockHeld,
                 6: errors.IntegrityError, 7: errors.DeployFailed, 8: errors.Unreachable}


class MigratorMissing(errors.PreflightFailed):
    """The remote command that should run migrator is not there (exit 127, "not found")."""


class RemoteStream:
    """A remote command fed from here: write() bytes to its stdin, finish() to get (exit code, stdout, stderr)."""

    def __init__(self, session: RemoteVSN, channel: paramiko.Channel, command: str):
        self.session = session
        self.channel = channel
        self.command = command

    def write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            for start in range(0, len(view), SEND_CHUNK):
                self.channel.sendall(view[start:start + SEND_CHUNK])
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self.session.dropped(f"sending data ({exc or type(exc).__name__})") from exc

    def finish(self) -> tuple[int, str, str]:
        try:
            self.channel.shutdown_write()
            return self.session.collect(self.channel)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self.session.dropped(f"waiting for {self.command[:60]}") from exc

    def abort(self) -> None:
        self.channel.close()


class RemoteAgent:
    """A remote `migrator … --json` that lives through several steps: send() messages and data() streams
    to its stdin as frames (migrator.remote.frames), read its events, one JSON line each, with event();
    finish() returns its final JSON object (or raises the error its exit code maps to). If the agent
    stops early (it failed), the error it reported wins over the broken pipe the sender then sees."""

    def __init__(self, session: RemoteVSN, channel: paramiko.Channel, command: str, verb: str):
        self.session = session
        self.channel = channel
        self.command = command
        self.verb = verb
        self.stdout = channel.makefile("rb")
        self.read_bytes = 0

    def _send(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._fail_from_reply()
            raise self.session.dropped(f"sending to `migrator {self.verb}` ({exc or type(exc).__name__})") from exc

    def write(self, data: bytes) -> None:
        """Raw bytes (already framed) for the agent's stdin."""
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):
            self._send(bytes(view[start:start + SEND_CHUNK]))

    def send(self, message: dict) -> None:
        self._send(frames.encode_json(message))

    def data(self) -> frames.DataWriter:
        """A sink whose bytes reach the agent as one stream; close() it to end the stream."""
        return frames.DataWriter(self)

    def _line(self) -> bytes:
        try:
            line = self.stdout.readline(MAX_REPLY + 1)
        except TimeoutError as exc:
            raise self.session.dropped(f"waiting for `migrator {self.verb}` (timed out)") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self.session.dropped(f"waiting for `migrator {self.verb}`") from exc
        self.read_bytes += len(line)
        if self.read_bytes > MAX_REPLY:
            raise errors.IntegrityError(f"{self.session.what} sent more than {MAX_REPLY} bytes of output")
        return line

    @staticmethod
    def _as_event(line: bytes) -> dict | None:
        """An event is a whole JSON object on one line with an "event" key; the final reply is printed
        indented (its first line is a lone "{"), so it never parses as one."""
        stripped = line.strip()
        if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            return None
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        return obj if isinstance(obj, dict) and "event" in obj else None

    def _next(self, on_progress) -> tuple[bytes, dict | None]:
        """The agent's next line that is not a progress event (those go to `on_progress`), and its event
        (None when the line is not one: the final reply has begun)."""
        while True:
            line = self._line()
            obj = self._as_event(line)
            if obj is None or obj["event"] != "progress":
                return line, obj
            if on_progress is not None:
                on_progress(str(obj.get("message", ""))[:300])

    def event(self, expected: str, on_progress=None) -> dict:
        """The agent's next event, which must be `expected` (progress events go to `on_progress`). If the
        agent ended instead, its final reply is read and its error raised."""
        line, obj = self._next(on_progress)
        if obj is None:
            self._fail_from_reply(line)
            raise errors.IntegrityError(f"{self.session.what}: `migrator {self.verb}` ended without "
                                        f"reporting {expected!r}")
        if obj["event"] != expected:
            raise errors.IntegrityError(f"{self.session.what}: `migrator {self.verb}` reported "
                                        f"{str(obj['event'])[:40]!r}, expected {expected!r}")
        return obj

    def _rest(self, first: bytes = b"") -> tuple[int, str, str]:
        doing = f"`migrator {self.verb}`"
        try:
            return self.session.collect(self.channel, doing=doing, stdout=self.stdout, first=first)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self.session.dropped(f"waiting for {doing}") from exc

    def _fail_from_reply(self, first: bytes = b"") -> None:
        """The agent stopped talking: raise the error its final reply (and exit code) names, if any."""
        try:
            code, out, err = self._rest(first)
        except errors.MigratorError:
            return
        self.session.reply(code, out, err, self.verb)  # raises for a failure; a success here is unexpected

    def finish(self, on_progress=None) -> dict:
        """Close the agent's stdin, read its remaining progress events and its final JSON object."""
        try:
            self.channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self.session.dropped(f"talking to `migrator {self.verb}`") from exc
        while True:
            line, obj = self._next(on_progress)
            if obj is None:
                code, out, err = self._rest(line)
                return self.session.reply(code, out, err, self.verb)
            # else an event nobody waits for (e.g. a newer agent's): the final reply decides

    def abort(self) -> None:
        self.channel.close()


class RemoteVSN:
    """A session with a remote VSN: run migrator there and read its one JSON object (`migrator`), stream
    bytes into a remote command's stdin (RemoteStream), talk to a long-lived remote agent (RemoteAgent:
    framed messages and streams in, JSON event lines out), and put small files over SFTP (atomically, with
    the mode they need)."""

    def __init__(self, address: Address, options: dict[str, Any], command: list[str]):
        self.address = address
        self.options = options
        self.command = command  # how to run migrator there, e.g. ["migrator"] or ["env", "X=1", "/opt/m"]
        self.what = f"target VSN {address}"
        self.client, self.peer = connect(address, options, self.what)
        transport = self.client.get_transport()
        assert transport is not None
        transport.default_window_size = WINDOW_SIZE
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def open(cls, target: str, options: dict[str, Any] | None = None, command: list[str] | None = None) -> RemoteVSN:
        return cls(parse_address(target), dict(options or {}), list(command or ["migrator"]))

    def dropped(self, doing: str) -> errors.Unreachable:
        return errors.Unreachable(f"{self.what}: the SSH connection to {self.peer} dropped while {doing}",
                                  hint="check the network; `migrator move` can be run again (it resumes or undoes)")

    def _exec(self, argv: list[str], timeout: float = COMMAND_TIMEOUT) -> tuple[paramiko.Channel, str]:
        line = shlex.join(argv)
        try:
            channel = self.client.get_transport().open_session(window_size=WINDOW_SIZE)
            channel.settimeout(timeout)
            channel.exec_command(line)
        except (OSError, EOFError, paramiko.SSHException, AttributeError) as exc:
            raise self.dropped(f"starting {line[:80]}") from exc
        return channel, line

    def collect(self, channel: paramiko.Channel, *, doing: str = "a reply", stdout=None,
                first: bytes = b"") -> tuple[int, str, str]:
        """Read a finished command's stdout, then stderr, then its exit status. Remote migrator writes one
        JSON object to stdout and a few lines to stderr (no TTY: no progress), so reading them one after
        the other cannot fill the channel window and deadlock. `stdout`: the channel's stdout file if
        the caller already reads it (a RemoteAgent), with `first`, the bytes it read of the reply."""
        try:
            with stdout or channel.makefile("rb") as out_file, channel.makefile_stderr("rb") as stderr:
                out = first + out_file.read(MAX_REPLY + 1 - len(first))
                err = stderr.read(MAX_REPLY + 1)
            if len(out) > MAX_REPLY or len(err) > MAX_REPLY:
                raise errors.IntegrityError(f"{self.what} sent more than {MAX_REPLY} bytes of output")
            code = channel.recv_exit_status()
        except TimeoutError as exc:
            raise self.dropped(f"waiting for {doing} (timed out)") from exc
        finally:
            channel.close()
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    def run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
        """Run a plain command (argv) on the target."""
        channel, _line = self._exec(argv, timeout)
        return self.collect(channel)

    def migrator(self, *args: str) -> dict:
        """Run `migrator ARGS --json` on the target; its one JSON object, or the error it maps to."""
        code, out, err = self.run([*self.command, *args, "--json"])
        return self.reply(code, out, err, args[0] if args else "migrator")

    def reply(self, code: int, out: str, err: str, verb: str) -> dict:
        if code == -1:  # paramiko: the channel closed without an exit status -> the connection went away
            raise self.dropped(f"running `migrator {verb}`")
        try:
            data = json.loads(out) if out.strip() else None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            if code == 127 or "not found" in err or "No module named migrator" in err:
                raise MigratorMissing(f"{self.what}: migrator is not installed there ({err.strip()[-200:]})",
                                             hint="install migrator on the target (same version), or pass --install")
            raise errors.IntegrityError(f"{self.what}: `migrator {verb}` answered nonsense (exit {code}): "
                                        f"{(out or err).strip()[-200:]}")
        if code != 0:
            cls = REMOTE_ERRORS.get(code, errors.MigratorError)
            raise cls(f"{self.what}: {data.get('message', 'failed')}", details=data.get("details") or [],
                      hint=data.get("hint"))
        return data

    def stream(self, *args: str) -> RemoteStream:
        """Start `migrator ARGS --json` on the target, to be fed through the returned stream."""
        channel, line = self._exec([*self.command, *args, "--json"])
        return RemoteStream(self, channel, line)

    def agent(self, *args: str) -> RemoteAgent:
        """Start `migrator ARGS --json` on the target as a long-lived agent (see RemoteAgent)."""
        channel, line = self._exec([*self.command, *args, "--json"])
        return RemoteAgent(self, channel, line, " ".join(args[:2]))

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (OSError, paramiko.SSHException) as exc:
                raise self.dropped("opening SFTP") from exc
        return self._sftp

    def put_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write `data` to `path` on the target atomically with `mode` (set before any byte is written)."""
        self._put_atomically(path, mode, lambda fh: fh.write(data))

    def put_stream(self, path: str, local: str | os.PathLike, mode: int = 0o644) -> None:
        """Copy a (big) local file to `path` on the target atomically, streamed over SFTP."""

        def copy(fh) -> None:
            fh.set_pipelined(True)
            with open(local, "rb") as src:
                while chunk := src.read(SEND_CHUNK):
                    fh.write(chunk)

        self._put_atomically(path, mode, copy)

    def _put_atomically(self, path: str, mode: int, write: Callable[[Any], None]) -> None:
        """A temp name beside `path`, created with `mode` before `write(fh)` fills it, then renamed over `path`."""
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{secrets.token_hex(4)}")
        try:
            with self.sftp.open(tmp, "wb") as fh:
                fh.chmod(mode)
                write(fh)
            self.sftp.posix_rename(tmp, path)
        except OSError as exc:
            raise errors.Unreachable(f"{self.what}: cannot write {path}: {exc}") from exc
        except (EOFError, paramiko.SSHException) as exc:
            raise self.dropped(f"writing {path}") from exc

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        code, _out, err = self.run(["mkdir", "-p", "-m", oct(mode)[2:], path])
        if code != 0:
            raise errors.PreflightFailed(f"{self.what}: cannot create {path}: {err.strip()}")

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()
