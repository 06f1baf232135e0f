"""The fault drills (``drills/``) in their short form, each as its own process against the
real dev server, worker process and loopback sinks: the verdict must be PASS with nothing
lost or duplicated. The full-size runs are by hand (see the README's Fault drills)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from harness.processes import ROOT
from tests.conftest import POSTGRES_ADMIN_URL, REQUIRE_POSTGRES


def run_drill(module: str, timeout: float) -> str:
    """Run ``python -m drills.<module> --short``; its verdict line (problems in the failure
    message)."""
    done = subprocess.run(
        [sys.executable, "-m", f"drills.{module}", "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    verdict = lines[-1] if lines else ""
    assert done.returncode == 0 and " PASS " in verdict, f"{verdict}\n{done.stderr[-4000:]}"
    return verdict


def figures(verdict: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in verdict.split() if "=" in part)


@pytest.mark.e2e
def test_worker_kill_loses_and_duplicates_no_escalation() -> None:
    verdict = run_drill("worker_kill", timeout=150)
    found = figures(verdict)
    assert verdict.startswith("DRILL worker-kill: PASS")
    assert found["lost"] == "0" and found["duplicated"] == "0"
    assert found["delivered"] == found["escalations"]
    assert int(found["overdue_at_restart"]) > 0


@pytest.mark.e2e
def test_server_restart_resumes_every_ticket_and_fires_missed_timers() -> None:
    verdict = run_drill("server_restart", timeout=150)
    found = figures(verdict)
    assert verdict.startswith("DRILL server-restart: PASS")
    assert found["lost"] == "0" and found["duplicated"] == "0"
    assert found["restarts"] == "term+kill"
    assert int(found["due_while_down"]) > 0


@pytest.mark.e2e
def test_chat_outage_retries_then_falls_over_once_per_key() -> None:
    verdict = run_drill("chat_outage", timeout=180)
    found = figures(verdict)
    assert verdict.startswith("DRILL chat-outage: PASS")
    assert found["lost"] == "0" and found["duplicated"] == "0"
    assert int(found["fell_over"]) > 0 and int(found["retried"]) > 0


def postgres_reachable() -> bool:
    url = make_url(POSTGRES_ADMIN_URL)
    with socket.socket() as sock:
        sock.settimeout(3)
        return sock.connect_ex((url.host or "127.0.0.1", url.port or 5432)) == 0


@pytest.mark.e2e
def test_ledger_outage_writes_every_event_once_when_it_returns() -> None:
    if not postgres_reachable():
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is required (CI) but unreachable")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    verdict = run_drill("ledger_outage", timeout=150)
    found = figures(verdict)
    assert verdict.startswith("DRILL ledger-outage: PASS")
    assert found["lost"] == "0" and found["duplicated"] == "0"
    assert int(found["written_late"]) > 0


@pytest.mark.e2e
def test_races_give_one_outcome_per_ticket_and_clear_refusals() -> None:
    verdict = run_drill("races", timeout=150)
    found = figures(verdict)
    assert verdict.startswith("DRILL races: PASS")
    assert found["lost"] == "0" and found["duplicated"] == "0"
    done, total = found["refused_ok"].split("/")
    assert done == total
    # The races happened: acks landed on both sides of the deadline, and API calls got
    # through while racing each other (the raw signals usually overtake them: 409s).
    assert int(found["met"]) > 0
    assert int(found["breached_notified"]) + int(found["breached_unnotified"]) > 0
    assert int(found["api_200"]) > 0
