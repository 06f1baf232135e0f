"""The real stack a drill runs against: the dev server, ``worker.py`` as its own process,
the HTTP sink, the drill policy, the ledger and a client (all from ``harness``), in a
temporary directory that is removed afterwards (``keep`` leaves it for a post-mortem).
Every process started here is stopped on the way out, whatever happened. The HTTP service
(``DrillService``) can run beside them, with tokens.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client

from drills.policy import DrillPolicy
from harness.processes import HarnessError, ServiceProcess, WorkerProcess, clean_env
from harness.sinks import Sink, serve_sink
from harness.temporal import DevServer, connect


class DrillError(HarnessError):
    """The drill could not run as planned (a ticket did not open, a wait timed out)."""


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the verdict line."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    workdir: Path
    server: DevServer
    worker: WorkerProcess
    sink: Sink
    client: Client
    queue: str
    ledger_url: str


@asynccontextmanager
async def running_stack(
    name: str,
    policy: DrillPolicy,
    *,
    ledger_url: str | None = None,
    worker_env: Mapping[str, str] | None = None,
    keep: bool = False,
) -> AsyncIterator[Stack]:
    """Sink, dev server, worker process and client, stopped (and the directory removed,
    unless ``keep``) when the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix=f"drill-{name}-"))
    async with AsyncExitStack() as cleanup:
        cleanup.callback(_remove_or_keep, workdir, keep)
        sink = cleanup.enter_context(serve_sink())
        policy_path = policy.write(workdir / "policy.yaml", sink.url)
        server = DevServer(workdir)
        cleanup.callback(server.stop)
        await server.start()
        queue = f"drill-{name}"
        ledger = ledger_url or f"sqlite:///{workdir / 'ledger.sqlite3'}"
        env = clean_env(
            TEMPORAL_ADDRESS=server.address,
            SUPPORT_TASK_QUEUE=queue,
            SUPPORT_POLICY_FILE=str(policy_path),
            SUPPORT_LEDGER_URL=ledger,
            PYTHONUNBUFFERED="1",
            **(worker_env or {}),
        )
        worker = WorkerProcess(workdir, env)
        cleanup.callback(worker.stop)
        client = await connect(server.address)
        await worker.start()
        say(f"{name}: dev server {server.address}, worker started, in {workdir}")
        yield Stack(workdir, server, worker, sink, client, queue, ledger)


async def stop_and_restart(
    stack: Stack,
    process: DevServer | WorkerProcess,
    name: str,
    sig: signal.Signals,
    at: float,
    down: float,
) -> tuple[float, float]:
    """Stop ``process`` (``name`` in the progress lines) with ``sig`` at monotonic instant
    ``at``, start it again ``down`` seconds later; (stop instant, restart instant) on the
    wall clock."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    process.stop(sig)
    stopped = time.time()
    say(f"{name} stopped ({sig.name}); {len(stack.sink.accepted())} deliveries so far")
    await asyncio.sleep(down)
    restarted = await process.start()
    say(f"{name} back after {restarted - stopped:.1f} s")
    return stopped, restarted


def _remove_or_keep(workdir: Path, keep: bool) -> None:
    if keep:
        say(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class DrillService:
    """The HTTP service (``python -m service``) on a free port, with one intake and one
    agent token, against the stack's server and task queue."""

    stack: Stack
    agent: str = "drill-agent"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        env = clean_env(
            TEMPORAL_ADDRESS=self.stack.server.address,
            SUPPORT_TASK_QUEUE=self.stack.queue,
            SUPPORT_POLICY_FILE=str(self.stack.workdir / "policy.yaml"),
            SUPPORT_AGENT_TOKENS=f"{self.agent}:{self.token}",
            SUPPORT_INTAKE_TOKENS=f"drill-intake:{secrets.token_urlsafe(24)}",
            SUPPORT_LINK_SECRET=secrets.token_urlsafe(32),
        )
        self.process = ServiceProcess(env, self.stack.workdir / "service.log")

    @property
    def url(self) -> str:
        return self.process.url

    async def start(self) -> None:
        await self.process.start()

    def stop(self) -> None:
        self.process.stop()
