"""An ASGI app (the HTTP service's FastAPI app) on uvicorn on loopback, in this process: the
one way the tests serve the app over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import uvicorn

from harness.processes import HarnessError, eventually

# A client that keeps its connection open (a browser) must not hold up the way out.
GRACEFUL_SHUTDOWN_SECONDS = 2


@asynccontextmanager
async def serve(
    app: Any, port: int | None = None, lifespan: Literal["auto", "on", "off"] = "auto"
) -> AsyncIterator[str]:
    """``app`` on ``port`` (a free one by default) until the block ends; yields its URL
    once uvicorn has started. The socket is bound here, before uvicorn starts, so a free
    port cannot be taken by another process (a parallel test) in between."""
    # IPPROTO_TCP as asyncio's own listeners have it: asyncio sets TCP_NODELAY only on such
    # sockets, and without it small responses wait out Nagle and delayed ACKs (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind(("127.0.0.1", port or 0))
    except OSError as err:
        sock.close()
        raise HarnessError(f"cannot serve on 127.0.0.1:{port}: {err}") from err
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan=lifespan,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(f"uvicorn on :{port}", lambda: server.started or task.done(), every=0.01)
        if not server.started:
            raise HarnessError(f"uvicorn did not start on :{port}: {_ending(task)}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await task
        except SystemExit:  # uvicorn's exit at a failed start-up, reported above
            pass
        sock.close()


def _ending(task: asyncio.Task[None]) -> str:
    """How uvicorn's task ended (it exits with SystemExit when the app's start-up fails)."""
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return "it returned" if error is None else repr(error)
