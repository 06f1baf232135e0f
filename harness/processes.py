"""This project's programs as their own processes, and what starting them needs: free
loopback ports, an environment without the machine's Temporal / support settings, a log
file per process, a stop that never leaves a process running.

Every start waits for a sign of readiness (a log line, a listening port) and fails with
the tail of the process's log when it exits first. ``start()`` awaits; ``start_blocking()``
is the same wait for synchronous callers (``scripts/run_local.py``, plain pytest fixtures).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast, overload

import httpx

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
POLL_SECONDS = 0.1  # a starting process's readiness
EVERY_SECONDS = 0.05  # an eventually() probe
TAIL_CHARS = 2000


class HarnessError(RuntimeError):
    """A process or service the harness runs did not start or answer as planned."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (bound to port 0 and
    released: another process may take one before its user binds it)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def listening_by(pid: int, port: int, host: str = "127.0.0.1") -> bool:
    """Whether process ``pid`` itself holds the socket listening on ``port``: a server that
    could not bind its port (taken by another process between choosing it and binding it;
    with tests in parallel, e.g. by another dev server's internal services) must not be
    taken for ready because someone else answers there. Linux's /proc; elsewhere, any
    listener on the port counts."""
    try:
        listeners = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table, encoding="ascii") as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # LISTEN
                        listeners.add(f"socket:[{inode}]")
        if not listeners:
            return False
        descriptors = Path(f"/proc/{pid}/fd")
        for descriptor in descriptors.iterdir():
            try:
                if os.readlink(descriptor) in listeners:
                    return True
            except OSError:
                continue  # closed meanwhile
        return False
    except OSError:  # no /proc, or the process is gone
        return listening(port, host) if not Path("/proc").is_dir() else False


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any TEMPORAL_* / SUPPORT_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_"))}
    env.update(extra)
    return env


def binary(name: str) -> Path:
    """A program installed beside this Python (the venv's ``temporal``), else on PATH."""
    found = Path(sys.executable).parent / name
    if found.exists():
        return found
    located = shutil.which(name)
    if not located:
        raise HarnessError(f"{name} not found: install the dev extras (make test does)")
    return Path(located)


class _Waiting:
    """One wait of ``eventually`` / ``eventually_blocking``: its deadline, and what the probe
    said last (for the message when it runs out)."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what, self.seconds = what, seconds
        self.deadline = time.monotonic() + seconds
        self.last: object = None
        self.error: BaseException | None = None

    def over(self) -> HarnessError | None:
        """The error to raise once the deadline has passed, else None."""
        if time.monotonic() <= self.deadline:
            return None
        message = f"timed out after {self.seconds:g} s waiting for {self.what}"
        if self.error is not None:
            message += f"; last error: {self.error!r}"
        elif self.last is not None:
            message += f"; last: {self.last!r}"
        return HarnessError(message)


@overload
async def eventually(
    what: str,
    probe: Callable[[], Awaitable[T | None]],
    seconds: float = 10,
    *,
    every: float = EVERY_SECONDS,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T: ...


@overload
async def eventually(
    what: str,
    probe: Callable[[], T | None],
    seconds: float = 10,
    *,
    every: float = EVERY_SECONDS,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T: ...


async def eventually(
    what: str,
    probe: Callable[[], Awaitable[T | None] | T | None],
    seconds: float = 10,
    *,
    every: float = EVERY_SECONDS,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe()`` (a function or a coroutine function) every ``every`` seconds until
    it returns something truthy, and return that. The exceptions in ``ignoring`` count as
    "not yet"; after ``seconds`` (real time) a HarnessError names ``what`` and what the
    probe returned or raised last."""
    waiting = _Waiting(what, seconds)
    while True:
        try:
            found = probe()
            if inspect.isawaitable(found):
                found = await found
            waiting.last, waiting.error = found, None
        except ignoring as err:
            found, waiting.error = None, err
        if found:
            return cast(T, found)
        if error := waiting.over():
            raise error
        await asyncio.sleep(every)


