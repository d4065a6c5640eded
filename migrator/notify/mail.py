"""Sending one notification mail: SMTP when the plan configures it, else `mutt`, else MailFailed.

mutt (cron + mutt, the VSN's usual mailer) runs with an argument vector, never through a shell. The
choice and MIGRATOR_MAILER: docs/operations.md (Health, mail and cron)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrator.errors import PlanInvalid, Unreachable
from migrator.plan.model import Secrets

if TYPE_CHECKING:
    from email.message import EmailMessage

# SMTP servers answer within seconds; a hung one must not hold a cron'd health check for long.
SMTP_TIMEOUT = 30
# mutt hands the message to its MTA or SMTP server; give it the same budget.
MUTT_TIMEOUT = 60
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}


class MailFailed(Unreachable):
    """The mail could not be handed to mutt or the SMTP server (exit 8)."""

    default_hint = "check health.notify in the plan (smtp host/port/tls/user, password_secret) or mutt's config"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str
    sender: str | None = None


def default_sender() -> str:
    return f"migrator@{socket.getfqdn() or 'localhost'}"


def transport(notify: dict | None = None) -> tuple[str, str | None]:
    """('mutt' or 'smtp', the override that chose it or None): MIGRATOR_MAILER=mutt|smtp, else SMTP when
    the plan has health.notify.smtp, else mutt when installed, else SMTP (which then says what is missing)."""
    choice = os.environ.get("MIGRATOR_MAILER", "auto")
    if choice in ("mutt", "smtp"):
        return choice, f"MIGRATOR_MAILER={choice}"
    if (notify or {}).get("smtp"):
        return "smtp", None
    return ("mutt" if shutil.which("mutt") else "smtp"), None


def send(mail: Mail, notify: dict, secrets: Secrets | None = None) -> str:
    """Send `mail` per the plan's health.notify section. Returns the transport used; raises MailFailed
    (naming MIGRATOR_MAILER when that override chose the transport)."""
    how, override = transport(notify)
    try:
        if how == "mutt":
            send_mutt(mail)
        else:
            send_smtp(mail, notify.get("smtp"), secrets)
    except MailFailed as exc:
        if override is None:
            raise
        other = " over the plan's health.notify.smtp" if notify.get("smtp") and how == "mutt" else ""
        raise MailFailed(f"{exc.message} (transport {how} chosen by {override}{other})",
                         hint=f"unset MIGRATOR_MAILER (or fix {how}) so the plan's health.notify decides how "
                              "mail is sent; `migrator cron install` carries it into the cron file") from exc
    return how


def send_mutt(mail: Mail) -> None:
    mutt = shutil.which("mutt")
    if mutt is None:
        raise MailFailed("mutt is not installed")
    env = dict(os.environ)
    if mail.sender:
        env["EMAIL"] = mail.sender  # mutt's default From; avoids passing addresses through mutt's -e language
    try:
        proc = subprocess.run([mutt, "-s", mail.subject, "--", mail.to], input=mail.body, text=True, env=env,
                              capture_output=True, timeout=MUTT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise MailFailed(f"mutt did not finish within {MUTT_TIMEOUT}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MailFailed(f"mutt exited {proc.returncode}: {tail[0][:200]}",
                         hint="mutt's own config (~/.muttrc, /etc/Muttrc) decides how it delivers; or set "
                              "health.notify.smtp in the plan to send over SMTP")


def message(mail: Mail) -> EmailMessage:
    from email.message import EmailMessage  # imported when mail is sent: keeps every CLI start-up light
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    msg["From"] = mail.sender or default_sender()
    msg["To"] = mail.to
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="migrator")
    msg.set_content(mail.body)
    return msg


def send_smtp(mail: Mail, smtp: dict | None, secrets: Secrets | None) -> None:
    if not smtp:
        raise MailFailed("the plan has no health.notify.smtp section (and mutt is not the transport)",
                         hint="set health.notify.smtp.host in the plan, or install mutt")
    host, tls = smtp["host"], smtp.get("tls", "starttls")
    port = smtp.get("port", DEFAULT_PORTS[tls])
    password = None
    if smtp.get("password_secret"):
        try:
            password = (secrets or Secrets()).get(smtp["password_secret"])
        except KeyError:
            raise PlanInvalid(f"health.notify.smtp.password_secret: key {smtp['password_secret']!r} is not in "
                              "the secrets file") from None
    import smtplib  # see message(): imported only when a mail goes out
    import ssl

    try:
        if tls == "ssl":
            client = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
        with client:
            if tls == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.get("user"):
                client.login(smtp["user"], password or "")
            client.send_message(message(mail))
    except (OSError, smtplib.SMTPException) as exc:
        # Never echo the password: smtplib's messages carry the server's reply only.
        raise MailFailed(f"SMTP {host}:{port} ({tls}) refused the mail: {type(exc).__name__}: {exc}") from exc
