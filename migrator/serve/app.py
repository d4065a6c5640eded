"""The HTTP API of `migrator serve` (Starlette): /api/v1 JSON, live events over SSE, login, the pages.

Every request is authenticated first (serve/auth.py). Status and snapshots are the `migrator` commands'
own --json output (run as child processes), so the API and the command line can never disagree."""

from __future__ import annotations

import asyncio
import json
import subprocess
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from migrator.errors import LockHeld, MigratorError, UsageError
from migrator.notify import events, metrics
from migrator.serve import auth
from migrator.serve.actions import VERBS, Runner
from migrator.serve.context import (
    SESSION_COOKIE,
    Config,
    _error,
    _plan_raw,
    _secrets_path,
    principal,
    stack_info,
    vsn_name,
)
from migrator.serve.stream import Broadcaster, sse
from migrator.state import history
from migrator.state.lock import held_by
from migrator.state.paths import state_dir

API = "/api/v1"
# Read-only commands answer in a second or two; an engine that hangs must not hang the request forever.
QUERY_TIMEOUT_S = 120
MAX_BODY = 64 * 1024


def authenticated(handler, act: bool = False):
    async def wrapped(request: Request) -> Response:
        who = principal(request)
        if isinstance(who, Response):
            return who
        if act and not who.can_act:
            return _error(403, f"{who.name} is {who.role}: actions need the operator role")
        if request.method not in ("GET", "HEAD") and who.via == "session" \
                and request.headers.get("x-csrf-token") != who.csrf:
            return _error(403, "missing or wrong CSRF token (X-CSRF-Token)")
        request.state.who = who
        return await handler(request)

    return wrapped


