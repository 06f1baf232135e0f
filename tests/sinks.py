"""Real sinks on loopback for the channel tests: an HTTP receiver (chat, pager, webhook;
``drills/sink.py``, shared with the fault drills) and an SMTP server (aiosmtpd), each
recording exactly what arrived.

Both sinks keep every delivery they were handed (``received``) and, like a sink that
honours idempotency keys (or a mailbox that keeps one message per Message-ID), the
distinct messages (``messages``). ``fail_after_accept`` makes a sink take a message and
then answer with an error, as when the response is lost after the sink stored it.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from drills.sink import Sink, serve_sink
from tests.certs import Authority


@pytest.fixture
def sink() -> Iterator[Sink]:
    with serve_sink() as state:
        yield state


@dataclass
class Mailbox:
    """An SMTP server's mail store."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[list[str]] = field(default_factory=list)
    fail_after_accept: int = 0
    refuse: set[str] = field(default_factory=set)  # addresses answered 550
    logins: list[str] = field(default_factory=list)
    tls_sessions: int = 0

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(message)
        self.envelopes.append(list(envelope.rcpt_tos))
        if session.ssl is not None:
            self.tls_sessions += 1
        if self.fail_after_accept:
            self.fail_after_accept -= 1
            return "451 4.3.0 stored, but the answer is lost"
        return "250 OK: queued"

    def messages(self) -> list[EmailMessage]:
        """One per Message-ID, as a mailbox keeps them."""
        seen: dict[str, EmailMessage] = {}
        for m in self.received:
            seen.setdefault(str(m["Message-ID"]), m)
        return list(seen.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """A plain SMTP server on loopback, and the worker's SMTP settings pointing at it."""
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    monkeypatch.setenv("SUPPORT_SMTP_HOST", box.host)
    monkeypatch.setenv("SUPPORT_SMTP_PORT", str(box.port))
    monkeypatch.setenv("SUPPORT_SMTP_SECURITY", "none")
    monkeypatch.setenv("SUPPORT_SMTP_FROM", "Support SLA <sla@support.example>")
    yield box
    controller.stop()


@pytest.fixture
def tls_mailbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Mailbox]:
    """An SMTP server that requires STARTTLS and then AUTH (user ``sla``, password ``s3cret``)."""
    authority = Authority(tmp_path)
    server = authority.issue("smtp", "localhost", server=True)  # also valid for 127.0.0.1
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    box = Mailbox(port=free_port())

    def authenticate(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"sla",
            b"s3cret",
        )
        if ok:
            box.logins.append(data.login.decode())
        return AuthResult(success=ok)

    controller = Controller(
        box,
        hostname=box.host,
        port=box.port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    monkeypatch.setenv("SUPPORT_SMTP_HOST", box.host)
    monkeypatch.setenv("SUPPORT_SMTP_PORT", str(box.port))
    monkeypatch.setenv("SUPPORT_SMTP_SECURITY", "starttls")
    monkeypatch.setenv("SUPPORT_SMTP_CA_FILE", str(authority.pem))
    monkeypatch.setenv("SUPPORT_SMTP_USERNAME", "sla")
    monkeypatch.setenv("SUPPORT_SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("SUPPORT_SMTP_FROM", "Support SLA <sla@support.example>")
    yield box
    controller.stop()
