"""End to end through the public contract only: raw JSON and the ``temporal`` CLI binary.

A client in another language sees exactly this: the real dev server (SQLite, the contract's
search attributes), ``worker.py`` as its own process, and nothing but workflow type, task
queue, workflow id, signal / query names and snake_case JSON. The premium tier's response
target is shortened to 20 s in a copied policy file so the SLA clock runs in real time.
"""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness import processes
from harness.policy import write_policy
from harness.processes import clean_env, eventually_blocking
from harness.temporal import TEMPORAL, DevServer

TICKET_ID = "E2E-1"
WORKFLOW_ID = f"ticket-{TICKET_ID}"
RESPONSE_TARGET_S = 20
CLI_EVERY = 0.25  # each probe runs the temporal CLI
TICKET_JSON = json.dumps(
    {
        "ticket_id": TICKET_ID,
        "customer_id": "acme",
        "tier": "premium",
        "severity": "sev2",
        "subject": "API returns 500 on /orders",
        "category": "incident",
        "reporter_email": "ops@acme.example",
        "intake_channel": "api",
    }
)

T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------


def short_policy(directory: Path) -> Path:
    """The shipped policy with the premium tier's response target cut to 20 s (its warning
    at half of it: 10 s; repeats every minute), and Mission Critical's to the same (a
    higher tier is never slower: the policy's own rule)."""
    target = f"PT{RESPONSE_TARGET_S}S"

    def shorten(data: dict[str, Any]) -> None:
        premium = data["tiers"]["premium"]
        critical = data["tiers"]["mission_critical"]
        sev1 = critical["severities"]["sev1"]
        assert premium["response_target"] == "PT1H"
        assert premium["ladder"][-1]["repeat_every"] == "PT30M"
        [warning] = [step for step in premium["ladder"] if step["name"] == "warning"]
        assert warning["at"] == {"share": 0.5}  # the warning falls due at half the target
        premium["response_target"] = critical["response_target"] = sev1["response_target"] = target
        premium["ladder"][-1]["repeat_every"] = "PT1M"
        [sev1_warning] = [step for step in sev1["ladder"] if step["name"] == "warning"]
        assert sev1_warning["at"] == {"offset": "PT10M"}
        sev1_warning["at"] = {"offset": "PT10S"}

    return write_policy(directory, shorten)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def search_attributes(execution: dict[str, Any]) -> dict[str, Any]:
    """Decode ``temporal workflow list -o json`` search attributes (base64 JSON payloads)."""
    fields = execution.get("searchAttributes", {}).get("indexedFields", {})
    return {name: json.loads(base64.b64decode(payload["data"])) for name, payload in fields.items()}


