"""The codec server for Temporal's Web UI: ``POST /codec/decode`` and ``/codec/encode``.

With payload encryption on, the Web UI shows ciphertext unless it is pointed at this
endpoint (``temporal server start-dev --ui-codec-endpoint http://localhost:8000/codec``, or
the UI's "Data Encoder" setting). The UI posts Temporal's JSON form of ``Payloads``; the
reply is the same shape, decrypted (or encrypted).

Only agents may decode: with ``Authorization: Bearer <agent token>`` or, from a browser
signed in to the agent board, its session cookie (turn on "Include cross-origin
credentials" in the UI's Data Encoder settings). The caller is authenticated from the
request's headers before its body (up to 4 MiB) is read: a request without a valid token
is refused having read none of it. Cross-origin requests are allowed only from the Web
UI's origin(s) in ``SUPPORT_CODEC_CORS_ORIGINS`` (default ``http://localhost:8233``):
``*``, ``null`` or anything but ``scheme://host[:port]`` is refused at start, since
credentials are allowed. Errors name no key id. Every answer says ``Cache-Control:
no-store`` (a decoded payload is ticket data in plain text), besides the security headers
every response of the service carries (``service.headers``).
"""

from __future__ import annotations

import os
import re

import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from runtime.codec import DecryptionError, EncryptionCodec
from service.api import ApiError
from service.auth import Settings
from service.headers import NoStore
from service.limits import BodyRefused
from service.pages import current_agent

log = structlog.get_logger("support.service")

CORS_ENV = "SUPPORT_CODEC_CORS_ORIGINS"
DEFAULT_UI_ORIGIN = "http://localhost:8233"


ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


class CorsConfigError(ValueError):
    """A CORS origin that cannot be allowed; the message names the setting and the entry."""


def check_origins(origins: list[str], source: str = CORS_ENV) -> list[str]:
    """``origins`` as given, or ``CorsConfigError``: with credentials allowed, ``*`` would
    let any site read what a signed-in agent's browser decodes, so only exact origins."""
    if not origins:
        raise CorsConfigError(f"{source}: no origin given (e.g. {DEFAULT_UI_ORIGIN})")
    for origin in origins:
        if origin == "*":
            raise CorsConfigError(
                f"{source}: '*' is refused: the codec server allows credentials, so it names"
                " the Web UI's origins (e.g. http://localhost:8233)"
            )
        if not ORIGIN.match(origin):
            raise CorsConfigError(
                f"{source}: {origin!r} is not an origin (scheme://host[:port], http or https,"
                " no path)"
            )
    return origins


def cors_origins() -> list[str]:
    value = os.environ.get(CORS_ENV) or DEFAULT_UI_ORIGIN
    return check_origins(
        [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
    )


async def _caller(request: Request, settings: Settings) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return settings.agent(token.strip())
    return await current_agent(request)


def codec_app(
    settings: Settings, codec: EncryptionCodec | None, origins: list[str] | None = None
) -> FastAPI:
    """The codec server as an app to mount at ``/codec``."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.add_middleware(
        CORSMiddleware,
        allow_origins=cors_origins() if origins is None else check_origins(origins, "origins"),
        allow_methods=["POST"],
        allow_headers=["authorization", "content-type", "x-namespace"],
        allow_credentials=True,
        max_age=600,
    )
    # Outermost, so the preflight's and every refusal's answer say it too.
    app.add_middleware(NoStore)

    async def run(request: Request, operation: str) -> Response:
        agent = await _caller(request, settings)
        if agent is None:
            return ApiError(
                401,
                "unauthenticated",
                "send an agent token as 'Authorization: Bearer <token>', or sign in to the board",
            ).response()
        if codec is None:
            return ApiError(
                404,
                "codec_not_configured",
                "payload encryption is off on this service (SUPPORT_CODEC_KEYS is not set)",
            ).response()
        try:
            # Read only now, authenticated (service.limits bounds its size and time).
            body = await request.body()
        except BodyRefused as refused:
            code = "too_large" if refused.status == 413 else "timeout"
            return ApiError(refused.status, code, refused.text).response()
        try:
            payloads = json_format.Parse(body, Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as err:
            return ApiError(
                400, "invalid", f"the body is not Temporal's JSON Payloads: {err}"
            ).response()
        try:
            if operation == "decode":
                result = await codec.decode(payloads.payloads)
            else:
                result = await codec.encode(payloads.payloads)
        except DecryptionError as err:
            return ApiError(422, "undecryptable", str(err)).response()
        log.info(
            "codec request",
            operation=operation,
            agent=agent,
            namespace=request.headers.get("x-namespace"),
            payloads=len(result),
        )
        reply = json_format.MessageToJson(Payloads(payloads=result))
        return Response(reply, media_type="application/json")

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        return await run(request, "decode")

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        return await run(request, "encode")

    return app
