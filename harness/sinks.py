"""Real sinks on loopback that record exactly what arrived and when: the HTTP sink (chat,
pager and webhook channels post to it) and the SMTP sink (email). The channel tests, the
fault drills and the benchmarks share them.

The HTTP sink keeps every request it was handed (``received``: path, idempotency key,
body, status answered, whether it stored the message, arrival time) and, like a sink that
honours idempotency keys, the distinct messages (``messages``). Its failure modes are
scripted per path or per request:

- ``script``: status codes answered to the next requests, in order;
- ``down``: paths that answer 500 (nothing stored);
- ``gone``: paths that answer 404;
- ``hang``: paths that hold the request for ``hang_seconds`` (longer than the sender's
  timeout), then answer 504, storing nothing: a service that stopped answering;
- ``fail_after_accept``: store the next N messages, then answer 500 anyway (the answer is
  lost after the sink stored the message).

The SMTP sink (``Mailbox`` behind aiosmtpd, ``smtp_sink``) keeps every message
(``received``) and one per Message-ID (``messages``); it can refuse recipients, take a
message and answer 451 (``fail_after_accept``), and require STARTTLS and a login.
"""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from harness.processes import free_port


@dataclass
class Sink:
    """An HTTP receiver: records every request; answers as its failure modes say."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    hang_seconds: float = 15.0
    fail_after_accept: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    def answer(self, path: str) -> tuple[int, bool]:
        """(status, stored)"""
        with self.lock:
            if path in self.down:
                return 500, False
            if path in self.gone:
                return 404, False
            if self.fail_after_accept:
                self.fail_after_accept -= 1
                return 500, True
            status = self.script.pop(0) if self.script else 202 if "pager" in path else 200
            return status, status < 300

    def hold(self, path: str) -> bool:
        """Hold a request to a hanging path (released early when the sink closes); True
        when it was held."""
        with self.lock:
            hangs = path in self.hang
        if hangs:
            self.closing.wait(self.hang_seconds)
        return hangs

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.received if r["stored"]]

    def messages(self) -> list[dict[str, Any]]:
        """What the sink holds: one message per idempotency key."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.accepted():
            seen.setdefault(r["key"], r)
        return list(seen.values())

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.messages() if r["path"] == path]

    def stored_per_key(self) -> Counter[str]:
        """How many times each key was stored (more than once: a duplicate delivery)."""
        return Counter(r["key"] for r in self.accepted())


class _Server(ThreadingHTTPServer):
    # A worker posts many deliveries at once: a deeper accept queue than the default 5.
    request_queue_size = 256


@contextmanager
def serve_sink() -> Iterator[Sink]:
    """An HTTP sink on a free loopback port, for as long as the block runs."""
    state = Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.time()
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if state.hold(self.path):
                status, stored = 504, False
            else:
                status, stored = state.answer(self.path)
            state.received.append(
                {
                    "path": self.path,
                    "key": self.headers.get("Idempotency-Key"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body),
                    "status": status,
                    "stored": stored,
                    "arrived": arrived,
                }
            )
            try:
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no such hook")
            except OSError:
                pass  # the sender gave up on a held request

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.closing.set()
        server.shutdown()
        server.server_close()


# --- SMTP -----------------------------------------------------------------------------------


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


@contextmanager
def smtp_sink(
    tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None
) -> Iterator[Mailbox]:
    """An SMTP server on a free loopback port, for as long as the block runs; with ``tls``
    (the server's context) it requires STARTTLS, with ``login`` (user, password) then AUTH."""
    box = Mailbox(port=free_port())
    options: dict[str, Any] = {}
    if tls is not None:
        options.update(tls_context=tls, require_starttls=True)
    if login is not None:
        expected = (login[0].encode(), login[1].encode())

        def authenticate(
            server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == expected
            if ok:
                box.logins.append(data.login.decode())
            return AuthResult(success=ok)

        options.update(authenticator=authenticate, auth_required=True, auth_require_tls=True)
    controller = Controller(box, hostname=box.host, port=box.port, **options)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def smtp_settings(box: Mailbox, security: str = "none") -> dict[str, str]:
    """The worker's SMTP settings (``SUPPORT_SMTP_*``) for sending to ``box``."""
    return {
        "SUPPORT_SMTP_HOST": box.host,
        "SUPPORT_SMTP_PORT": str(box.port),
        "SUPPORT_SMTP_SECURITY": security,
        "SUPPORT_SMTP_FROM": "Support SLA <sla@support.example>",
    }
