"""ssh:// snapshot store (paramiko SFTP): `ssh://[user@]host[:port]/abs/path` on another machine.

Unknown or changed host keys are refused (exit 8), never added. Writes go to a partial name, fsync, then
posix-rename: atomic on the remote filesystem. Not done: ProxyCommand/ProxyJump, HostKeyAlias,
reconnecting mid-transfer."""

from __future__ import annotations

import errno
import io
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import CMD_EXTENDED

from migrator.errors import IntegrityError, MigratorError, ObjectMissing, Unreachable, UsageError
from migrator.remote.ssh import Address, connect, resolve
from migrator.retry import RetryPolicy
from migrator.storage.base import (
    STREAM_BUFFER,
    RawReader,
    SnapshotStore,
    WriterBase,
    check_key,
    is_hidden_name,
    partial_name,
    probe_name,
    read_limited,
    too_large,
)

# Read-ahead window: bytes requested in parallel (as 32 KiB SFTP reads) before the consumer takes them.
# Hides the round-trip latency while bounding memory (paramiko's own prefetch buffers the whole file).
READ_WINDOW = 4 * 1024 * 1024
# Modes for what we create: snapshots hold whole databases, so only the owner may read them.
DIR_MODE = 0o700
FILE_MODE = 0o600


class SSHStore(SnapshotStore):
    """Snapshot store in a directory of another host, reached over SFTP.

    - Address like OpenSSH: ~/.ssh/config (or `ssh_config_file`) Host aliases give HostName, User, Port,
      IdentityFile, IdentitiesOnly and UserKnownHostsFile; the URL's user and port win.
    - Host keys are checked against known_hosts (`known_hosts_file`, else the config's
      UserKnownHostsFile, else ~/.ssh/known_hosts, plus /etc/ssh/ssh_known_hosts) and the plan's pinned
      `known_host_keys`.
    - Auth: `identity_file` (the plan's backup.ssh.identity_file, for cron jobs without an agent), then
      the config's IdentityFile, the agent, default keys.
    - Writes: pipelined 1 MiB writes on the writer's own SFTP channel to `<name>.partial-<pid>-<hex>`,
      fsync (if the server offers fsync@openssh.com), posix-rename. Reads: bounded read-ahead windows."""

    def __init__(self, url: str, *, options: dict[str, Any] | None = None,
                 retry_policy: RetryPolicy | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise UsageError(f"bad SSH store URL {url!r}", hint="use ssh://[user@]host[:port]/abs/path")
        if parts.password is not None:
            raise UsageError("passwords in SSH store URLs are not supported",
                             hint="use a key: IdentityFile in ~/.ssh/config or the agent")
        try:
            self.url_port = parts.port
        except ValueError as exc:
            raise UsageError(f"bad port in SSH store URL {url!r}") from exc
        self.root = posixpath.normpath(unquote(parts.path or ""))
        if not self.root.startswith("/"):
            raise UsageError(f"SSH store URL {url!r} needs an absolute path", hint="ssh://host/srv/backups")
        self.alias = parts.hostname
        self.url_user = unquote(parts.username) if parts.username else None
        user = f"{self.url_user}@" if self.url_user else ""
        port = f":{self.url_port}" if self.url_port else ""
        self.url = f"ssh://{user}{self.alias}{port}{self.root}"
        self.options = dict(options or {})
        self.address = Address(self.alias, self.url_user, self.url_port)
        self.policy = retry_policy  # None: the shared connect policy (remote.ssh)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._dirs_made: set[str] = set()
        self.target = self.alias  # "host:port" once resolved, for messages

    # -- connection ---------------------------------------------------------------------------------

    def resolve(self) -> dict[str, Any]:
        """Connection parameters after applying the SSH config and the URL (no network)."""
        return resolve(self.address, self.options, f"store {self.url}")

    def _connect(self) -> paramiko.SFTPClient:
        identity = self.options.get("identity_file")
        if isinstance(identity, str) and not os.access(identity, os.R_OK):
            # paramiko would skip an unreadable key and report an auth failure naming none of it.
            raise Unreachable(f"store {self.url}: backup.ssh.identity_file {identity} is not a readable file",
                              hint="point backup.ssh.identity_file at the store's private key (absolute path)")
        client, self.target = connect(self.address, self.options, f"store {self.url}", self.policy)
        try:
            sftp = client.open_sftp()
        except Exception as exc:
            client.close()
            raise Unreachable(f"store {self.url}: {self.target} refused SFTP: {exc or type(exc).__name__}",
                              hint="check that the SSH server offers the sftp subsystem") from exc
        self._client = client
        return sftp

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._connect()
        return self._sftp

    def open_channel(self) -> paramiko.SFTPClient:
        """A new SFTP session on the store's connection (for a writer that pipelines)."""
        self.sftp  # noqa: B018 (connects if needed)
        assert self._client is not None
        return self._client.open_sftp()

    def close(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        if sftp is not None:
            sftp.close()
        if client is not None:
            client.close()

    @contextmanager
    def edge(self, action: str, key: str) -> Iterator[None]:
        """Translate SFTP/SSH errors escaping the block (callers catch the ENOENT they expect inside it)."""
        try:
            yield
        except MigratorError:
            raise
        except PermissionError as exc:
            raise Unreachable(f"store {self.url}: {action} {key or '/'}: permission denied on {self.target}",
                              hint="check the remote directory's owner and mode") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Unreachable(f"store {self.url}: {action} {key or '/'} failed on {self.target}: "
                              f"{exc or type(exc).__name__}") from exc

    # -- paths --------------------------------------------------------------------------------------

    def _path(self, key: str, *, allow_empty: bool = False) -> str:
        try:
            rel = check_key(key, allow_empty=allow_empty)
        except ValueError as exc:
            raise IntegrityError(f"{self.url}: {exc}") from exc
        return posixpath.join(self.root, rel) if rel else self.root

    def _makedirs(self, path: str) -> None:
        """mkdir -p over SFTP (remembered per connection so a snapshot's objects cost one stat)."""
        if path in self._dirs_made:
            return
        cur = "/"
        for comp in path.strip("/").split("/"):
            cur = posixpath.join(cur, comp)
            if cur in self._dirs_made:
                continue
            try:
                st = self.sftp.stat(cur)
            except FileNotFoundError:
                try:
                    self.sftp.mkdir(cur, DIR_MODE)
                except OSError:
                    st = self.sftp.stat(cur)  # created concurrently by someone else?
                    if not stat.S_ISDIR(st.st_mode or 0):
                        raise
            else:
                if not stat.S_ISDIR(st.st_mode or 0):
                    raise OSError(errno.ENOTDIR, f"{cur} is not a directory")
            self._dirs_made.add(cur)

    # -- interface ----------------------------------------------------------------------------------

    def open_writer(self, key: str) -> _SFTPWriter:
        return _SFTPWriter(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        return io.BufferedReader(_SFTPReader(self, key), buffer_size=STREAM_BUFFER)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_writer(key) as w:
            w.write(data)
            w.commit()

    def get_bytes(self, key: str, max_size: int) -> bytes:
        raw = _SFTPReader(self, key)
        with io.BufferedReader(raw, buffer_size=STREAM_BUFFER) as f:
            too_large(raw.size, max_size, f"{self.url}: {key}")
            with self.edge("read", key):
                return read_limited(f, max_size, f"{self.url}: {key}")

    def size(self, key: str) -> int | None:
        path = self._path(key)
        with self.edge("stat", key):
            try:
                st = self.sftp.stat(path)
            except FileNotFoundError:
                return None
        return st.st_size if stat.S_ISREG(st.st_mode or 0) else None

    def list_dir(self, prefix: str) -> list[str]:
        path = self._path(prefix, allow_empty=True)
        with self.edge("list", prefix):
            try:
                names = self.sftp.listdir(path)
            except FileNotFoundError:
                return []
            except OSError as exc:
                if exc.errno == errno.ENOTDIR or "not a directory" in str(exc).lower():
                    return []
                raise
        return sorted(n for n in names if not is_hidden_name(n))

    def mtime(self, key_or_prefix: str) -> float | None:
        path = self._path(key_or_prefix, allow_empty=True)
        with self.edge("stat", key_or_prefix):
            try:
                st = self.sftp.lstat(path)
            except FileNotFoundError:
                return None
            newest = float(st.st_mtime or 0)
            if stat.S_ISDIR(st.st_mode or 0):
                newest = max(newest, self._newest_under(path))
        return newest

    def _newest_under(self, path: str) -> float:
        newest = 0.0
        try:
            entries = self.sftp.listdir_attr(path)
        except FileNotFoundError:
            return newest
        for attr in entries:
            newest = max(newest, float(attr.st_mtime or 0))
            if stat.S_ISDIR(attr.st_mode or 0):
                newest = max(newest, self._newest_under(posixpath.join(path, attr.filename)))
        return newest

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)  # empty prefix refused: never delete the whole store
        with self.edge("delete", prefix):
            try:
                st = self.sftp.lstat(path)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode or 0):
                self._rmtree(path)
            else:
                self.sftp.remove(path)
        self._dirs_made = {d for d in self._dirs_made if d != path and not d.startswith(path + "/")}

    def _rmtree(self, path: str) -> None:
        for attr in self.sftp.listdir_attr(path):
            child = posixpath.join(path, attr.filename)
            if stat.S_ISDIR(attr.st_mode or 0):  # listdir_attr is lstat-based: symlinks are not followed
                self._rmtree(child)
            else:
                try:
                    self.sftp.remove(child)
                except FileNotFoundError:
                    continue
        try:
            self.sftp.rmdir(path)
        except FileNotFoundError:
            pass

    def check(self) -> None:
        probe = posixpath.join(self.root, probe_name())
        with self.edge("write a probe to", ""):
            self._makedirs(self.root)
            with self.sftp.open(probe, "wb") as f:
                f.write(b"migrator store check\n")
            self.sftp.remove(probe)


class _SFTPWriter(WriterBase):
    def __init__(self, store: SSHStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._final = store._path(key)
        # pid + random: several machines may write into one store, and pids repeat across machines.
        self._partial = partial_name(self._final, secrets.token_hex(4))
        self._written = 0
        with store.edge("create", key):
            store._makedirs(posixpath.dirname(self._final))
            # A channel of its own: paramiko matches pipelined write replies by order, and another request
            # on a shared channel (size(), list_dir() while this writer is open) would swallow some of
            # them and leave the next drain waiting forever.
            self._sftp = store.open_channel()
            try:
                self._file = self._sftp.open(self._partial, "wb", bufsize=STREAM_BUFFER)
                self._file.chmod(FILE_MODE)
            except BaseException:
                self._sftp.close()
                raise
            self._file.set_pipelined(True)  # do not wait one round trip per 32 KiB write

    def write(self, b: bytes) -> None:
        self._ensure_open()
        try:
            with self._store.edge("write", self._key):
                self._file.write(b)
        except BaseException:
            self.abort()
            raise
        self._written += len(b)

    def _drain_pipelined(self) -> None:
        # paramiko reports a failed pipelined write only if its reply is read on its behalf; replies
        # still pending are collected here so ENOSPC/EIO fail the commit instead of vanishing.
        f, sftp = self._file, self._sftp
        reqs = getattr(f, "_reqs", None)
        while reqs:
            req = reqs.popleft()
            if req in getattr(sftp, "_expecting", {}):
                sftp._read_response(req)

    def _fsync(self) -> None:
        try:
            self._sftp._request(CMD_EXTENDED, "fsync@openssh.com", self._file.handle)
        except OSError:
            pass  # server without the extension: the rename is still atomic, only durability is weaker

    def commit(self) -> None:
        self._ensure_open()
        sftp = self._sftp
        try:
            with self._store.edge("commit", self._key):
                self._file.flush()
                self._drain_pipelined()
                self._fsync()
                self._file.close()
                got = sftp.stat(self._partial).st_size
                if got != self._written:
                    raise OSError(errno.EIO, f"remote file has {got} bytes, {self._written} were written")
                try:
                    sftp.posix_rename(self._partial, self._final)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EACCES):
                        raise
                    # server without posix-rename@openssh.com: plain rename refuses to overwrite
                    try:
                        sftp.remove(self._final)
                    except FileNotFoundError:
                        pass
                    sftp.rename(self._partial, self._final)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._close_channel()

    def _close_channel(self) -> None:
        try:
            self._sftp.close()
        except Exception:
            pass  # the connection may already be gone

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        except Exception:
            pass  # the connection may be gone; the partial stays as hidden debris
        try:
            self._sftp.remove(self._partial)
        except Exception:
            pass  # same: listings hide it and delete_prefix/prune removes it
        self._close_channel()


class _SFTPReader(RawReader):
    """Sequential reader that keeps one READ_WINDOW of parallel SFTP reads in flight."""

    def __init__(self, store: SSHStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        path = store._path(key)
        with store.edge("open", key):
            try:
                self._file = store.sftp.open(path, "rb")
                st = self._file.stat()
            except FileNotFoundError as exc:
                raise ObjectMissing(f"store {store.url}: no object {key}") from exc
        if not stat.S_ISREG(st.st_mode or 0):
            self._file.close()
            raise ObjectMissing(f"store {store.url}: {key} is not an object")
        self.size = int(st.st_size or 0)
        self._pos = 0  # offset of the next byte to fetch from the server
        self._window = memoryview(b"")

    def readinto(self, b: Any) -> int:
        if not self._window:
            if self._pos >= self.size:
                return 0
            length = min(READ_WINDOW, self.size - self._pos)
            with self._store.edge("read", self._key):
                data = b"".join(self._file.readv([(self._pos, length)]))
            if len(data) != length:
                raise Unreachable(f"store {self._store.url}: {self._key} shrank while being read")
            self._pos += length
            self._window = memoryview(data)
        n = min(len(b), len(self._window))
        b[:n] = self._window[:n]
        self._window = self._window[n:]
        return n

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:
            pass  # closing a handle on a dead connection
        super().close()