async def _command_json(request: Request, *args: str) -> tuple[int, dict]:
    config: Config = request.app.state.config

    def call() -> tuple[int, dict]:
        try:
            proc = subprocess.run([*config.command, *args, "--json"], capture_output=True, timeout=QUERY_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 504, {"ok": False, "message": f"`migrator {' '.join(args)}` did not answer in {QUERY_TIMEOUT_S}s"}
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            return proc.returncode, {"ok": False, "message": proc.stderr.decode("utf-8", "replace")[-500:]}

    return await asyncio.to_thread(call)


def _answer(code: int, body: dict) -> JSONResponse:
    status = 200 if code == 0 else 504 if code == 504 else 409 if code == 5 else 400 if code in (2, 3) else 502
    return JSONResponse(body, status_code=status)


async def api_root(request: Request) -> Response:
    who = request.state.who
    follower = request.app.state.follower
    return JSONResponse({"ok": True, "version": 1, "vsn": vsn_name(), "user": who.name, "role": who.role,
                         "via": who.via, "actions": list(VERBS),
                         "follow": follower.to_json() if follower is not None else None})


async def api_stack(request: Request) -> Response:
    return JSONResponse({"ok": True, **stack_info()})


async def api_status(request: Request) -> Response:
    return _answer(*await _command_json(request, "status"))


async def api_containers(request: Request) -> Response:
    code, body = await _command_json(request, "status")
    return _answer(code, {"ok": body.get("ok", False), "containers": body.get("containers", []),
                          **({"message": body["message"]} if "message" in body else {})})


async def api_snapshots(request: Request) -> Response:
    return _answer(*await _command_json(request, "snapshots"))


async def api_snapshot(request: Request) -> Response:
    code, body = await _command_json(request, "snapshots")
    if code != 0:
        return _answer(code, body)
    sid = request.path_params["id"]
    found = [s for store in body.get("stores", [body]) for s in store.get("snapshots", []) if s.get("id") == sid]
    return JSONResponse({"ok": True, "snapshot": found[0]}) if found else _error(404, f"no snapshot {sid}")


async def api_history(request: Request) -> Response:
    try:
        limit = min(max(int(request.query_params.get("limit", "50")), 1), 1000)
    except ValueError:
        return _error(400, "limit: a number")
    verb = request.query_params.get("verb") or None
    rows = await asyncio.to_thread(history.entries, limit, verb)
    return JSONResponse({"ok": True, "entries": [e.to_json() for e in rows]})


async def api_metrics(request: Request) -> Response:
    path = metrics.metrics_file(_plan_raw())
    try:
        return PlainTextResponse(path.read_text(), media_type="text/plain; version=0.0.4")
    except FileNotFoundError:
        return PlainTextResponse("", media_type="text/plain; version=0.0.4")


async def api_events(request: Request) -> Response:
    try:
        replay = min(max(int(request.query_params.get("replay", "0")), 0), 1000)
    except ValueError:
        return _error(400, "replay: a number")
    return StreamingResponse(sse(request.app.state.broadcaster, replay), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def api_recent_events(request: Request) -> Response:
    return JSONResponse({"ok": True, "events": events.read_recent(200)})


async def api_operations(request: Request) -> Response:
    runner: Runner = request.app.state.runner
    return JSONResponse({"ok": True, "lock": held_by(),
                         "operations": [o.to_json() for o in sorted(runner.operations.values(),
                                                                    key=lambda o: o.started, reverse=True)]})


async def api_operation(request: Request) -> Response:
    op = request.app.state.runner.operations.get(request.path_params["op"])
    return JSONResponse({"ok": True, **op.to_json()}) if op else _error(404, "no such operation")


async def _body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise UsageError("request body too large")
    if not raw:
        return {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    try:
        body = json.loads(raw)
    except ValueError:
        raise UsageError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the body must be a JSON object")
    return body


async def api_action(request: Request) -> Response:
    verb = request.path_params["verb"]
    who: auth.Principal = request.state.who
    runner: Runner = request.app.state.runner
    try:
        params = await _body(request)
        op = await asyncio.to_thread(runner.start, verb, params, who.name, vsn_name())
    except LockHeld as exc:
        return _error(409, exc.message, holder=exc.message.removeprefix("another migrator operation holds the lock: "))
    except UsageError as exc:
        return _error(400, exc.message, hint=exc.hint)
    except MigratorError as exc:
        return _error(422, exc.message, exit_code=exc.exit_code)
    status = 202 if not op.done.is_set() else 200
    return JSONResponse({"ok": True, **op.to_json()}, status_code=status)


async def api_login(request: Request) -> Response:
    limiter: auth.LoginLimiter = request.app.state.limiter
    try:
        body = await _body(request)
    except UsageError as exc:
        return _error(400, exc.message)
    name, password = str(body.get("user", ""))[:64], str(body.get("password", ""))[:1024]
    client = request.client.host if request.client else "?"
    keys = (f"addr:{client}", f"user:{name}")
    wait = limiter.retry_after(*keys)
    if wait > 0:
        return JSONResponse({"ok": False, "message": "too many failed logins: try again later"}, status_code=429,
                            headers={"Retry-After": str(int(wait) + 1)})
    role = await asyncio.to_thread(auth.Users(_secrets_path(request.app.state.config)).login, name, password)
    if role is None:
        limiter.failed(*keys)
        return _error(401, "wrong user name or password")
    cookie, csrf = request.app.state.sessions.issue(name, role)
    response = JSONResponse({"ok": True, "user": name, "role": role, "csrf": csrf})
    response.set_cookie(SESSION_COOKIE, cookie, max_age=auth.SESSION_SECONDS, httponly=True, samesite="strict",
                        secure=request.app.state.config.tls, path="/")
    return response


async def api_logout(request: Request) -> Response:
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def routes() -> list[Route]:
    from migrator.serve import dashboard

    return [
        Route(f"{API}", authenticated(api_root)),
        Route(f"{API}/stack", authenticated(api_stack)),
        Route(f"{API}/status", authenticated(api_status)),
        Route(f"{API}/containers", authenticated(api_containers)),
        Route(f"{API}/snapshots", authenticated(api_snapshots)),
        Route(f"{API}/snapshots/{{id}}", authenticated(api_snapshot)),
        Route(f"{API}/history", authenticated(api_history)),
        Route(f"{API}/metrics", authenticated(api_metrics)),
        Route(f"{API}/events", authenticated(api_events)),
        Route(f"{API}/events/recent", authenticated(api_recent_events)),
        Route(f"{API}/operations", authenticated(api_operations)),
        Route(f"{API}/operations/{{op}}", authenticated(api_operation)),
        Route(f"{API}/actions/{{verb}}", authenticated(api_action, act=True), methods=["POST"]),
        Route(f"{API}/login", api_login, methods=["POST"]),
        Route(f"{API}/logout", api_logout, methods=["POST"]),
        *dashboard.routes(),
    ]


def build(config: Config) -> Starlette:
    broadcaster = Broadcaster()

    follower = None
    if config.follow:
        from migrator.serve.follow import Follower

        follower = Follower(config.command)

    @asynccontextmanager
    async def lifespan(app):
        broadcaster.start()
        if follower is not None:
            follower.start()
        try:
            yield
        finally:
            broadcaster.stop()
            if follower is not None:
                follower.stop()

    app = Starlette(routes=routes(), lifespan=lifespan)
    app.state.config = config
    app.state.sessions = auth.Sessions(state_dir() / "serve")
    app.state.limiter = auth.LoginLimiter()
    app.state.runner = Runner(config.command)
    app.state.broadcaster = broadcaster
    app.state.follower = follower
    return app
