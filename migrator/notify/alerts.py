"""Failure mail without a mail storm: per source, one mail, reminders, one "recovered" mail.

The state is <state dir>/notify_state.json; the rules are in docs/operations.md (Health, mail and cron)."""

from __future__ import annotations

import copy
import socket
import time
from dataclasses import dataclass, field

from migrator.errors import MigratorError
from migrator.notify._store import locked_json
from migrator.notify.mail import Mail, send
from migrator.plan.model import Secrets
from migrator.state import registry

DEFAULT_REMINDER_HOURS = 24.0
# A reminder is due once 98% of the interval has passed: a daily cron job that fails at the same minute
# every day must remind daily, even when this run started a few seconds earlier than yesterday's.
REMINDER_DUE = 0.98
FAILING, REMINDER, RECOVERED = "failing", "reminder", "recovered"


@dataclass
class Decision:
    kind: str | None  # failing | reminder | recovered | None (no mail)
    failing: dict[str, dict] = field(default_factory=dict)  # key -> {since, detail, last_mailed, new}
    recovered: list[str] = field(default_factory=list)


def empty_source() -> dict:
    return {"failing": {}, "mailed": False, "last_mailed": None}


def decide(source: dict, failures: dict[str, str], now: float, reminder_hours: float) -> tuple[Decision, dict]:
    """What to mail for this run's `failures` ({check: detail}), and the state to keep if the mail is sent.
    The returned state has `mailed`/`last_mailed` already advanced; see `unsent` for a failed send.
    `source` is one source's entry ("health", or a verb such as "backup") of notify_state.json: each failing
    check's failing-since, detail and last-mailed time, and `unsent`, the error of a mail that could not be
    sent (until one goes out). Pure (state in, state and decision out, clock passed in), so the unit tests
    drive it with a fake clock; `notify` adds the file, the lock and the sending."""
    old = source.get("failing", {})
    new_state = {"failing": {}, "mailed": source.get("mailed", False), "last_mailed": source.get("last_mailed")}
    decision = Decision(kind=None)
    for key, detail in failures.items():
        prev = old.get(key)
        entry = {"since": prev["since"] if prev else now, "detail": detail,
                 "last_mailed": prev.get("last_mailed") if prev else None}
        new_state["failing"][key] = entry
        decision.failing[key] = {**entry, "new": prev is None}
    decision.recovered = sorted(k for k in old if k not in failures)
    if failures:
        if any(v["new"] for v in decision.failing.values()) or not new_state["mailed"]:
            decision.kind = FAILING
        elif now - (new_state["last_mailed"] or 0) >= reminder_hours * 3600 * REMINDER_DUE:
            decision.kind = REMINDER
    elif new_state["mailed"]:
        decision.kind = RECOVERED
    if decision.kind in (FAILING, REMINDER):
        new_state.update(mailed=True, last_mailed=now)
        for entry in new_state["failing"].values():
            entry["last_mailed"] = now
    elif decision.kind == RECOVERED:
        new_state = empty_source()
    return decision, new_state


def unsent(source: dict, new_state: dict, decision: Decision) -> dict:
    """The state to keep when the mail could not be sent: track the checks, but retry the mail next run."""
    kept = copy.deepcopy(new_state)
    if decision.kind in (FAILING, REMINDER):
        kept["mailed"], kept["last_mailed"] = source.get("mailed", False), source.get("last_mailed")
        for key, entry in kept["failing"].items():
            entry["last_mailed"] = source.get("failing", {}).get(key, {}).get("last_mailed")
    elif decision.kind == RECOVERED:
        kept = copy.deepcopy(source)
        kept["failing"] = {}
    return kept


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def compose(vsn: str, what: str, decision: Decision, reminder_hours: float, to: str, sender: str | None) -> Mail:
    host = socket.gethostname()
    n = len(decision.failing)
    first = next(iter(decision.failing.items()), None)
    if decision.kind == RECOVERED:
        subject = f"[migrator] {vsn}: {what} recovered"
        lines = [f"VSN {vsn} on {host}: {what} is all good again."]
    else:
        label = "FAILING" if decision.kind == FAILING else "still failing (reminder)"
        subject = f"[migrator] {vsn}: {what} {label} ({n}): {first[0]}: {first[1]['detail']}"[:200]
        lines = [f"VSN {vsn} on {host}: {what} {label}, {n} problem(s).", ""]
        for key, entry in decision.failing.items():
            mark = "NEW " if entry["new"] else ""
            lines.append(f"  {mark}{key}: {entry['detail']} (failing since {_when(entry['since'])})")
    if decision.recovered:
        lines += ["", "Recovered:"] + [f"  {key}" for key in decision.recovered]
    lines += ["", f"`migrator health` on {host} shows the current state; `migrator log` the recent operations."]
    if decision.kind != RECOVERED:
        lines.append(f"A reminder follows every {reminder_hours:g}h while anything fails, and one mail when "
                     "all is good again.")
    return Mail(to=to, subject=subject, body="\n".join(lines) + "\n", sender=sender)


def _path():
    return registry.NOTIFY_STATE.path


def notify(source: str, failures: dict[str, str], notify_cfg: dict, vsn: str, secrets: Secrets | None = None,
           what: str | None = None, now: float | None = None) -> dict:
    """Evaluate `source`'s failures, mail if due. Returns {"sent": kind|None, "transport", "error"}."""
    now = time.time() if now is None else now
    reminder = float(notify_cfg.get("reminder_hours", DEFAULT_REMINDER_HOURS))
    with locked_json(_path(), {"sources": {}}) as state:
        sources = state.setdefault("sources", {})
        before = sources.get(source, empty_source())
        decision, after = decide(before, failures, now, reminder)
        out = {"source": source, "sent": None, "transport": None, "error": None, "failing": sorted(failures)}
        if decision.kind is not None:
            mail = compose(vsn, what or source, decision, reminder, notify_cfg["email"], notify_cfg.get("from"))
            try:
                out["transport"] = send(mail, notify_cfg, secrets)
                out["sent"] = decision.kind
                out["subject"] = mail.subject
            except MigratorError as exc:
                out["error"] = exc.message
                after = unsent(before, after, decision)
                # kept until a mail of this source goes out: `health` reports it (ops/health.mail_check)
                after["unsent"] = {"error": exc.message[:500], "at": now, "kind": decision.kind}
        sources[source] = after
    return out
