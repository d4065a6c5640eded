"""What every request of `migrator serve` needs to know: configuration, who asks, VSN, stack state.

Shared by the API (serve/app.py) and the dashboard (serve/dashboard.py)."""

from __future__ import annotations

import sys

from starlette.requests import Request
from starlette.responses import JSONResponse

from migrator.serve import auth
from migrator.serve.actions import VERBS
from migrator.state import deployed, stackstate
from migrator.state.lock import held_by

SESSION_COOKIE = "migrator_session"


class Config:
    def __init__(self, secrets_path: str | None, tls: bool, command: list[str] | None = None,
                 follow: bool = False) -> None:
        self.follow = follow
        self.secrets_path = secrets_path
        self.startup_secrets = (deployed.current() or {}).get("secrets")
        self.tls = tls
        self.command = command or [sys.executable, "-m", "migrator"]


def _plan_raw() -> dict | None:
    return deployed.remembered()[0]


def vsn_name() -> str | None:
    return ((_plan_raw() or {}).get("vsn") or {}).get("name")


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"ok": False, "message": message, **extra}, status_code=status)


def _secrets_path(config: Config) -> str | None:
    """--secrets, else the deployed one (re-read: a redeploy may name another), else the one deployed
    when serve started (a cleanup or move forgets it; the users must not go with it)."""
    return config.secrets_path or (deployed.current() or {}).get("secrets") or config.startup_secrets


def principal(request: Request) -> auth.Principal | JSONResponse:
    config: Config = request.app.state.config
    users = auth.Users(_secrets_path(config))
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        found = users.token(token.strip()) if scheme.lower() == "bearer" else None
        return found or _error(401, "invalid API token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = request.app.state.sessions.check(cookie)
        return found or _error(401, "session expired or invalid: log in again")
    if auth.is_loopback(request.client.host if request.client else None):
        return auth.Principal("anonymous (loopback)", auth.READ_ONLY, "anonymous")
    return _error(401, "authentication required: an API token (Authorization: Bearer) or a login")


def stack_info() -> dict:
    rec = stackstate.load()
    state = rec["state"]
    src = stackstate.FAILURE if state in stackstate.PENDING else state
    lifecycle = [v for v, (enter, _ok, _failed) in stackstate.VERBS.items() if stackstate.allowed(src, enter)]
    running = state in (stackstate.RUNNING, stackstate.FAILURE)
    allowed = [v for v in VERBS if v in lifecycle or (running and v in ("backup", "drill", "verify", "restore"))
               or (v == "verify")]
    if state != stackstate.ARCHIVED and "unarchive" in allowed:  # deploy's way in, not unarchive's
        allowed.remove("unarchive")
    return {**rec, "allowed_actions": allowed, "lock": held_by()}
