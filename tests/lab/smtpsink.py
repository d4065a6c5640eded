"""A real SMTP server on loopback (aiosmtpd) that keeps every message it receives, for notification tests.
Optionally requires AUTH PLAIN/LOGIN with one user and password (over plain SMTP: loopback only; tests
that use it silence aiosmtpd's "AUTH without TLS" warning with SINK_WARNING)."""

from __future__ import annotations

import email
import email.policy
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.lab.vsn import free_port

SINK_WARNING = "ignore:Requiring AUTH while not requiring TLS"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    subject: str
    body: str
    raw: bytes


@dataclass
class SMTPSink:
    user: str | None = None
    password: str | None = None
    messages: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    # aiosmtpd handler hook
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(("plain",))
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), str(msg["Subject"]),
                                      body.get_content() if body else "", envelope.content))
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        if ok:
            self.logins.append(self.user)
        # handled=False: aiosmtpd then answers 535 itself (handled=True would leave the client waiting).
        return AuthResult(success=ok, handled=False)

    def __enter__(self) -> SMTPSink:
        kwargs = {}
        if self.user:
            kwargs = {"authenticator": self._authenticate, "auth_require_tls": False, "auth_required": True}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first `count` messages, waiting briefly for delivery to finish."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages[:count]
