"""The intake CLI: field-level errors with exit code 2 and nothing started, batches that
report every bad line by number and still open the good ones, no duplicates."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from starter import InvalidTicket, parse_ticket, run_batch
from support import search_attributes as sa
from support.models import TicketStatus
from tests.conftest import ROOT, Stack, policy_resolved, terminate_open

GOOD = {"ticket_id": "B-1", "customer_id": "acme", "tier": "premium", "severity": "sev2"}


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "starter.py", *args],
        cwd=ROOT,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tier", "gold"], "tier: Input should be 'community', 'standard', 'premium' or"),
        (["--tier", "premium", "--severity", "sev9"], "severity: Input should be 'sev1'"),
        (["--tier", "premium", "--ticket-id", "has space"], "ticket_id: String should match"),
        (["--tier", "premium", "--reporter-email", "not-an-email"], "reporter_email:"),
        (
            ["--tier", "premium", "--opened-at", "2020-01-01T00:00:00Z"],
            "opened_at: 2020-01-01T00:00:00+00:00 is more than 30 days in the past",
        ),
        (
            ["--tier", "premium", "--opened-at", "2026-11-26T09:00:00"],
            "opened_at: must be an aware timestamp",
        ),
        (["--tier", "premium", "--subject", "x" * 201], "subject: String should have at most 200"),
    ],
)
def test_cli_rejects_bad_input_naming_the_field_with_exit_2(flags: list[str], message: str) -> None:
    base = ["open", "--ticket-id", "CLI-1", "--customer-id", "acme"]
    # No server is reachable at this address: validation must fail before any connection.
    done = run_cli(*base, *flags, env={"TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stdout == ""


def test_parse_ticket_names_every_bad_field_at_once() -> None:
    with pytest.raises(InvalidTicket) as problem:
        parse_ticket({"ticket_id": "", "tier": "gold", "colour": "red"})
    fields = sorted(p.split(":")[0] for p in problem.value.problems)
    assert fields == ["colour", "customer_id", "ticket_id", "tier"]
    assert "colour: unknown field" in problem.value.problems
    with pytest.raises(InvalidTicket, match=r"expected a JSON object, got list"):
        parse_ticket([1, 2])
    with pytest.raises(InvalidTicket, match="subject: must not contain control characters"):
        parse_ticket({**GOOD, "subject": "bell\x07"})


async def test_batch_reports_bad_lines_by_number_and_opens_the_good_ones(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_TASK_QUEUE", stack.task_queue)
    lines = [
        json.dumps({**GOOD, "ticket_id": "B-1"}),
        json.dumps({**GOOD, "ticket_id": "B-2", "tier": "platinum"}),
        "{not json",
        "",
        json.dumps({**GOOD, "ticket_id": "B-3", "tier": "standard"}),
        json.dumps({**GOOD, "ticket_id": "B-1"}),  # repeated in the same batch
    ]
    out, err = io.StringIO(), io.StringIO()
    code = await run_batch(stack.client, "\n".join(lines).encode(), out, err)
    stack.opened += ["ticket-B-1", "ticket-B-3"]
    assert code == 2
    assert "line 2: tier: Input should be" in err.getvalue()
    assert "line 3: (line): not valid JSON" in err.getvalue()
    report = out.getvalue().splitlines()
    assert "opened ticket B-1 (workflow ticket-B-1)" in report
    assert "opened ticket B-3 (workflow ticket-B-3)" in report
    assert any(r.startswith("ticket B-1 already exists") for r in report)
    assert report[-1] == "2 opened, 1 already existed, 2 invalid"
    for workflow_id in ("ticket-B-1", "ticket-B-3"):
        handle = stack.client.get_workflow_handle(workflow_id, result_type=TicketStatus)
        await policy_resolved(handle)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    with pytest.raises(RPCError):
        await stack.client.get_workflow_handle("ticket-B-2").describe()
    await terminate_open(stack)


async def test_cli_batch_from_stdin_against_the_server(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = dev_server.client.service_client.config.target_host
    queue = f"tq-{uuid.uuid4()}"
    lines = "\n".join(json.dumps({**GOOD, "ticket_id": f"S-{n}"}) for n in range(3))
    env = {"TEMPORAL_ADDRESS": address, "SUPPORT_TASK_QUEUE": queue}
    done = run_cli("batch", "-", stdin=lines, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "3 opened, 0 already existed, 0 invalid"
    for n in range(3):
        description = await dev_server.client.get_workflow_handle(f"ticket-S-{n}").describe()
        assert description.task_queue == queue
        attributes = description.typed_search_attributes
        assert (attributes.get(sa.SUPPORT_TIER), attributes.get(sa.TICKET_STATE)) == (
            "premium",
            "open",
        )
    again = run_cli("batch", "-", stdin=lines, env=env)
    assert again.returncode == 0
    assert again.stdout.splitlines()[-1] == "0 opened, 3 already existed, 0 invalid"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"ticket_id": "\xff\xfe"}\n' + lines.encode())
    done = run_cli("batch", str(bad), env=env)
    assert done.returncode == 2 and "line 1: (line): not valid UTF-8" in done.stderr
    assert done.stdout.splitlines()[-1] == "0 opened, 3 already existed, 1 invalid"