@dataclass
class Cli:
    """The ``temporal`` binary pointed at one server; output parsed from ``-o json``."""

    address: str

    def run(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TEMPORAL), *args, "--address", self.address],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            check=False,
        )

    def json(self, *args: str, timeout: float = 20) -> Any:
        done = self.run(*args, "--output", "json", timeout=timeout)
        assert done.returncode == 0, f"temporal {' '.join(args)}: {done.stderr}{done.stdout}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def start(
        self, queue: str, workflow_id: str, ticket_json: str, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        """``temporal workflow start`` of a ``SupportTicket`` with raw JSON input."""
        return self.run(
            "workflow",
            "start",
            "--type",
            "SupportTicket",
            "--task-queue",
            queue,
            "--workflow-id",
            workflow_id,
            "--input",
            ticket_json,
            *extra,
        )

    def start_ticket(self, queue: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.start(
            queue,
            WORKFLOW_ID,
            TICKET_JSON,
            "--id-reuse-policy",
            "RejectDuplicate",
            "--output",
            "json",
            *extra,
        )

    def start_raw(self, queue: str, ticket: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """A raw start of another ticket: no intake path in between."""
        return self.start(queue, f"ticket-{ticket['ticket_id']}", json.dumps(ticket))

    def status(self, workflow_id: str = WORKFLOW_ID) -> dict[str, Any] | None:
        """The ``status`` query, or None while the ticket cannot answer yet."""
        done = self.run(
            "workflow",
            "query",
            "--workflow-id",
            workflow_id,
            "--name",
            "status",
            "--output",
            "json",
        )
        if done.returncode != 0:
            return None
        result = json.loads(done.stdout)["queryResult"]
        return result[0] if isinstance(result, list) else result

    def status_with_step(self, step: str) -> dict[str, Any] | None:
        """The ``status`` query once the ticket has escalated ``step``; None before."""
        status = self.status()
        if status and any(e["step"] == step for e in status["escalations"] or []):
            return status
        return None

    def list(self, query: str) -> list[dict[str, Any]]:
        return self.json("workflow", "list", "--query", query) or []


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def temporal_server(tmp_path: Path) -> Iterator[str]:
    """``temporal server start-dev`` on free ports with a SQLite file; yields its address."""
    server = DevServer(tmp_path, startup_seconds=30)
    try:
        server.start_blocking()
        yield server.address
    finally:
        server.stop()


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    queue: str
    log: Path
    ledger: Path

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if line]


@pytest.fixture
def worker_process(temporal_server: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """``worker.py`` as its own process, with a short premium SLA and its own ledger."""
    policy = short_policy(tmp_path)
    queue = f"e2e-{uuid.uuid4()}"
    ledger = tmp_path / "ledger.sqlite3"
    env = clean_env(
        TEMPORAL_ADDRESS=temporal_server,
        SUPPORT_TASK_QUEUE=queue,
        SUPPORT_LEDGER_URL=f"sqlite:///{ledger}",
        SUPPORT_POLICY_FILE=str(policy),
        PYTHONUNBUFFERED="1",
    )
    worker = processes.WorkerProcess(tmp_path, env, ready_seconds=20)
    try:
        worker.start_blocking()
        assert worker.process is not None
        yield WorkerProcess(worker.process, queue, worker.log, ledger)
    finally:
        worker.stop()


# --- the test ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_ticket_lifecycle_through_cli_and_raw_json(
    temporal_server: str, worker_process: WorkerProcess
) -> None:
    cli = Cli(temporal_server)
    queue = worker_process.queue

    # Intake: raw JSON input, snake_case fields of the contract.
    first = cli.start_ticket(queue)
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["runId"]

    # The same start again must not create a second ticket. CLI 1.9.1 reports the running
    # execution (exit 0, same run id) unless --fail-existing is given; either way, no new run.
    again = cli.start_ticket(queue)
    if again.returncode == 0:
        assert json.loads(again.stdout)["runId"] == run_id, again.stdout
    else:
        assert "already" in (again.stderr + again.stdout).lower(), again.stderr
    refused = cli.start_ticket(queue, "--fail-existing")
    assert refused.returncode != 0, refused.stdout
    assert "already running" in (refused.stderr + refused.stdout).lower(), refused.stderr
    executions = cli.list(f'WorkflowId="{WORKFLOW_ID}"')
    assert [e["execution"]["runId"] for e in executions] == [run_id]

    # Open, with the 20 s response target computed from the open time, intake notified.
    status = eventually_blocking(
        "the ticket to be open with its intake escalation",
        partial(cli.status_with_step, "intake"),
        15,
        every=CLI_EVERY,
    )
    assert status["ticket_id"] == TICKET_ID
    assert status["state"] == "open"
    assert status["tier"] == "premium" and status["severity"] == "sev2"
    assert status["response_target"] == f"PT{RESPONSE_TARGET_S}S"
    due = (at(status["response_due_at"]) - at(status["opened_at"])).total_seconds()
    assert abs(due - RESPONSE_TARGET_S) < 0.5, status
    intake = next(e for e in status["escalations"] if e["step"] == "intake")
    assert intake["kind"] == "intake"
    assert set(intake["targets"]) == {"support-queue", "duty-engineer"}
    assert status["response_breached"] is False
    assert status["next_step"] == "warning"

    # The warning falls due at half the target (10 s) and fires on the real clock.
    status = eventually_blocking(
        "the warning at 50 % of the target",
        partial(cli.status_with_step, "warning"),
        RESPONSE_TARGET_S,
        every=CLI_EVERY,
    )
    warning = next(e for e in status["escalations"] if e["step"] == "warning")
    assert warning["kind"] == "warning"
    warning_offset = (at(warning["due_at"]) - at(status["opened_at"])).total_seconds()
    assert abs(warning_offset - RESPONSE_TARGET_S / 2) < 0.5, warning
    assert at(warning["fired_at"]) >= at(warning["due_at"])
    assert status["state"] == "open" and status["response_breached"] is False

    # Acknowledge before the 20 s target: in time.
    ack = cli.run(
        "workflow",
        "signal",
        "--workflow-id",
        WORKFLOW_ID,
        "--name",
        "acknowledge",
        "--input",
        json.dumps({"agent": "e2e-agent"}),
    )
    assert ack.returncode == 0, ack.stderr

    def acknowledged() -> dict[str, Any] | None:
        status = cli.status()
        return status if status and status["state"] == "acknowledged" else None

    status = eventually_blocking("state acknowledged", acknowledged, 10, every=CLI_EVERY)
    assert status["acknowledged_by"] == "e2e-agent"
    assert status["response_breached"] is False
    assert status["breached_at"] is None
    assert at(status["acknowledged_at"]) < at(status["response_due_at"])
    assert status["next_step"] is None

    # Resolve; the workflow completes with the final status as its JSON result.
    resolve = cli.run(
        "workflow",
        "signal",
        "--workflow-id",
        WORKFLOW_ID,
        "--name",
        "resolve",
        "--input",
        json.dumps({"by": "e2e-agent", "summary": "fixed"}),
    )
    assert resolve.returncode == 0, resolve.stderr
    outcome = cli.json("workflow", "result", "--workflow-id", WORKFLOW_ID, timeout=30)
    assert outcome["status"] == "COMPLETED", outcome
    result = outcome["result"]
    result = result[0] if isinstance(result, list) else result
    assert result["ticket_id"] == TICKET_ID
    assert result["state"] == "resolved"
    assert result["resolved_by"] == "e2e-agent"
    assert result["acknowledged_by"] == "e2e-agent"
    assert result["response_breached"] is False
    assert [h["kind"] for h in result["history"]][-2:] == ["acknowledged", "resolved"]
    assert result["history"][-1]["detail"] == "fixed"
    assert not any(e["kind"] in ("breach", "repeat") for e in result["escalations"])

    # Search attributes: ops find the resolved premium ticket (visibility may lag).
    def listed() -> list[dict[str, Any]]:
        found = cli.list('TicketState="resolved" AND SupportTier="premium"')
        return [e for e in found if e["execution"]["workflowId"] == WORKFLOW_ID]

    [execution] = eventually_blocking(
        "the ticket in visibility as resolved / premium", listed, 10, every=CLI_EVERY
    )
    assert execution["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    attributes = search_attributes(execution)
    assert attributes["TicketState"] == "resolved"
    assert attributes["SupportTier"] == "premium"
    assert attributes["SupportSeverity"] == "sev2"
    assert attributes["CustomerId"] == "acme"
    assert attributes["SlaBreached"] is False
    assert at(attributes["ResponseDueAt"]) == at(result["response_due_at"])

    # The closed ticket's id is not reused either (RejectDuplicate): still one execution.
    closed = cli.start_ticket(queue)
    assert closed.returncode != 0 or json.loads(closed.stdout)["runId"] == run_id, closed
    closed = cli.start_ticket(queue, "--fail-existing")
    assert closed.returncode != 0, closed.stdout
    assert "reject duplicate" in closed.stderr.lower(), closed.stderr
    executions = cli.list(f'WorkflowId="{WORKFLOW_ID}"')
    assert [e["execution"]["runId"] for e in executions] == [run_id]

    # Raw starts are trusted with the tier they claim, except against a contract: a
    # contracted customer runs at its contracted tier and the ticket records the correction.
    for ticket_id, customer, claimed, runs_at in [
        ("E2E-BANK", "example-bank", "premium", "mission_critical"),
        ("E2E-INITECH", "initech", "standard", "standard"),
    ]:
        raw = {"ticket_id": ticket_id, "customer_id": customer, "tier": claimed}
        started = cli.start_raw(queue, raw)
        assert started.returncode == 0, started.stderr
        raw_status = eventually_blocking(
            f"{ticket_id}'s status",
            lambda t=ticket_id: cli.status(f"ticket-{t}"),
            15,
            every=CLI_EVERY,
        )
        assert raw_status["tier"] == runs_at, raw_status
        corrected = (raw_status["claimed_tier"], raw_status["entitlement"])
        if claimed == runs_at:
            assert corrected == (None, None)
        else:
            assert corrected == (claimed, f"contract {customer}")
            assert "tier_corrected" in [h["kind"] for h in raw_status["history"]]
        cli.run("workflow", "terminate", "--workflow-id", f"ticket-{ticket_id}")

    # Clean shutdown on SIGTERM: exit code 0 within 15 s.
    worker_process.process.send_signal(signal.SIGTERM)
    try:
        code = worker_process.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("worker.py did not stop within 15 s of SIGTERM")
    assert code == 0, "\n".join(worker_process.lines()[-20:])

    # The worker logs JSON lines, with the ticket id on the ticket's records.
    lines = worker_process.lines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"worker stderr line is not JSON: {line!r}")
    ticket_records = [r for r in records if r.get("ticket_id") == TICKET_ID]
    assert ticket_records, "no worker log line carries the ticket id"
    assert any(r.get("workflow_id") == WORKFLOW_ID for r in ticket_records)
    assert any(r.get("event") == "worker stopped" for r in records)

    # The SLA ledger (system of record) has the ticket's events.
    with closing(sqlite3.connect(worker_process.ledger)) as conn:
        rows = conn.execute(
            "SELECT key, ticket_id, kind FROM sla_events WHERE ticket_id = ? ORDER BY id",
            (TICKET_ID,),
        ).fetchall()
    kinds = [kind for _, _, kind in rows]
    assert {"opened", "notified", "warned", "acknowledged", "resolved"} <= set(kinds), rows
    assert "breached" not in kinds
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert all(key.startswith(f"{WORKFLOW_ID}/") for key in keys)
