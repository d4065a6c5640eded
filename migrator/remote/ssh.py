"""Open an SSH connection the way OpenSSH would, but never trust an unknown host.

Unknown or changed host keys are REFUSED with Unreachable (exit 8), never added. Errors leave this module
only as migrator errors (Unreachable, UsageError)."""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko

from migrator.errors import Unreachable, UsageError
from migrator.retry import RetryPolicy, call_with_retry

DEFAULT_PORT = 22
# Seconds for TCP connect, for the server's SSH banner and for authentication: a VSN on the same
# provider answers in well under a second; a long wait only delays the exit-8 diagnosis.
CONNECT_TIMEOUT = 15
BANNER_TIMEOUT = 15
AUTH_TIMEOUT = 20
# Keepalive interval (seconds), so NAT/firewall state survives a long compression pause.
KEEPALIVE = 30
# Connection attempts: a VSN that just booted may refuse for a few seconds; auth and host-key
# failures are never retried.
CONNECT_ATTEMPTS = 3
CONNECT_BASE_DELAY = 1.0
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


@dataclass(frozen=True)
class Address:
    alias: str
    user: str | None = None
    port: int | None = None
    path: str = ""

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.alias}{port}"


def parse_address(text: str) -> Address:
    """`[ssh://][user@]host[:port][/path]` -> Address. Passwords in URLs are refused."""
    url = text if text.startswith("ssh://") else f"ssh://{text}"
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UsageError(f"bad SSH address {text!r}", hint="use [ssh://][user@]host[:port]")
    if parts.password is not None:
        raise UsageError("passwords in SSH addresses are not supported", hint="use a key (IdentityFile or the agent)")
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad port in SSH address {text!r}") from exc
    return Address(parts.hostname, unquote(parts.username) if parts.username else None, port, unquote(parts.path or ""))


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Like RejectPolicy, but keeps the offered key so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def connect_transient(exc: BaseException) -> bool:
    """Connection refused/timed out or dropped before the banner: the host may be booting."""
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException, UnknownHostKey)):
        return False
    if isinstance(exc, socket.gaierror):
        return False  # a name that does not resolve will not resolve in 2 seconds either
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    if isinstance(exc, paramiko.SSHException):
        return "banner" in str(exc).lower()
    return isinstance(exc, (TimeoutError, ConnectionError, EOFError))


def _ssh_config(address: Address, options: dict[str, Any], what: str) -> dict[str, Any]:
    path = options.get("ssh_config_file") or os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(path).lookup(address.alias))
    except Exception as exc:  # paramiko raises several types for a bad config
        raise Unreachable(f"{what}: cannot use SSH config {path}: {exc}", hint="fix the SSH config file") from exc


def resolve(address: Address, options: dict[str, Any], what: str) -> dict[str, Any]:
    """Connection parameters after applying the SSH config and the address (no network)."""
    cfg = _ssh_config(address, options, what)
    identity = options.get("identity_file")
    identities = [identity] if isinstance(identity, str) else list(identity or [])
    identities += list(cfg.get("identityfile", []))
    known = options.get("known_hosts_file")
    if known:
        known_files = [known]
    elif cfg.get("userknownhostsfile"):
        known_files = cfg["userknownhostsfile"].split()
    else:
        known_files = ["~/.ssh/known_hosts"]
    only = str(cfg.get("identitiesonly", "no")).lower() == "yes"
    return {
        "hostname": cfg.get("hostname", address.alias),
        "port": address.port or int(cfg.get("port", DEFAULT_PORT)),
        "username": address.user or cfg.get("user") or getpass.getuser(),
        "key_filename": [os.path.expanduser(p) for p in identities] or None,
        "known_hosts": [os.path.expanduser(p) for p in known_files] + [SYSTEM_KNOWN_HOSTS],
        "allow_agent": not only,
        "look_for_keys": not only,
    }


