"""Events out: the pings and webhooks the plan's `events` section asks for, handed to a sender process.

The sender (notify/sender.py) outlives the operation, so a sink that is slow or down neither delays nor
fails it. Bodies are built from scrubbed events only, never from the plan's or the secrets' values;
`url_secret` URLs carry tokens themselves. Formats: docs/serve.md (Pings and webhooks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlencode

OUTCOMES = ("started", "ok", "failed")
DEFAULT_PING_VERBS = ("backup",)


def _outcome(event: dict) -> str | None:
    if event["kind"] == "started":
        return "started"
    if event["kind"] == "finished":
        return "ok" if event.get("outcome") == "ok" else "failed"
    return None


def _matches(verbs, verb: str) -> bool:
    return verbs is None or verb in verbs or verb.split()[0] in verbs


def summary(event: dict) -> str:
    """One human line for an event: "migrator backup on vsn1: ok in 12.3 s (snapshot 2026...)"."""
    where = f" on {event['vsn']}" if event.get("vsn") else ""
    line = f"migrator {event['verb']}{where}: "
    if event["kind"] == "started":
        return line + "started"
    line += event.get("outcome", "?")
    if event.get("duration") is not None:
        line += f" in {event['duration']:.1f} s"
    if event.get("snapshot_id"):
        line += f" (snapshot {event['snapshot_id']})"
    if event.get("now_runs_on"):
        line += f"; the stack now runs on {event['now_runs_on']}"
    if event.get("message") and event.get("outcome") != "ok":
        line += f": {event['message']}"
    return line


def _url(entry: dict, secrets: dict) -> str | None:
    if entry.get("url"):
        return entry["url"]
    value = secrets.get(entry.get("url_secret", ""))
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


def requests_for(event: dict, config: dict | None, secrets: dict | None = None) -> list[dict]:
    """The requests {method, url, body (str), headers} the plan's `events` config asks for on `event`."""
    outcome = _outcome(event)
    if not config or outcome is None:
        return []
    secrets = secrets or {}
    out: list[dict] = []
    text = summary(event)
    for ping in config.get("pings", []):
        url = _url(ping, secrets)
        if url is None or not _matches(ping.get("verbs", DEFAULT_PING_VERBS), event["verb"]):
            continue
        if ping.get("kind", "healthchecks") == "healthchecks":
            suffix = {"started": "/start", "ok": "", "failed": "/fail"}[outcome]
            out.append({"method": "POST", "url": url.rstrip("/") + suffix, "body": text,
                        "headers": {"Content-Type": "text/plain; charset=utf-8"}})
        elif outcome != "started":  # Uptime Kuma's push monitor knows up and down only
            query = urlencode({"status": "up" if outcome == "ok" else "down", "msg": text[:200],
                               **({"ping": round(event["duration"] * 1000)} if event.get("duration") else {})})
            out.append({"method": "GET", "url": url + ("&" if "?" in url else "?") + query, "body": None,
                        "headers": {}})
    for hook in config.get("webhooks", []):
        url = _url(hook, secrets)
        if url is None or not _matches(hook.get("verbs"), event["verb"]) \
                or outcome not in hook.get("on", ("ok", "failed")):
            continue
        fmt = hook.get("format", "json")
        if fmt == "slack":
            body, headers = json.dumps({"text": text}), {"Content-Type": "application/json"}
        elif fmt == "ntfy":
            headers = {"Title": f"migrator {event['verb']} {outcome}",
                       "Tags": "white_check_mark" if outcome == "ok" else "rotating_light" if outcome == "failed"
                       else "hourglass", "Priority": "high" if outcome == "failed" else "default"}
            body = text
        else:
            body, headers = json.dumps({**event, "outcome": outcome, "summary": text}, sort_keys=True,
                                       default=str), {"Content-Type": "application/json"}
        out.append({"method": "POST", "url": url, "body": body, "headers": headers})
    return out


class Dispatcher:
    """Per operation: requests go to one detached sender process, started on the first one and fed through
    a pipe. It sends in order with the retry policy and bounded timeouts while the operation goes on, and
    outlives it to finish sending."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self.error: str | None = None

    def send(self, requests: list[dict]) -> None:
        if not requests or self.error:
            return
        try:
            if self._proc is None:
                # start_new_session: the sender outlives the operation (and its terminal's SIGINT);
                # its output goes nowhere, failures are its own business (bounded, logged nowhere).
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "migrator.notify.sender"], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                    close_fds=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            for req in requests:
                self._proc.stdin.write(json.dumps(req).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError as exc:
            self.error = f"could not hand events to the sender: {exc}"

    def close(self) -> None:
        """Tell the sender no more is coming; it finishes sending on its own (never waited for)."""
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
