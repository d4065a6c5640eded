"""Sending one notification mail: through `mutt` when it is installed (seed 000: cron + mutt), else SMTP
with the plan's `health.notify.smtp` settings and the password from the secrets file.

`MIGRATOR_MAILER=mutt|smtp` forces a transport (default `auto`: mutt when on PATH). mutt is run with an
argument vector (`mutt -s SUBJECT -- ADDRESS`, body on stdin), never through a shell; its own config
(~/.muttrc, /etc/Muttrc) decides how it delivers, and $EMAIL carries the plan's `from` address.
"""

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


def transport() -> str:
    """'mutt' or 'smtp', per MIGRATOR_MAILER (auto: mutt when installed)."""
    choice = os.environ.get("MIGRATOR_MAILER", "auto")
    if choice in ("mutt", "smtp"):
        return choice
    return "mutt" if shutil.which("mutt") else "smtp"


def send(mail: Mail, notify: dict, secrets: Secrets | None = None) -> str:
    """Send `mail` per the plan's health.notify section. Returns the transport used; raises MailFailed."""
    how = transport()
    if how == "mutt":
        send_mutt(mail)
    else:
        send_smtp(mail, notify.get("smtp"), secrets)
    return how


def send_mutt(mail: Mail) -> None:
    mutt = shutil.which("mutt")
    if mutt is None:
        raise MailFailed("mutt is not installed (MIGRATOR_MAILER=mutt)")
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
        raise MailFailed(f"mutt exited {proc.returncode}: {tail[0][:200]}")


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
        raise MailFailed("mutt is not installed and the plan has no health.notify.smtp section",
                         hint="install mutt, or set health.notify.smtp.host in the plan")
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