def _new_client(params: dict[str, Any], options: dict[str, Any]) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for path in params["known_hosts"]:
        if os.path.exists(path):
            client.load_system_host_keys(path)  # "system" keys: paramiko never writes them back
    for line in options.get("known_host_keys") or []:
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        if entry is None or entry.key is None:
            raise UsageError(f"bad pinned host key {line[:60]!r}", hint="use 'host keytype base64' lines")
        for name in entry.hostnames:
            client.get_host_keys().add(name, entry.key.get_name(), entry.key)
    client.set_missing_host_key_policy(_RefuseUnknown())  # never AutoAddPolicy
    return client


def connect(address: Address, options: dict[str, Any], what: str,
            policy: RetryPolicy | None = None) -> tuple[paramiko.SSHClient, str]:
    """A connected, host-key-verified client and a description of the peer for messages.
    `what` names the thing being reached in error messages (e.g. "store ssh://h/p", "target VSN h").

    - Address: `[ssh://][user@]host[:port]`; ~/.ssh/config (or the `ssh_config_file` option) Host aliases give
      HostName, User, Port, IdentityFile, IdentitiesOnly and UserKnownHostsFile; explicit user/port win.
    - Host keys verified against known_hosts (`known_hosts_file` option, else the config's
      UserKnownHostsFile, else ~/.ssh/known_hosts, plus /etc/ssh/ssh_known_hosts) and pinned
      `known_host_keys`. Unknown or changed keys are refused with Unreachable (exit 8), never added.
    - Auth: identity files (option `identity_file`, config IdentityFile), the agent, default keys."""
    params = resolve(address, options, what)
    target = f"{address.alias} ({params['hostname']}:{params['port']})" if params["hostname"] != address.alias \
        else f"{params['hostname']}:{params['port']}"
    policy = (policy or RetryPolicy(attempts=CONNECT_ATTEMPTS, base_delay=CONNECT_BASE_DELAY)
              ).with_(retry_on=connect_transient)

    def attempt() -> paramiko.SSHClient:
        client = _new_client(params, options)
        try:
            client.connect(params["hostname"], port=params["port"], username=params["username"],
                           key_filename=params["key_filename"], allow_agent=params["allow_agent"],
                           look_for_keys=params["look_for_keys"], timeout=CONNECT_TIMEOUT,
                           banner_timeout=BANNER_TIMEOUT, auth_timeout=AUTH_TIMEOUT)
        except BaseException:
            client.close()
            raise
        return client

    try:
        client = call_with_retry(policy, attempt)
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE)
    except UnknownHostKey as exc:
        line = f"{exc.hostname} {exc.key.get_name()} {exc.key.get_base64()}"
        raise Unreachable(
            f"{what}: host key of {target} is unknown ({exc.key.get_name()} {fingerprint(exc.key)}); "
            f"refusing to connect",
            hint=f"verify the fingerprint out of band, then add it to known_hosts or pin it: {line}") from exc
    except paramiko.BadHostKeyException as exc:
        raise Unreachable(
            f"{what}: host key of {target} CHANGED (offered {exc.key.get_name()} {fingerprint(exc.key)}, "
            f"expected {fingerprint(exc.expected_key)}); refusing to connect",
            hint="if the host was reinstalled, verify its new key and update known_hosts; "
                 "otherwise someone may be intercepting the connection") from exc
    except paramiko.AuthenticationException as exc:
        raise Unreachable(f"{what}: {target} refused authentication as {params['username']!r}",
                          hint="check IdentityFile/User in ~/.ssh/config, the agent, and authorized_keys") from exc
    except socket.gaierror as exc:
        raise Unreachable(f"{what}: cannot resolve host {params['hostname']!r}",
                          hint="check the host name or the Host alias in ~/.ssh/config") from exc
    except Exception as exc:
        raise Unreachable(f"{what}: cannot connect to {target}: {exc or type(exc).__name__}",
                          hint="check that the host is up and sshd listens on that port") from exc
    return client, target
