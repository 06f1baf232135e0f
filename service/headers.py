"""Security headers on every response of the service: pages, the JSON API, the codec
server, static files and every error.

Three layers put them there, so that no response leaves without them: ``SecurityHeaders``
(ASGI middleware) on what the app's routes and handlers send; ``SecureApp``, which puts that
middleware outside Starlette's own error handler too (its plain 500 page for an unhandled
exception); and the server's h11 connection (``service.limits``) on what uvicorn answers by
itself (408 for late headers, 503 over the concurrency limit, 400 for a malformed request).

The pages carry no inline script or style (they load ``/static/support.css`` and
``/static/board.js``), so the Content-Security-Policy allows scripts and styles from this
origin only, and nothing may frame a page (clickjacking on the board's buttons). Links to
the board carry signed tokens in their paths, so no page sends a ``Referer``. The API
description at ``/docs`` loads Swagger UI from its CDN: its policy names that CDN and the
hash of the page's one inline script, nothing else. The codec server's answers (decrypted
ticket data) also say ``Cache-Control: no-store`` (``NoStore``): no browser or proxy keeps
them.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
}
SWAGGER_CDN = "https://cdn.jsdelivr.net"
ENCODED_HEADERS = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` and each security header it does not set itself (``/docs`` sets its own
    Content-Security-Policy)."""
    present = {name.lower() for name, _ in headers}
    return headers + [(k, v) for k, v in ENCODED_HEADERS if k not in present]


class HeaderRewrite:
    """ASGI middleware that rewrites the headers of every HTTP response ``app`` starts
    (``rewrite``); anything else passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def rewrite(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_rewritten(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = self.rewrite(list(message.get("headers", [])))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_rewritten)


class SecurityHeaders(HeaderRewrite):
    """Adds ``SECURITY_HEADERS`` to every HTTP response that does not set its own value of
    one (``/docs`` sets its own Content-Security-Policy)."""

    def rewrite(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return with_security_headers(headers)


NO_STORE = (b"cache-control", b"no-store")


class NoStore(HeaderRewrite):
    """``Cache-Control: no-store`` on every HTTP response of ``app`` (that sets no
    ``Cache-Control`` itself), for answers no cache may keep: the codec server's
    decrypted payloads are ticket data in plain text."""

    def rewrite(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if any(name.lower() == NO_STORE[0] for name, _ in headers):
            return headers
        return [*headers, NO_STORE]


class SecureApp(FastAPI):
    """FastAPI with ``SecurityHeaders`` outside everything: Starlette always puts its
    ``ServerErrorMiddleware`` outermost, so an unhandled exception's 500 page would
    otherwise bypass every middleware added to the app."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def add_api_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) with a policy of its own: the CDN the page loads Swagger UI
    from and the hashes of its inline scripts. (Create the app with ``docs_url=None``.)"""
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - Swagger UI"
    )
    body = bytes(page.body)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in re.findall(rb"<script>(.*?)</script>", body, re.S)
    )
    policy = (
        f"default-src 'none'; script-src {SWAGGER_CDN} {hashes}; style-src {SWAGGER_CDN};"
        " img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(body, headers={"content-security-policy": policy})
