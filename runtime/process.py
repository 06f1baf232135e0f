"""How a process of the engine starts and ends: a long-running role runs until SIGINT or
SIGTERM, a short-lived command exits with ``os._exit`` after flushing.

Standard library only: ``deploy/healthcheck.py`` imports it on every health check.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn


def run_until_stopped(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` in a new event loop; SIGINT and SIGTERM set ``stop``, and
    ``serve`` shuts down cleanly once it is set."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(runner())


def exit_flushed(code: int) -> NoReturn:
    """Flush stdout and stderr, then ``os._exit(code)``: the Temporal client's Rust threads
    can abort a normal interpreter shutdown of a short-lived process ("PyGILState_Release
    ... must be current", temporalio/sdk-python#300), which would fail a good run. A
    reader that went away (``| head``) is not an error worth a traceback."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)
