"""Limits on what a client can make the service hold: request bodies, the time a request
may take to arrive, and the number of connections at once.

Request bodies are bounded before any route reads them: the JSON API, the public contact
form, the board's forms and the codec server. A body over its limit, declared
(``Content-Length``) or streamed (chunked), is answered 413 and never reaches the app. A
body that does not arrive whole within ``SUPPORT_HTTP_BODY_TIMEOUT`` is answered 408. The
codec server's bodies (up to 4 MiB) are not read here at all: the codec checks the
caller's token first and only then reads the body, through the same limits. An ``/api/``
body is read only for a request whose bearer token names an agent or an integration: any
other is answered 401 unread, so nobody without a token makes the service hold 256 KiB.

The server side (``server_config``, what ``python -m service`` runs): a request's line and
headers must arrive within ``SUPPORT_HTTP_HEADER_TIMEOUT`` (else 408 and the connection is
closed: a client that trickles headers holds nothing), an idle keep-alive connection is
closed after ``SUPPORT_HTTP_KEEP_ALIVE``, headers are at most
``SUPPORT_HTTP_MAX_HEADER_BYTES``, and beyond ``SUPPORT_HTTP_CONCURRENCY`` connections or
requests at once the service answers 503. Each of these answers of the server's own
carries the security headers (``SecureConnection``), like every answer of the app.

Behind a reverse proxy every request comes from the proxy's address, which the form's
per-client rate limit would count as one client for everybody. ``SUPPORT_FORWARDED_ALLOW_IPS``
names the proxies (addresses or networks; unset: loopback, a proxy on this host; ``none``:
no proxy) whose ``X-Forwarded-For`` names the client: uvicorn then takes the address that
the nearest untrusted hop appended, so a client's own forged entries are ignored, and from
any other peer the header is ignored altogether (docs/security.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api import ApiError
from service.auth import Settings
from service.headers import with_security_headers
from service.pages import message

# A ticket at every limit (20,000 characters of description) fits even with each character
# escaped as JSON's 12-byte surrogate pair, or percent-encoded in a form (9 bytes).
MAX_REQUEST_BYTES = 256 * 1024
# The Web UI sends the codec server a batch of payloads at a time.
MAX_CODEC_BYTES = 4 * 1024 * 1024


class HttpConfigError(ValueError):
    """An HTTP limit setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP server's limits (seconds, bytes, a count), from ``SUPPORT_HTTP_*``."""

    # The request line and headers, from the connection (or the previous response) on.
    header_timeout: float = 10.0
    # The whole body, from the headers on (4 MiB to the codec at 150 KiB/s fits).
    body_timeout: float = 30.0
    # An idle connection between two requests (whole seconds: uvicorn's setting).
    keep_alive: int = 5
    # Connections or requests in progress at once; more are answered 503.
    concurrency: int = 200
    # The request line and headers together (h11's limit on an incomplete event).
    max_header_bytes: int = 16 * 1024

    ENV = {
        "header_timeout": "SUPPORT_HTTP_HEADER_TIMEOUT",
        "body_timeout": "SUPPORT_HTTP_BODY_TIMEOUT",
        "keep_alive": "SUPPORT_HTTP_KEEP_ALIVE",
        "concurrency": "SUPPORT_HTTP_CONCURRENCY",
        "max_header_bytes": "SUPPORT_HTTP_MAX_HEADER_BYTES",
    }
    RANGES = {
        "header_timeout": (0.1, 300.0),
        "body_timeout": (0.1, 3600.0),
        "keep_alive": (1, 300),
        "concurrency": (2, 100_000),
        "max_header_bytes": (1024, 1024 * 1024),
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpLimits:
        """The limits set in the environment, the defaults for the others; a value that is
        not a number in its range raises ``HttpConfigError`` naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, variable in cls.ENV.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            low, high = cls.RANGES[field]
            whole = isinstance(low, int)
            try:
                value: float = int(raw) if whole else float(raw)
            except ValueError:
                kind = "a whole number" if whole else "a number of seconds"
                raise HttpConfigError(f"{variable}: {raw!r} is not {kind}") from None
            if not low <= value <= high:
                raise HttpConfigError(f"{variable}: {raw} is not from {low} to {high}")
            values[field] = value
        return cls(**values)


# --- request bodies --------------------------------------------------------------------------


def is_codec(path: str) -> bool:
    return path == "/codec" or path.startswith("/codec/")


def limit_for(path: str) -> int:
    return MAX_CODEC_BYTES if is_codec(path) else MAX_REQUEST_BYTES


class BodyRefused(Exception):
    """A body over its limit (413) or not sent in time (408), found while reading it."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, f"the request body is larger than {limit} bytes")


def too_slow(seconds: float) -> BodyRefused:
    return BodyRefused(408, f"the request body did not arrive within {seconds:g} seconds")


def refusal(scope: Scope, refused: BodyRefused, limit: int) -> Response:
    """The API's and the codec server's JSON refusal, or a page for people's forms."""
    path: str = scope["path"]
    if path.startswith("/api/") or is_codec(path):
        code = "too_large" if refused.status == 413 else "timeout"
        return ApiError(refused.status, code, refused.text).response()
    if refused.status == 413:
        text = f"The form can take at most {limit // 1024} KiB. Shorten it and send it again."
        return message(Request(scope), "That is too much text", text, status_code=413)
    text = "The form did not arrive in time. Send it again."
    return message(Request(scope), "That took too long", text, status_code=408)


def limited(receive: Receive, limit: int, seconds: float) -> Receive:
    """``receive`` that raises ``BodyRefused`` once the body passes ``limit`` bytes or has
    not ended ``seconds`` after the first call: for an app that reads the body itself."""
    loop = asyncio.get_running_loop()
    deadline: list[float] = []
    read = 0

    async def receive_limited() -> Message:
        nonlocal read
        if not deadline:
            deadline.append(loop.time() + seconds)
        try:
            async with asyncio.timeout_at(deadline[0]):
                message = await receive()
        except TimeoutError:
            raise too_slow(seconds) from None
        read += len(message.get("body", b""))
        if read > limit:
            raise too_large(limit)
        return message

    return receive_limited


def unauthenticated(scope: Scope) -> str | None:
    """Why an ``/api/`` request's bearer token names no caller of the app's ``Settings``
    (None: it does, or the app has no settings to ask)."""
    settings: Settings | None = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    if settings is None:
        return None
    header = dict(scope["headers"]).get(b"authorization")
    return settings.bearer_refusal(header.decode("latin-1") if header is not None else None)


class BodyLimit:
    """ASGI middleware: reads a request's body up to its path's limit and within
    ``body_timeout``, then hands the app the whole body at once (or answers 413 / 408).
    The codec server reads its body itself, after authentication, through ``limited``."""

    def __init__(self, app: ASGIApp, body_timeout: float = HttpLimits.body_timeout) -> None:
        self.app = app
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = limit_for(path)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await refusal(scope, too_large(limit), limit)(scope, receive, send)
            return
        if is_codec(path):
            await self.app(scope, limited(receive, limit, self.body_timeout), send)
            return
        if path.startswith("/api/"):
            why = unauthenticated(scope)
            if why is not None:
                await ApiError(401, "unauthenticated", why).response()(scope, receive, send)
                return
        body = bytearray()
        read = limited(receive, limit, self.body_timeout)
        try:
            while True:
                message = await read()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        except BodyRefused as refused:
            await refusal(scope, refused, limit)(scope, receive, send)
            return
        whole: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)


