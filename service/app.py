"""The HTTP service: one ASGI app with the JSON API, the web contact form and the agent
board. ``python -m service`` serves it with uvicorn (``SUPPORT_HTTP_HOST``, default
127.0.0.1, and ``SUPPORT_HTTP_PORT``, default 8000) under the limits of ``service.limits``
(header and body timeouts, keep-alive, concurrency) and takes the client's address from
``X-Forwarded-For`` only from the proxies in ``SUPPORT_FORWARDED_ALLOW_IPS``; every response
carries the security headers of ``service.headers``. ``make run`` starts it beside the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from temporalio.client import Client

from intake.guards import LimitConfigError, limits_from_env
from runtime.codec import DecryptionError, EncryptionCodec, codec_from_env
from runtime.connection import connect, task_queue
from runtime.logs import redact_access_log
from runtime.telemetry import configure_tracing, shutdown_tracing
from service.api import ApiError, router
from service.auth import Settings, TokenConfigError
from service.codec import CorsConfigError, codec_app
from service.headers import SecureApp, add_api_docs
from service.limits import BodyLimit, HttpConfigError, HttpLimits, server_config, trusted_proxies
from service.pages import router as pages
from service.sessions import SessionStore

log = structlog.get_logger("support.service")

# The pages' stylesheet and script (files, not inline: see the Content-Security-Policy).
STATIC = Path(__file__).with_name("static")


def create_app(
    client: Client | None = None,
    settings: Settings | None = None,
    queue: str | None = None,
    codec: EncryptionCodec | None = None,
    limits: HttpLimits | None = None,
) -> FastAPI:
    """The app; without ``client`` it connects through Temporal's environment config,
    without ``codec`` its codec server uses the configured keys (``SUPPORT_CODEC_KEYS``),
    and without ``limits`` the HTTP limits are read from ``SUPPORT_HTTP_*``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if client is not None:
            try:
                yield
            finally:
                await app.state.sessions.close()
            return
        app.state.client = await connect(configure_tracing("support-service"))
        try:
            yield
        finally:
            await app.state.sessions.close()
            shutdown_tracing()  # flush the spans still queued

    # Security headers on every response, the unhandled exception's 500 included.
    app = SecureApp(
        title="Support SLA service",
        description="Ticket intake, status, agent actions and the agent board.",
        lifespan=lifespan,
        docs_url=None,  # add_api_docs: /docs with a Content-Security-Policy of its own
        redoc_url=None,
    )
    limits = limits or HttpLimits.from_env()
    app.state.settings = settings or Settings.from_env()
    # The board's sessions, in the ledger's database (service.sessions).
    app.state.sessions = SessionStore(app.state.settings.ledger_url)
    # Acknowledge links never reach the access log, whoever configured it (runtime.logs).
    redact_access_log()
    app.state.task_queue = queue or task_queue()
    if client is not None:
        app.state.client = client

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(DecryptionError)
    async def undecryptable(request: Request, err: DecryptionError) -> JSONResponse:
        log.error("cannot decrypt ticket data", error=str(err))
        return ApiError(503, "encrypted", f"ticket data cannot be read: {err}").response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")),
                "message": str(e["msg"]).removeprefix("Value error, "),
            }
            for e in err.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return ApiError(422, "invalid", f"the request is invalid: {message}", errors).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "error")
        return ApiError(err.status_code, code, str(err.detail)).response()

    @app.get("/healthz")
    async def health(request: Request) -> JSONResponse:
        client: Client = request.app.state.client
        try:
            ok = await client.service_client.check_health(timeout=timedelta(seconds=3))
        except Exception as err:  # unreachable server: report, do not raise
            log.warning("health check failed", error=str(err))
            ok = False
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "temporal": ok}
        return JSONResponse(body, status_code=200 if ok else 503)

    app.include_router(router)
    app.include_router(pages)
    codec_server = codec_app(app.state.settings, codec or codec_from_env())
    codec_server.state.sessions = app.state.sessions  # a board session may call it
    app.mount("/codec", codec_server)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_api_docs(app)
    app.add_middleware(BodyLimit, body_timeout=limits.body_timeout)
    return app


def main() -> None:
    import os

    import uvicorn

    from runtime.logs import configure_logging

    configure_logging(os.environ.get("SUPPORT_LOG_LEVEL", "INFO"))
    try:
        settings = Settings.from_env()
        limits = HttpLimits.from_env()
        # Whose X-Forwarded-For names the client (the form's per-client rate limit).
        proxies = trusted_proxies()
        # The form's rate limits: a bad one stops the service here, not as a 503 later.
        limits_from_env()
        app = create_app(settings=settings, limits=limits)
    except (TokenConfigError, HttpConfigError, CorsConfigError, LimitConfigError) as err:
        # The message names the variable.
        raise SystemExit(f"error: {err}") from None
    host = os.environ.get("SUPPORT_HTTP_HOST", "127.0.0.1")
    port = int(os.environ.get("SUPPORT_HTTP_PORT", "8000"))
    # Header and body timeouts, keep-alive, header size and concurrency: service.limits.
    uvicorn.Server(server_config(app, limits, host, port, proxies, log_config=None)).run()
