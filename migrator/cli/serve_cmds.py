"""`serve` (web dashboard, HTTP API, live events; `serve passwd`, `serve token`) and `watch`.

`watch` shows the live events in a terminal."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, SecretsOpt
from migrator.cli.output import fail
from migrator.errors import MigratorError, Unreachable, UsageError

DEFAULT_LISTEN = "127.0.0.1:8765"


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765 or [::1]:8765")
    return host.strip("[]") or "127.0.0.1", int(port)


def _secrets_path(secrets: Path | None) -> Path:
    from migrator.state import deployed

    path = secrets or ((deployed.current() or {}).get("secrets"))
    if not path:
        raise UsageError("no secrets file given and none remembered", hint="pass --secrets FILE")
    return Path(path)


def _store_entry(path: Path, key: str, value: str) -> None:
    """Add or replace one entry of the secrets file, atomically and keeping it 0600."""
    from migrator.state.files import atomic_write

    try:
        values = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the secrets file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise UsageError(f"the secrets file {path} is not a JSON object")
    values[key] = value
    atomic_write(path, json.dumps(values, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)


def register(app: typer.Typer) -> None:
    serve = typer.Typer(invoke_without_command=True,
                        help="Web dashboard, HTTP API (/api/v1) and live events for this VSN.\n\n"
                             "Example: migrator serve --listen 127.0.0.1:8765")
    app.add_typer(serve, name="serve")

    @serve.callback()
    def serve_main(ctx: typer.Context,
                   listen: str = typer.Option(DEFAULT_LISTEN, "--listen", help="HOST:PORT to listen on."),
                   tls_cert: Path = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) for HTTPS."),
                   tls_key: Path = typer.Option(None, "--tls-key", help="Its private key (PEM)."),
                   client_ca: Path = typer.Option(None, "--client-ca",
                                                  help="Require client certificates signed by this CA (PEM)."),
                   secrets: Path = SecretsOpt,
                   follow: bool = typer.Option(False, "--follow-dependents",
                                               help="Watch the engine's events: a service that died outside an "
                                                    "operation is started again, and what depends on it (also on "
                                                    "one restarted in place) is restarted after it (bounded tries)."),
                   insecure_http: bool = typer.Option(False, "--insecure-http",
                                                      help="Allow plain HTTP on a non-loopback address "
                                                           "(behind a TLS-terminating proxy only).")) -> None:
        """Serve the dashboard and the HTTP API until stopped (SIGTERM, Ctrl-C).

        Users and API tokens are entries of the secrets file (`migrator serve passwd`, `migrator serve
        token`); without credentials only loopback clients get in, read-only. A non-loopback --listen
        needs --tls-cert and --tls-key (or --insecure-http behind a proxy).

        Example: migrator serve --listen 0.0.0.0:8765 --tls-cert /etc/migrator/tls.crt --tls-key /etc/migrator/tls.key
        """
        if ctx.invoked_subcommand is not None:
            return
        try:
            _serve(listen, tls_cert, tls_key, client_ca, secrets, insecure_http, follow)
        except MigratorError as exc:
            fail(exc, False)

    @serve.command("passwd")
    def serve_passwd(name: str = typer.Argument(..., help="User name."),
                     read_only: bool = typer.Option(False, "--read-only", help="The user may look, not act."),
                     secrets: Path = SecretsOpt) -> None:
        """Set a dashboard user's password (scrypt-hashed) in the secrets file (default: the remembered
        one). The password is read from stdin (prompted for twice on a terminal).

        Example: migrator serve passwd alice --read-only
        """
        try:
            from migrator.serve import auth

            _check_name("user", name)
            if sys.stdin.isatty():
                password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
            else:
                password = sys.stdin.readline().rstrip("\n")
            if len(password) < auth.MIN_PASSWORD:
                raise UsageError(f"the password needs at least {auth.MIN_PASSWORD} characters")
            path, role = _store_credential(secrets, auth.USER_PREFIX + name, read_only, auth.hash_password(password))
            print(f"user {name} ({role}) set in {path}")
        except MigratorError as exc:
            fail(exc, False)

    @serve.command("token")
    def serve_token(name: str = typer.Argument(..., help="Token name (e.g. the script or CI using it)."),
                    read_only: bool = typer.Option(False, "--read-only", help="The token may look, not act."),
                    secrets: Path = SecretsOpt) -> None:
        """Make a new API token: its sha256 goes into the secrets file, the token itself is printed once.

        Example: TOKEN=$(migrator serve token ci --read-only)
        """
        try:
            from migrator.serve import auth

            _check_name("token", name)
            token, stored = auth.new_token()
            _store_credential(secrets, auth.TOKEN_PREFIX + name, read_only, stored)
            print(token)
        except MigratorError as exc:
            fail(exc, False)

    @app.command()
    def watch(url: str = typer.Option(None, "--url", help="A `migrator serve` to follow (https://host:8765); "
                                                          "default: this VSN's own event log."),
              token_env: str = typer.Option("MIGRATOR_TOKEN", "--token-env",
                                            help="Environment variable holding the API token for --url."),
              ca: Path = typer.Option(None, "--ca", help="CA certificate to check the server's with."),
              replay: int = typer.Option(0, "--replay", help="Show the last N events first."),
              until_finished: bool = typer.Option(False, "--until-finished",
                                                  help="Exit after the next operation finishes (its exit code)."),
              json_out: bool = JsonOpt) -> None:
        """Show operations as they happen: start, steps, bytes, state changes, outcome.

        Example: migrator watch
        Example: MIGRATOR_TOKEN=... migrator watch --url https://vsn1:8765 --ca /etc/migrator/ca.crt
        """
        try:
            stream = _remote_events(url, os.environ.get(token_env), ca, replay) if url else _local_events(replay)
            code = _show(stream, json_out, until_finished)
        except MigratorError as exc:
            fail(exc, json_out)
            return
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)


def _check_name(kind: str, name: str) -> None:
    from migrator.serve import auth

    if not auth.NAME.fullmatch(name):
        raise UsageError(f"{kind} name {name!r}: letters, digits, . _ - (at most 64)")


def _store_credential(secrets: Path | None, key: str, read_only: bool, value: str) -> tuple[Path, str]:
    """A user's or token's entry `role:value` in the secrets file; the file and the role written."""
    from migrator.serve import auth

    path = _secrets_path(secrets)
    role = auth.READ_ONLY if read_only else auth.OPERATOR
    _store_entry(path, key, f"{role}:{value}")
    return path, role


def _serve(listen: str, tls_cert, tls_key, client_ca, secrets, insecure_http: bool, follow: bool = False) -> None:
    import ssl

    import uvicorn

    from migrator.serve import auth
    from migrator.serve.app import Config, build

    host, port = _listen(listen)
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if client_ca and not tls_cert:
        raise UsageError("--client-ca needs --tls-cert and --tls-key")
    if not tls_cert and not insecure_http and not (host == "localhost" or auth.is_loopback(host)):
        raise UsageError(f"refusing plain HTTP on {host}: passwords and tokens would cross the network in clear",
                         hint="pass --tls-cert and --tls-key (or --insecure-http behind a TLS proxy)")
    for f in (tls_cert, tls_key, client_ca, secrets):
        if f is not None and not Path(f).is_file():
            raise UsageError(f"{f}: no such file")
    app = build(Config(str(secrets) if secrets else None, tls=bool(tls_cert), follow=follow))
    scheme = "https" if tls_cert else "http"
    print(f"migrator: serving on {scheme}://{listen}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
                ssl_ca_certs=str(client_ca) if client_ca else None,
                ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
                # behind a proxy on this machine, the client's own address counts (never loopback's)
                proxy_headers=True, forwarded_allow_ips="127.0.0.1,::1", timeout_graceful_shutdown=3)


def _local_events(replay: int):
    from migrator.notify import events

    yield from events.read_recent(replay) if replay > 0 else []
    for event in events.follow():
        if event is not None:
            yield event


def _remote_events(url: str, token: str | None, ca: Path | None, replay: int):
    import ssl
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + f"/api/v1/events?replay={max(replay, 0)}",
                                     headers={"Accept": "text/event-stream",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        resp = urllib.request.urlopen(request, timeout=60, context=context)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"{url} refused: HTTP {exc.code}", hint="check the token (--token-env)") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data: "):
                try:
                    yield json.loads(line[6:])
                except ValueError:
                    continue


def _show(stream, json_out: bool, until_finished: bool) -> int:
    from migrator.plan.sizes import format_size

    for event in stream:
        if json_out:
            print(json.dumps(event, sort_keys=True), flush=True)
        else:
            when = time.strftime("%H:%M:%S", time.localtime(event.get("time", time.time())))
            kind, verb = event.get("kind"), event.get("verb")
            if kind == "started":
                text = f"{verb} started by {event.get('user', '?')}"
            elif kind == "step":
                text = f"{verb}: {event.get('message', '')}"
            elif kind == "progress":
                text = f"{verb}: {format_size(int(event.get('bytes_done', 0)))} in {event.get('elapsed', 0):.0f} s"
            elif kind == "state":
                text = f"stack state {event.get('previous')} -> {event.get('state')}"
            else:
                text = f"{verb} {event.get('outcome')} (exit {event.get('exit_code')}) in {event.get('duration')} s"
                if event.get("message") and event.get("outcome") != "ok":
                    text += f": {event['message']}"
            print(f"{when} {text}", flush=True)
        if until_finished and event.get("kind") == "finished":
            return int(event.get("exit_code") or 0)
    return 0