# --- the server: header timeout, keep-alive, concurrency ---------------------------------------

LATE_HEADERS = b"the request headers did not arrive.\r\n"
# Written as it is: h11 has no request to answer yet.
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    + b"".join(
        name + b": " + value + b"\r\n"
        for name, value in with_security_headers(
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(LATE_HEADERS)).encode()),
                (b"connection", b"close"),
            ]
        )
    )
    + b"\r\n"
    + LATE_HEADERS
)


class SecureConnection(h11.Connection):
    """h11's server side, giving every response it writes the security headers it lacks:
    uvicorn's own answers (503 over the concurrency limit, 400 for a malformed request,
    500 when the app fails before it answers) never pass through the app's middleware."""

    def send_with_data_passthrough(self, event: h11.Event) -> list[bytes] | None:
        if isinstance(event, h11.Response):
            event = h11.Response(
                status_code=event.status_code,
                headers=with_security_headers(list(event.headers.raw_items())),
                http_version=event.http_version,
                reason=event.reason,
            )
        return super().send_with_data_passthrough(event)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers, from
    the connection (or the first byte after a response) on: uvicorn's own keep-alive
    timeout stops counting at the first byte, so a client sending a header a minute would
    hold its connection for ever. A request whose body the app did not wait for (a
    refusal before reading it) ends its connection."""

    header_timeout: float = HttpLimits.header_timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = SecureConnection(h11.SERVER, *([size] if size is not None else []))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.warning("request headers not received in time: connection closed")
            self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state not in (h11.DONE, h11.IDLE) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


# --- the client's address behind a reverse proxy ----------------------------------------------

FORWARDED_ENV = "SUPPORT_FORWARDED_ALLOW_IPS"
# Unset: only a proxy on this host (the service listens on loopback unless told otherwise).
LOOPBACK_PROXIES = ("127.0.0.1", "::1")


def trusted_proxies(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The peers whose ``X-Forwarded-For`` names the client, from ``SUPPORT_FORWARDED_ALLOW_IPS``:
    IP addresses or networks separated by commas, ``none`` for no proxy (the header is
    never read), unset for loopback. ``HttpConfigError`` naming the variable for anything
    else, ``*`` and a network of every address included: with those, any client could
    name any address and so spend anybody's allowance, or escape its own."""
    env = os.environ if environ is None else environ
    raw = env.get(FORWARDED_ENV, "").strip()
    if not raw:
        return LOOPBACK_PROXIES
    if raw.lower() == "none":
        return ()
    found: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            network = None if item == "*" else ipaddress.ip_network(item, strict=False)
        except ValueError:
            network = None
        if network is None or network.prefixlen == 0:
            everyone = item == "*" or network is not None
            why = "trusts everyone" if everyone else "is not an IP address or network"
            raise HttpConfigError(
                f"{FORWARDED_ENV}: {item!r} {why}: name the reverse proxies' addresses or"
                " networks (e.g. 10.0.0.5, 172.16.0.0/12), or none"
            )
        single = network.num_addresses == 1
        found.append(str(network.network_address) if single else str(network))
    if not found:
        raise HttpConfigError(f"{FORWARDED_ENV}: {raw!r} names no proxy (or say none)")
    return tuple(found)


def server_config(
    app: Any,
    limits: HttpLimits,
    host: str,
    port: int,
    proxies: Sequence[str] = LOOPBACK_PROXIES,
    **options: Any,
) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with ``limits``, taking the client's address
    from ``X-Forwarded-For`` only on a connection from one of ``proxies`` (none: never)."""
    protocol = type("Protocol", (TimedH11Protocol,), {"header_timeout": limits.header_timeout})
    # Always given: uvicorn would otherwise read its own FORWARDED_ALLOW_IPS.
    forwarded: dict[str, Any] = {"proxy_headers": bool(proxies)}
    if proxies:
        forwarded["forwarded_allow_ips"] = list(proxies)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=limits.keep_alive,
        limit_concurrency=limits.concurrency,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        **forwarded,
        **options,
    )
