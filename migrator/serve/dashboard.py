"""The dashboard of `migrator serve`: server-rendered HTML plus a little vanilla JavaScript.

No build chain, one page, phone-friendly. Every value put in a page goes through html.escape; the pages
carry no secret (the CSRF token of the viewer's own session only) and forbid framing and foreign scripts
(Content-Security-Policy)."""

from __future__ import annotations

import html
import time

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from migrator.serve import static
from migrator.serve.context import principal, stack_info, vsn_name
from migrator.state import history

HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "script-src 'self'; frame-ancestors 'none'; base-uri 'none'",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
DESTRUCTIVE = ("restore", "cleanup")


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    secs = max(0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{secs / size:.0f} {unit} ago"
    return f"{secs:.0f} s ago"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def chart(title: str, values: list[float], unit: str) -> str:
    """A small inline SVG bar chart, oldest left."""
    if not values:
        return f'<figure class="chart"><figcaption>{_e(title)}</figcaption><p class="muted">no data yet</p></figure>'
    top = max(values) or 1.0
    width = 10
    bars = "".join(f'<rect x="{i * width + 1}" y="{60 - 58 * v / top:.1f}" width="{width - 2}" '
                   f'height="{58 * v / top:.1f}"><title>{v:.3g} {_e(unit)}</title></rect>'
                   for i, v in enumerate(values))
    return (f'<figure class="chart"><figcaption>{_e(title)} <span class="muted">(last {len(values)}, max '
            f'{top:.3g} {_e(unit)})</span></figcaption><svg viewBox="0 0 {len(values) * width} 60" '
            f'preserveAspectRatio="none" role="img" aria-label="{_e(title)}">{bars}</svg></figure>')


def _page(title: str, body: str, csrf: str = "") -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{_e(csrf)}"><title>{_e(title)}</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body>{body}<script src="/static/app.js"></script></body></html>""", headers=HEADERS)


async def login_page(request: Request) -> Response:
    body = """<main class="login"><h1>migrator</h1>
<form id="login-form" class="card"><label>User <input name="user" id="login-user" autocomplete="username" required></label>
<label>Password <input name="password" id="login-password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="login-submit">Log in</button><p id="login-error" class="error" role="alert"></p></form></main>"""
    return _page("migrator: log in", body)


async def index(request: Request) -> Response:
    who = principal(request)
    if isinstance(who, Response):
        return RedirectResponse("/login", status_code=303)
    info = stack_info()
    rows = history.entries(200)
    backups = [r for r in reversed(rows) if r.verb == "backup" and r.result == "ok"][-30:]
    last_backup = next((r for r in rows if r.verb == "backup" and r.result == "ok"), None)
    last_drill = next((r for r in rows if r.verb == "drill"), None)
    can_act = who.can_act
    buttons = "".join(
        f'<button class="action{" danger" if v in DESTRUCTIVE else ""}" data-verb="{v}" id="action-{v}"'
        f'{"" if can_act else " data-readonly=1"}'
        f'{"" if can_act and v in info["allowed_actions"] else " disabled"}>{v}</button>'
        for v in ("backup", "drill", "verify", "restore", "archive", "unarchive", "cleanup"))
    history_rows = "".join(
        f'<tr class="{_e(r.result)}"><td>{_e(time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.started)))}</td>'
        f'<td>{_e(r.verb)}</td><td>{_e(r.result)}</td><td>{_e(r.to_json()["duration"])}</td>'
        f'<td>{_e(r.user)}</td><td>{_e(r.snapshot_id or r.message or "")}</td></tr>' for r in rows[:30])
    charts = (chart("backup duration", [r.to_json()["duration"] or 0 for r in backups], "s")
              + chart("backup size", [(r.bytes or 0) / 2**20 for r in backups], "MiB")
              + chart("downtime", [max((r.downtime or {}).values(), default=0) for r in backups], "s"))
    drill_text = f"{age(last_drill.ended)} ({_e(last_drill.result)})" if last_drill else "never"
    body = f"""<header><h1>migrator <span id="vsn-name">{_e(vsn_name() or "(no stack)")}</span></h1>
<span class="who">{_e(who.name)} &middot; {_e(who.role)}
{'<button id="logout" class="link">log out</button>' if who.via == "session" else ""}
{'<a id="login-link" href="/login">log in</a>' if who.via == "anonymous" else ""}</span></header>
<main>
<section class="card" id="stack"><h2>Stack</h2>
<p>State <strong id="stack-state" class="state-{_e(info["state"])}">{_e(info["state"] or "absent")}</strong>
<span class="muted">since {_e(age(info["since"]))}</span></p>
<p>Last backup: <strong id="last-backup">{_e(age(last_backup.ended) if last_backup else "never")}</strong>
&middot; last drill: <strong id="last-drill">{drill_text}</strong></p>
<p id="lock-line" class="muted">{_e("busy: " + info["lock"] if info["lock"] else "")}</p>
<div class="actions">{buttons}</div>
<div id="confirm-box" class="confirm" hidden><p id="confirm-text"></p>
<input id="confirm-input" placeholder="type the VSN name" autocomplete="off"><input id="confirm-snapshot" placeholder="snapshot (latest)" autocomplete="off">
<button id="confirm-go" class="danger">confirm</button><button id="confirm-cancel" class="link">cancel</button></div>
<p id="action-message" role="status"></p></section>
<section class="card" id="live"><h2>Operations in progress</h2><div id="ops"><p class="muted" id="no-ops">none</p></div></section>
<section class="card"><h2>Containers</h2><div id="containers" class="muted">loading...</div></section>
<section class="card"><h2>Snapshots</h2><div id="snapshots" class="muted">loading...</div></section>
<section class="card charts"><h2>Backups over time</h2>{charts}</section>
<section class="card"><h2>History</h2><div class="scroll"><table id="history"><thead><tr><th>started (UTC)</th><th>verb</th>
<th>result</th><th>s</th><th>user</th><th>snapshot / message</th></tr></thead><tbody>{history_rows}</tbody></table></div></section>
</main>"""
    return _page(f"migrator {vsn_name() or ''}", body, who.csrf or "")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in static.ASSETS:
        return Response("not found", status_code=404)
    media, text = static.ASSETS[name]
    return Response(text, media_type=media, headers={"Cache-Control": "no-cache"})


def routes() -> list[Route]:
    """The pages: the stack state and its allowed actions, last backup and drill with their age, charts of
    backup duration, size and downtime from the history, the history itself; the script (serve/static.py)
    loads containers and snapshots, follows the live events (progress bars) and posts the actions."""
    return [Route("/", index), Route("/login", login_page), Route("/static/{name}", asset),
            Route("/favicon.ico", lambda request: Response(status_code=204))]

