"""The intake CLI over the intake core: field-level errors with exit code 2 and nothing
started (a tier the contract does not give included), exit 1 while the policy cannot be
loaded, batches that report every bad line by number and still open the good ones, no
duplicates, the policy's default severity, the promise on each opened line."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from contract import search_attributes as sa
from contract.models import TicketStatus
from harness.policy import write_policy
from intake.core import InvalidTicket, parse_ticket
from starter import run_batch
from tests.conftest import (
    ROOT,
    Stack,
    now_second,
    policy_resolved,
    status_of,
    terminate_open,
)

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


NO_SERVER = {"TEMPORAL_ADDRESS": "127.0.0.1:1"}  # refusals come before any connection


def test_cli_refuses_a_tier_the_customers_contract_does_not_give_with_exit_2() -> None:
    base = ["open", "--ticket-id", "CLI-2", "--customer-id", "example-bank"]
    done = run_cli(*base, "--tier", "premium", env=NO_SERVER)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: tier: customer 'example-bank' has a mission_critical contract; open the ticket"
        " at mission_critical (or leave tier out), not premium"
    ]
    assert done.stdout == ""


def test_cli_refuses_an_intake_channel_the_contract_did_not_agree(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path, lambda p: p["customers"]["example-bank"].update(intake_channels=["email"])
    )
    base = ["open", "--ticket-id", "CLI-3", "--customer-id", "example-bank"]
    done = run_cli(*base, env=NO_SERVER | {"SUPPORT_POLICY_FILE": str(policy)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: intake_channel: customer 'example-bank' has agreed to open tickets through"
        " email, not api"
    ]


def test_cli_exits_1_naming_the_problem_while_the_policy_cannot_be_loaded(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [\n")
    env = NO_SERVER | {"SUPPORT_POLICY_FILE": str(broken)}
    done = run_cli("open", "--ticket-id", "CLI-4", "--customer-id", "acme", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"error: the support policy is unavailable: {broken}: not valid YAML"
    )
    assert done.stderr.rstrip().endswith("; nothing was opened")
    done = run_cli("batch", "-", stdin=json.dumps(GOOD), env=env)
    assert done.returncode == 1 and "the support policy is unavailable" in done.stderr
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
    t0 = await now_second(stack.env)
    lines = [
        json.dumps({**GOOD, "ticket_id": "B-1", "opened_at": t0.isoformat()}),
        json.dumps({**GOOD, "ticket_id": "B-2", "tier": "platinum"}),
        "{not json",
        "",
        json.dumps({**GOOD, "ticket_id": "B-3", "tier": "standard"}),
        json.dumps({**GOOD, "ticket_id": "B-1"}),  # repeated in the same batch
        json.dumps({**GOOD, "ticket_id": "B-4", "customer_id": "example-bank"}),
    ]
    out, err = io.StringIO(), io.StringIO()
    code = await run_batch(stack.client, "\n".join(lines).encode(), out, err)
    stack.opened += ["ticket-B-1", "ticket-B-3"]
    assert code == 2
    assert "line 2: tier: Input should be" in err.getvalue()
    assert "line 3: (line): not valid JSON" in err.getvalue()
    assert "line 7: tier: customer 'example-bank' has a mission_critical contract" in err.getvalue()
    report = out.getvalue().splitlines()
    due = (t0 + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert f"opened ticket B-1 (workflow ticket-B-1): premium sev2, response due {due}" in report, (
        "each opened line tells the promise"
    )
    assert any(
        r.startswith("opened ticket B-3 (workflow ticket-B-3): standard sev2") for r in report
    )
    assert any(r.startswith("ticket B-1 already exists") for r in report)
    assert report[-1] == "2 opened, 1 already existed, 3 invalid"
    for workflow_id in ("ticket-B-1", "ticket-B-3"):
        handle = stack.client.get_workflow_handle(workflow_id, result_type=TicketStatus)
        await policy_resolved(handle)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    with pytest.raises(RPCError):
        await stack.client.get_workflow_handle("ticket-B-2").describe()
    await terminate_open(stack)


async def test_cli_batch_from_stdin_against_the_server(
    stack: Stack, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = dev_server.client.service_client.config.target_host
    # The test's worker runs them: a repeated batch reads each existing ticket's status
    # (unanswered, it would wait 3 s for each).
    queue = stack.task_queue
    lines = "\n".join(json.dumps({**GOOD, "ticket_id": f"S-{n}"}) for n in range(3))
    env = {"TEMPORAL_ADDRESS": address, "SUPPORT_TASK_QUEUE": queue}
    # In a thread: the test's worker runs on this event loop and must answer meanwhile.
    done = await asyncio.to_thread(run_cli, "batch", "-", stdin=lines, env=env)
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
    again = await asyncio.to_thread(run_cli, "batch", "-", stdin=lines, env=env)
    assert again.returncode == 0
    assert again.stdout.splitlines()[-1] == "0 opened, 3 already existed, 0 invalid"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"ticket_id": "\xff\xfe"}\n' + lines.encode())
    done = await asyncio.to_thread(run_cli, "batch", str(bad), env=env)
    assert done.returncode == 2 and "line 1: (line): not valid UTF-8" in done.stderr
    assert done.stdout.splitlines()[-1] == "0 opened, 3 already existed, 1 invalid"
    for n in range(3):
        await dev_server.client.get_workflow_handle(f"ticket-S-{n}").terminate("test finished")


async def test_the_policys_default_severity_applies_to_open_and_batch(
    stack: Stack, dev_server: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(tmp_path, lambda p: p.update(default_severity="sev2"))
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    # open, as its own process against the dev server: the severity it starts with.
    address = dev_server.client.service_client.config.target_host
    env = {"TEMPORAL_ADDRESS": address, "SUPPORT_TASK_QUEUE": f"tq-{uuid.uuid4()}"}
    ticket_id = f"D-{uuid.uuid4().hex[:8]}"
    done = run_cli("open", "--ticket-id", ticket_id, "--customer-id", "example-bank", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"opened ticket {ticket_id} (workflow ticket-{ticket_id}): mission_critical sev2,"
        " tier from contract example-bank, response due "
    )
    handle = dev_server.client.get_workflow_handle(f"ticket-{ticket_id}")
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.SUPPORT_SEVERITY) == "sev2"
    await handle.terminate(reason="test finished")
    # batch, in this process against the test's worker: the ticket runs at it.
    monkeypatch.setenv("SUPPORT_TASK_QUEUE", stack.task_queue)
    line = json.dumps({"ticket_id": "DB-1", "customer_id": "acme", "tier": "premium"})
    out, err = io.StringIO(), io.StringIO()
    assert await run_batch(stack.client, line.encode(), out, err) == 0, err.getvalue()
    stack.opened.append("ticket-DB-1")
    handle = stack.client.get_workflow_handle("ticket-DB-1", result_type=TicketStatus)
    await policy_resolved(handle)
    assert (await status_of(handle)).severity.value == "sev2"
    await terminate_open(stack)
