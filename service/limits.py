"""Request bodies are bounded before any route reads them: the JSON API, the public
contact form, the board's forms and the codec server. A body over its limit, declared
(``Content-Length``) or streamed (chunked), is answered 413 and never reaches the app."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import ApiError
from service.pages import message

# A ticket at every limit (20,000 characters of description) fits even with each character
# escaped as JSON's 12-byte surrogate pair, or percent-encoded in a form (9 bytes).
MAX_REQUEST_BYTES = 256 * 1024
# The Web UI sends the codec server a batch of payloads at a time.
MAX_CODEC_BYTES = 4 * 1024 * 1024


def is_codec(path: str) -> bool:
    return path == "/codec" or path.startswith("/codec/")


def limit_for(path: str) -> int:
    return MAX_CODEC_BYTES if is_codec(path) else MAX_REQUEST_BYTES


def too_large(scope: Scope, limit: int) -> Response:
    """The API's and the codec server's JSON refusal, or a page for people's forms."""
    path: str = scope["path"]
    if path.startswith("/api/") or is_codec(path):
        error = ApiError(413, "too_large", f"the request body is larger than {limit} bytes")
        return error.response()
    text = f"The form can take at most {limit // 1024} KiB. Shorten it and send it again."
    return message(Request(scope), "That is too much text", text, status_code=413)


class BodyLimit:
    """ASGI middleware: reads a request's body up to its path's limit, then hands the app
    the whole body at once (or answers 413)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = limit_for(path)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, limit)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await too_large(scope, limit)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        whole: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)