def eventually_blocking(
    what: str,
    probe: Callable[[], T | None],
    seconds: float = 10,
    *,
    every: float = EVERY_SECONDS,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """``eventually`` for synchronous callers (plain functions and fixtures): the same wait
    with ``time.sleep``."""
    waiting = _Waiting(what, seconds)
    while True:
        try:
            found = probe()
            waiting.last, waiting.error = found, None
        except ignoring as err:
            found, waiting.error = None, err
        if found:
            return found
        if error := waiting.over():
            raise error
        time.sleep(every)


def spawn(
    argv: list[str], log: Path | None, env: dict[str, str], append: bool = False
) -> subprocess.Popen[bytes]:
    """Start a process in the project's root, in its own session (so a signal to the
    caller's process group does not reach it), its output in ``log`` (appended to with
    ``append``; None: the caller's own stdout and stderr)."""
    if log is None:
        return subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def terminate(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process: ``sig``, then SIGKILL if it lingers."""
    stop_all([process], grace=20, sig=sig)


def stop_all(
    processes: Iterable[subprocess.Popen[bytes]], grace: float, sig: int = signal.SIGTERM
) -> None:
    """``sig`` to every process still running, then one deadline of ``grace`` seconds for
    all of them together; what is left then is killed."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(sig)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def tail(log: Path | None, offset: int = 0, chars: int = TAIL_CHARS) -> str:
    """The end of what a process wrote to ``log`` after ``offset`` bytes."""
    if log is None or not log.exists():
        return ""
    with log.open("rb") as source:
        source.seek(offset)
        return source.read().decode(errors="replace")[-chars:]


class Starts:
    """``start()`` / ``start_blocking()`` over one generator, ``_starting()``, that starts
    the process and yields while it is not ready yet (raising when it never will be)."""

    def _starting(self) -> Iterator[None]:
        raise NotImplementedError

    async def start(self) -> float:
        """Start, and wait until ready; returns the wall-clock instant it was."""
        for _ in self._starting():
            await asyncio.sleep(POLL_SECONDS)
        return time.time()

    def start_blocking(self) -> float:
        for _ in self._starting():
            time.sleep(POLL_SECONDS)
        return time.time()


@dataclass
class WorkerProcess(Starts):
    """``worker.py`` (or ``argv``) as its own process, configured by ``env`` only; ready
    when it logs "worker started". Each start logs to its own file in ``workdir``; it can
    be killed and started again."""

    workdir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    argv: list[str] = field(default_factory=lambda: [sys.executable, "worker.py"])
    name: str = "worker"
    ready_seconds: float = 90

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def _starting(self) -> Iterator[None]:
        self.starts += 1
        log = self.log
        process = self.process = spawn(self.argv, log, self.env)
        deadline = time.monotonic() + self.ready_seconds
        while b'"worker started"' not in log.read_bytes():
            if process.poll() is not None:
                raise HarnessError(f"{self.name} exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"timed out after {self.ready_seconds:.0f} s waiting for the {self.name}'s"
                    f" start:\n{tail(log)}"
                )
            yield

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            terminate(self.process, sig)


@dataclass
class ServiceProcess(Starts):
    """The HTTP service (``python -m service``) with ``env`` on ``port`` (a free one by
    default); ready when it listens (it connects to Temporal before it listens)."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    ready_seconds: float = 60

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _starting(self) -> Iterator[None]:
        env = {**self.env, "SUPPORT_HTTP_PORT": str(self.port)}
        process = self.process = spawn([sys.executable, "-m", "service"], self.log, env)
        deadline = time.monotonic() + self.ready_seconds
        while not listening_by(process.pid, self.port):
            if process.poll() is not None:
                raise HarnessError(
                    f"the HTTP service exited with {process.returncode}:\n{tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"the HTTP service did not listen on :{self.port} within"
                    f" {self.ready_seconds:.0f} s:\n{tail(self.log)}"
                )
            yield

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)


@asynccontextmanager
async def background(
    args: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``python <args>`` as a process (output to ``log``) until the block ends."""
    process = spawn([sys.executable, *args], log, env)
    try:
        yield process
    finally:
        await asyncio.to_thread(terminate, process)


@asynccontextmanager
async def service_process(env: dict[str, str], log: Path) -> AsyncIterator[httpx.AsyncClient]:
    """``python -m service`` on a free port with ``env``; yields a client for it once it
    listens."""
    service = ServiceProcess(env, log)
    try:
        await service.start()
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            yield http
    finally:
        await asyncio.to_thread(service.stop)
