"""The project's programs as their own processes in tests: started with an environment,
output to a log file, stopped with SIGTERM (killed if they linger)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.sinks import free_port


@asynccontextmanager
async def background(args: list[str], env: dict[str, str], log: Path) -> AsyncIterator[None]:
    """``python <args>`` as a process (output to ``log``) until the block ends."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            yield
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()


@asynccontextmanager
async def service_process(env: dict[str, str], log: Path) -> AsyncIterator[httpx.AsyncClient]:
    """``python -m service`` on a free port with ``env``; yields a client for it once it
    answers ``/healthz`` (it connects to Temporal before it listens)."""
    port = free_port()
    async with (
        background(["-m", "service"], {**env, "SUPPORT_HTTP_PORT": str(port)}, log),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        for _ in range(300):
            try:
                await http.get("/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        else:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"the service did not start: {output}")
        yield http
