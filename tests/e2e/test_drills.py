"""The fault drills (``drills/``) in their short form, each as its own process against the
real dev server, worker process and loopback sinks: the verdict must be PASS with nothing
lost or duplicated. The full-size runs are by hand (docs/testing.md, Fault drills).

The five drills run at once (each on its own dev server, worker, sink, ports and temporary
directory; ``ledger_outage`` on its own scratch PostgreSQL database): the first test starts
the selected tests' drills, each test waits for its own drill's verdict. ``make test``
distributes whole modules (``--dist loadscope``), so one pytest process runs them all."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url

from harness.processes import ROOT, stop_all
from tests.conftest import POSTGRES_ADMIN_URL, REQUIRE_POSTGRES

F = TypeVar("F", bound=Callable[..., Any])
pytestmark = pytest.mark.e2e

# Each drill's bound on its own run (the short forms take 20-50 s alone, a few more at once).
TIMEOUTS = {
    "worker_kill": 150,
    "server_restart": 150,
    "chat_outage": 180,
    "ledger_outage": 150,
    "races": 150,
}


def postgres_reachable() -> bool:
    url = make_url(POSTGRES_ADMIN_URL)
    with socket.socket() as sock:
        sock.settimeout(3)
        return sock.connect_ex((url.host or "127.0.0.1", url.port or 5432)) == 0


@dataclass
class Drill:
    """``python -m drills.<module> --short`` running, its stdout and stderr in files."""

    module: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    deadline: float

    def verdict(self) -> str:
        """Wait for the drill; its verdict line (the stderr's end in the failure message)."""
        try:
            self.process.wait(timeout=max(0.1, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_all([self.process], grace=30, sig=signal.SIGINT)  # it stops its stack
            pytest.fail(f"drills.{self.module} still running after {TIMEOUTS[self.module]} s")
        lines = self.stdout.read_text(errors="replace").strip().splitlines()
        verdict = lines[-1] if lines else ""
        problems = self.stderr.read_text(errors="replace")[-4000:]
        assert self.process.returncode == 0 and " PASS " in verdict, f"{verdict}\n{problems}"
        return verdict


@dataclass
class Drills:
    """The drills of this module's tests: started at once by ``start_all``, or each when
    its test asks for its verdict."""

    directory: Path
    running: dict[str, Drill] = field(default_factory=dict)

    def start(self, module: str) -> None:
        stdout, stderr = self.directory / f"{module}.out", self.directory / f"{module}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", f"drills.{module}", "--short"],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + TIMEOUTS[module]
        self.running[module] = Drill(module, process, stdout, stderr, deadline)

    def verdict(self, module: str) -> str:
        if module not in self.running:
            self.start(module)
        return self.running[module].verdict()

    def stop(self) -> None:
        """Whatever is still running (a test that failed early) is stopped."""
        stop_all([d.process for d in self.running.values()], grace=30, sig=signal.SIGINT)


def drill(module: str) -> Callable[[F], F]:
    """Names the drill a test checks (the fixture starts the selected tests' drills)."""

    def mark(test: F) -> F:
        test.drill = module  # type: ignore[attr-defined]
        return test

    return mark


def whole_modules(config: pytest.Config) -> bool:
    """Whether this process runs every selected test of a module: no pytest-xdist, or
    pytest-xdist handing out whole modules (``--dist loadscope`` / ``loadfile``, as
    ``make test`` does). Otherwise another process may run some of these tests, and
    starting their drills here would run them twice."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return True
    argv = " ".join(workerinput["mainargv"]).replace("=", " ")
    return any(f"--dist {mode}" in argv for mode in ("loadscope", "loadfile"))


@pytest.fixture(scope="module")
def drills(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drills]:
    """The selected tests' drills, started at once when this process runs them all
    (ledger_outage only when PostgreSQL answers); else each drill starts when its test
    runs. Whatever is still running when the module ends is stopped."""
    started = Drills(tmp_path_factory.mktemp("drills"))
    if whole_modules(request.config):
        selected = {
            getattr(item.function, "drill", None)  # type: ignore[attr-defined]
            for item in request.session.items
            if item.module is request.module  # type: ignore[attr-defined]
        }
        for module in TIMEOUTS:
            if module in selected and (module != "ledger_outage" or postgres_reachable()):
                started.start(module)
    try:
        yield started
    finally:
        started.stop()


def figures(verdict: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in verdict.split() if "=" in part)


def passed(drills: Drills, module: str) -> dict[str, str]:
    """The figures of ``drills.<module> --short``, once its verdict line says PASS and that
    nothing was lost or duplicated (problems in the failure message)."""
    verdict = drills.verdict(module)
    found = figures(verdict)
    assert verdict.startswith(f"DRILL {module.replace('_', '-')}: PASS")
    assert found["lost"] == "0" and found["duplicated"] == "0"
    return found


@drill("worker_kill")
def test_worker_kill_loses_and_duplicates_no_escalation(drills: Drills) -> None:
    found = passed(drills, "worker_kill")
    assert found["delivered"] == found["escalations"]
    assert int(found["overdue_at_restart"]) > 0


@drill("server_restart")
def test_server_restart_resumes_every_ticket_and_fires_missed_timers(
    drills: Drills,
) -> None:
    found = passed(drills, "server_restart")
    assert found["restarts"] == "term+kill"
    assert int(found["due_while_down"]) > 0


@drill("chat_outage")
def test_chat_outage_retries_then_falls_over_once_per_key(drills: Drills) -> None:
    found = passed(drills, "chat_outage")
    assert int(found["fell_over"]) > 0 and int(found["retried"]) > 0


@drill("ledger_outage")
def test_ledger_outage_writes_every_event_once_when_it_returns(
    drills: Drills,
) -> None:
    if not postgres_reachable():
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is required (CI) but unreachable")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    found = passed(drills, "ledger_outage")
    assert int(found["written_late"]) > 0


@drill("races")
def test_races_give_one_outcome_per_ticket_and_clear_refusals(drills: Drills) -> None:
    found = passed(drills, "races")
    done, total = found["refused_ok"].split("/")
    assert done == total
    # The races happened: acks landed on both sides of the deadline, and API calls got
    # through while racing each other (the raw signals usually overtake them: 409s).
    assert int(found["met"]) > 0
    assert int(found["breached_notified"]) + int(found["breached_unnotified"]) > 0
    assert int(found["api_200"]) > 0
