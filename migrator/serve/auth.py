"""Who may use `migrator serve`: users, API tokens, roles, session cookies, login rate limiting.

Passwords are scrypt-hashed and tokens sha256-hashed in the secrets file: a stolen secrets file yields no
password and no token. Anonymous requests are allowed from loopback only, and read-only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets as _random
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

OPERATOR, READ_ONLY = "operator", "read-only"
ROLES = (OPERATOR, READ_ONLY)
USER_PREFIX, TOKEN_PREFIX = "serve.user.", "serve.token."
# scrypt at n=2^14, r=8: ~16 MiB and ~50 ms per check, OWASP's minimum; login is rate limited besides.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
# A browser session lasts a working day; a stolen cookie is worth little after that.
SESSION_SECONDS = 8 * 3600
# Login: at most this many failures per client address (and per user name) in the window, then 429.
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 300.0
TOKEN_BYTES = 32
MIN_PASSWORD = 10
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # token, session, anonymous
    csrf: str | None = None

    @property
    def can_act(self) -> bool:
        return self.role == OPERATOR


def hash_password(password: str) -> str:
    """What the secrets file keeps of a password, after the role:
    "serve.user.<name>": "<role>:scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>"."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or int(n) > 1 << 20 or int(r) > 32 or int(p) > 16:
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(base64.b64decode(digest)), maxmem=256 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def new_token() -> tuple[str, str]:
    """A fresh API token and what the secrets file keeps of it, after the role:
    "serve.token.<name>": "<role>:sha256$<hex of the token's sha256>"."""
    token = _random.token_urlsafe(TOKEN_BYTES)
    return token, "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def _role_and_hash(value) -> tuple[str, str] | None:
    if not isinstance(value, str) or ":" not in value:
        return None
    role, _, stored = value.partition(":")
    return (role, stored) if role in ROLES else None


class Users:
    """The users and tokens of the secrets file at `path` (None: nobody but loopback's anonymous).
    The file is re-read on every check (it is small), so adding or removing a user needs no restart."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def _entries(self) -> dict:
        if not self.path:
            return {}
        try:
            values = json.loads(Path(self.path).read_text())
        except (OSError, ValueError):
            return {}
        return values if isinstance(values, dict) else {}

    def login(self, name: str, password: str) -> str | None:
        """The user's role when the password is right."""
        parsed = _role_and_hash(self._entries().get(USER_PREFIX + name))
        if parsed is None:
            check_password(password, hash_password("x"))  # same cost for an unknown name
            return None
        return parsed[0] if check_password(password, parsed[1]) else None

    def token(self, token: str) -> Principal | None:
        digest = "sha256$" + hashlib.sha256(token.encode()).hexdigest()
        for key, value in self._entries().items():
            parsed = _role_and_hash(value) if key.startswith(TOKEN_PREFIX) else None
            if parsed and hmac.compare_digest(parsed[1].encode(), digest.encode()):
                return Principal(key[len(TOKEN_PREFIX):], parsed[0], "token")
        return None

    def secret_values(self) -> list[str]:
        return [v for v in self._entries().values() if isinstance(v, str)]


class Sessions:
    """Signed, expiring session cookies: base64(json {u, r, exp, csrf}) + "." + HMAC. The key lives in
    <state dir>/serve/session.key (0600), so sessions survive a restart of serve."""

    def __init__(self, key_dir: Path) -> None:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = key_dir / "session.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, os.urandom(32))
            finally:
                os.close(fd)
        self._key = path.read_bytes()

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode()

    def issue(self, name: str, role: str, now: float | None = None) -> tuple[str, str]:
        csrf = _random.token_urlsafe(24)
        payload = json.dumps({"u": name, "r": role, "exp": (now or time.time()) + SESSION_SECONDS,
                              "csrf": csrf}).encode()
        return base64.urlsafe_b64encode(payload).decode() + "." + self._sign(payload), csrf

    def check(self, cookie: str, now: float | None = None) -> Principal | None:
        try:
            body, _, sig = cookie.partition(".")
            payload = base64.urlsafe_b64decode(body.encode())
            if not hmac.compare_digest(sig, self._sign(payload)):
                return None
            data = json.loads(payload)
            if data["exp"] < (now or time.time()) or data["r"] not in ROLES:
                return None
            return Principal(str(data["u"]), data["r"], "session", csrf=str(data["csrf"]))
        except (ValueError, KeyError, TypeError):
            return None


class LoginLimiter:
    """At most LOGIN_FAILURES failed logins per address and per name in LOGIN_WINDOW_S."""

    def __init__(self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW_S) -> None:
        self.failures, self.window = failures, window
        self._seen: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        q = self._seen.setdefault(key, deque())
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> float:
        """Seconds until another try is allowed (0: allowed now)."""
        now = time.monotonic()
        with self._lock:
            waits = [q[0] + self.window - now for k in keys if len(q := self._recent(k, now)) >= self.failures]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._seen) > 10_000:  # bounded memory under a spray of addresses
                self._seen = {k: q for k, q in self._seen.items() if q}


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
