"""The record stays true (issue 13, workflow side), on the time-skipping server with exact
instants: agent actions as Updates, a status planned before its first answer, stamped
acknowledgements, entitlement, default severity, out of scope without a clock, deliveries
an acknowledgement makes moot, re-triage and customer replies that reach people, policy
failures that keep the last good plan, and a failed statement of work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowQueryFailedError, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from contract import search_attributes as sa
from contract.models import (
    Acknowledge,
    AdoptPolicy,
    AgentReply,
    ChangeSeverity,
    CustomerReply,
    MarkOutOfScope,
    Resolve,
    SowOutcome,
    TicketInput,
    TicketOutcome,
    TicketState,
    TicketStatus,
)
from harness.policy import write_policy
from harness.processes import eventually
from policy.schema import POLICY_FILE_ENV
from starter import open_ticket
from tests.conftest import (
    Stack,
    advance_to,
    now_second,
    open_now,
    open_ticket_at,
    skip,
    status_of,
    ticket,
    time_skipping,
    until_status,
)
from tests.workflow.failing_sow import FailingStatementOfWork
from tests.workflow.fakes import FakeActivities
from worker import worker_with
from workflows.ticket import SupportTicket

H, M, S = timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)


@pytest_asyncio.fixture(loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test here (it starts in well under a second): these tests
    end with statements of work, cancelled deliveries and raw starts in every state, and a
    test must not find the clock that another left locked."""
    async with time_skipping() as environment:
        yield environment


def kinds(status: TicketStatus) -> list[str]:
    return [entry.kind for entry in status.history]


async def raw_start(stack: Stack, data: TicketInput) -> WorkflowHandle[Any, TicketStatus]:
    """Start the workflow as a client in any language would: no intake checks."""
    handle = await stack.client.start_workflow(
        "SupportTicket",
        data,
        id=data.workflow_id,
        task_queue=stack.task_queue,
        result_type=TicketStatus,
    )
    stack.opened.append(data.workflow_id)
    return handle


async def sow_started(stack: Stack, handle: WorkflowHandle[Any, TicketStatus]) -> None:
    """Wait until the statement-of-work child runs (a ``mark_out_of_scope`` update answers
    before it starts; the test's clean-up must find it to terminate it first)."""
    child = stack.client.get_workflow_handle(f"sow-{handle.id.removeprefix('ticket-')}")
    await eventually(f"{child.id} to start", child.describe, every=0.02, ignoring=RPCError)


# --- agent actions as Updates ----------------------------------------------------------------


async def test_an_acknowledge_update_answers_with_the_status_after_it_and_a_second_is_refused(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 10 * M)
    after = await handle.execute_update(
        "acknowledge", Acknowledge(agent="alice", at=t0 + 9 * M), result_type=TicketStatus
    )
    assert after.state is TicketState.ACKNOWLEDGED
    assert (after.acknowledged_by, after.acknowledged_at) == ("alice", t0 + 9 * M)
    # Processed when the update arrived (the test server's clock runs on in real time).
    assert after.acknowledged_received_at is not None
    assert t0 + 10 * M <= after.acknowledged_received_at < t0 + 10 * M + S
    assert not after.response_breached

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("acknowledge", Acknowledge(agent="bob"))
    message = str(refused.value.cause)
    assert "cannot acknowledge" in message and "acknowledged (by alice" in message
    # The validator refused it before it reached the history: nothing was recorded.
    history = await handle.fetch_history()
    updates = [
        e
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(updates) == 1
    assert "acknowledge_repeated" not in kinds(await status_of(handle))
    await handle.execute_update("resolve", Resolve(by="alice"))
    assert (await handle.result()).state is TicketState.RESOLVED


async def test_a_severity_change_update_answers_with_the_new_severity_and_deadline_together(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev3"))
    assert (await status_of(handle)).response_due_at == t0 + H
    await advance_to(stack.env, t0 + 5 * M)
    after = await handle.execute_update(
        "change_severity",
        ChangeSeverity(severity="sev1", by="triage", reason="outage"),
        result_type=TicketStatus,
    )
    assert (after.severity.value, after.response_due_at) == ("sev1", t0 + 15 * M)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("change_severity", ChangeSeverity(severity="sev1", by="x"))
    assert "already sev1" in str(refused.value.cause)
    routed = await handle.execute_update(
        "mark_out_of_scope", MarkOutOfScope(by="erin", reason="feature"), result_type=TicketStatus
    )
    # The update answers once routed, not when the statement of work is decided.
    assert routed.state is TicketState.ROUTED_TO_SOW and routed.out_of_scope
    await sow_started(stack, handle)


# --- a status is never half-applied ---------------------------------------------------------


async def test_a_ticket_whose_policy_cannot_load_has_no_status_until_it_is_planned(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: broken\ntiers: [\n")
    monkeypatch.setenv(POLICY_FILE_ENV, str(policy))
    env = stack.env
    t0 = await now_second(env)
    data = ticket(opened_at=t0)
    await open_ticket(stack.client, data, stack.task_queue)
    stack.opened.append(data.workflow_id)
    handle = stack.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
    said = ""
    for _ in range(20):
        try:
            await status_of(handle)
            raise AssertionError("a ticket without a plan answered with a status")
        except WorkflowQueryFailedError as err:  # no half-planned status
            said = str(err)
        if "not valid YAML" in said:
            break
        await skip(env, 30 * S)
    assert "still planning its SLA" in said and "not valid YAML" in said, said
    write_policy(tmp_path, lambda p: None)  # the default policy, fixed
    await skip(env, 5 * M)
    status = await status_of(handle)
    assert status.response_due_at == t0 + H and status.policy_version is not None


# --- entitlement and default severity (raw starts) ------------------------------------------


async def test_a_raw_start_claiming_another_tier_runs_at_the_contracted_tier(stack: Stack) -> None:
    t0 = await now_second(stack.env)
    data = ticket(customer_id="example-bank", tier="community", severity="sev1")
    handle = await open_ticket_at(stack, data, t0)
    status = await status_of(handle)
    assert status.tier.value == "mission_critical"
    assert (status.claimed_tier.value if status.claimed_tier else None) == "community"
    assert status.entitlement == "contract example-bank"
    assert status.response_due_at == t0 + 15 * M
    assert "tier_corrected" in kinds(status)
    description = await handle.describe()
    assert description.typed_search_attributes.get(sa.SUPPORT_TIER) == "mission_critical"


async def test_a_raw_start_without_severity_gets_the_policys_default(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(tmp_path, lambda p: p.update(default_severity="sev2"))
    monkeypatch.setenv(POLICY_FILE_ENV, str(policy))
    t0 = await now_second(stack.env)
    data = TicketInput(
        ticket_id="T-default-sev", customer_id="acme", tier="mission_critical", opened_at=t0
    )
    handle = await raw_start(stack, data)
    await until_status(handle, "planned", lambda s: True)
    status = await status_of(handle)
    assert (status.severity.value, status.response_due_at) == ("sev2", t0 + H)


# --- an acknowledgement counts when it was made -----------------------------------------------


async def test_an_ack_stamped_before_the_deadline_but_processed_after_the_breach_is_in_time(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 62 * M)
    assert (await status_of(handle)).response_breached
    # The agent clicked at 59 min; the message waited out an outage of the workers.
    await handle.signal("acknowledge", Acknowledge(agent="alice", at=t0 + 59 * M))
    status = await until_status(handle, "the ack", lambda s: s.state is TicketState.ACKNOWLEDGED)
    assert status.acknowledged_at == t0 + 59 * M
    assert status.acknowledged_received_at is not None
    assert t0 + 62 * M <= status.acknowledged_received_at < t0 + 62 * M + S
    assert not status.response_breached and status.breached_at is None
    assert "breach_withdrawn" in kinds(status)

    async def acknowledged() -> dict[str, Any] | None:  # the ledger is written in the background
        events = {e.kind: e for e in await stack.ledger.events(status.ticket_id)}
        return events if "acknowledged" in events else None

    events = await eventually("the ledger's 'acknowledged' event", acknowledged, every=0.02)
    assert events["acknowledged"].at == t0 + 59 * M
    assert (
        events["acknowledged"].detail["received_at"] == status.acknowledged_received_at.isoformat()
    )


async def test_an_ack_stamp_is_never_later_than_the_workflow_clock_nor_before_opening(
    stack: Stack,
) -> None:
    t0, early = await open_now(stack, ticket())
    late = await open_ticket_at(stack, ticket(), t0)
    await advance_to(stack.env, t0 + 10 * M)
    before = await early.execute_update(
        "acknowledge", Acknowledge(agent="a", at=t0 - H), result_type=TicketStatus
    )
    assert before.acknowledged_at == t0
    after = await late.execute_update(
        "acknowledge", Acknowledge(agent="b", at=t0 + 5 * H), result_type=TicketStatus
    )
    assert after.acknowledged_at == after.acknowledged_received_at


# --- out of scope at intake has no clock ------------------------------------------------------


async def test_out_of_scope_at_intake_has_no_deadline_and_is_never_breached(stack: Stack) -> None:
    t0 = await now_second(stack.env)
    data = ticket(category="consulting", tier="premium").model_copy(
        update={"opened_at": t0 - 2 * H}
    )
    await open_ticket(stack.client, data, stack.task_queue)
    stack.opened.append(data.workflow_id)
    handle = stack.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
    status = await until_status(handle, "routed", lambda s: s.state is TicketState.ROUTED_TO_SOW)
    await sow_started(stack, handle)
    assert status.response_due_at is None and not status.response_breached
    assert not status.commercial_sla
    outcome = await stack.ledger.outcome(status.ticket_id)
    assert outcome is not None and not outcome.response_breached and not outcome.commercial_sla


async def test_marked_out_of_scope_after_a_breach_keeps_the_breach(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 61 * M)
    routed = await handle.execute_update(
        "mark_out_of_scope", MarkOutOfScope(by="erin", reason="feature"), result_type=TicketStatus
    )
    assert routed.response_breached and routed.breached_at == t0 + H
    await sow_started(stack, handle)


# --- an acknowledgement makes pending deliveries moot -----------------------------------------


async def test_an_ack_cancels_a_breach_delivery_still_retrying_and_records_it_superseded(
    stack: Stack, fakes: FakeActivities
) -> None:
    fakes.unreachable.add("duty-manager")
    env = stack.env
    t0 = await now_second(env)
    handle = await open_ticket_at(stack, ticket(), t0)
    await advance_to(env, t0 + H)
    await until_status(handle, "breach", lambda s: any(e.step == "breach" for e in s.escalations))
    # The delivery has tried and is waiting to retry.
    to_manager = f"{handle.id}/breach/duty-manager"
    await eventually("a delivery attempt", lambda: to_manager in fakes.attempts, every=0.02)
    tried = fakes.attempts.count(to_manager)
    fakes.unreachable.clear()
    status = await handle.execute_update(
        "acknowledge", Acknowledge(agent="alice"), result_type=TicketStatus
    )
    status = await until_status(
        handle,
        "the breach delivery superseded",
        lambda s: any(e.superseded_at for e in s.escalations),
    )
    breach = next(e for e in status.escalations if e.step == "breach")
    assert breach.superseded_at is not None and not breach.failed
    assert "step_superseded" in kinds(status)
    await skip(env, 10 * M)
    # Nothing reached the manager after the acknowledgement.
    assert [m for m in fakes.sent if m.key == to_manager] == []
    assert fakes.attempts.count(to_manager) == tried
    events = [e.kind for e in await stack.ledger.events(status.ticket_id)]
    assert "step_superseded" in events and "breached" in events
    await handle.execute_update("resolve", Resolve(by="alice"))
    await handle.result()


# --- re-triage and customer replies reach people ----------------------------------------------


async def test_raising_to_sev1_tells_the_new_first_responders_once_and_lowering_keeps_the_breach(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0 = await now_second(env)
    handle = await open_ticket_at(stack, ticket(tier="mission_critical", severity="sev3"), t0)
    await advance_to(env, t0 + 5 * M)
    await handle.execute_update("change_severity", ChangeSeverity(severity="sev1", by="t"))
    status = await until_status(
        handle, "the re-triage message", lambda s: "retriage_sent" in kinds(s)
    )
    await advance_to(env, t0 + 16 * M)
    status = await status_of(handle)
    assert status.response_breached and status.breached_at == t0 + 15 * M
    # Raised again (sev2 -> sev1 would be a second raise): nobody new to tell.
    lowered = await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev3", by="t"), result_type=TicketStatus
    )
    assert lowered.response_due_at == t0 + H
    assert lowered.response_breached and lowered.breached_at == t0 + 15 * M
    await advance_to(env, t0 + 20 * M)
    acked = await handle.execute_update(
        "acknowledge", Acknowledge(agent="alice", at=t0 + 20 * M), result_type=TicketStatus
    )
    assert acked.response_breached

    async def acknowledged() -> TicketOutcome | None:  # written in the background
        outcome = await stack.ledger.outcome(acked.ticket_id)
        return outcome if outcome is not None and outcome.acknowledged_at else None

    outcome = await eventually("the ledger row's acknowledgement", acknowledged, every=0.02)
    assert outcome.overrun == 5 * M
    assert outcome.breached_at == t0 + 15 * M
    await handle.execute_update("resolve", Resolve(by="alice"))
    await handle.result()
    retriage = fakes.messages("retriage")
    # sev1's intake reaches duty-engineer, duty-manager and incident-commander; the
    # duty engineer heard of the ticket at sev3's intake already.
    assert sorted(m.recipient for m in retriage) == ["duty-manager", "incident-commander"]
    assert "Severity raised sev3 -> sev1 by t" in retriage[0].text


async def test_raising_an_acknowledged_ticket_tells_the_new_first_responders_once(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0 = await now_second(env)
    handle = await open_ticket_at(stack, ticket(tier="mission_critical", severity="sev3"), t0)
    await advance_to(env, t0 + 2 * M)
    await handle.execute_update("acknowledge", Acknowledge(agent="alice", at=t0 + 2 * M))
    await advance_to(env, t0 + 10 * M)
    raised = await handle.execute_update(
        "change_severity",
        ChangeSeverity(severity="sev1", by="alice", reason="all regions"),
        result_type=TicketStatus,
    )
    # The acknowledged ticket keeps its deadline; only the severity moves.
    assert raised.severity == "sev1" and raised.state is TicketState.ACKNOWLEDGED
    assert raised.response_due_at == t0 + H and not raised.response_breached
    status = await until_status(
        handle, "the re-triage message", lambda s: "retriage_sent" in kinds(s)
    )
    changed = next(e for e in status.history if e.kind == "severity_changed")
    sent = next(e for e in status.history if e.kind == "retriage_sent")
    # Told as soon as the new severity's plan named them (an activity's milliseconds).
    assert {changed.at.replace(microsecond=0), sent.at.replace(microsecond=0)} == {t0 + 10 * M}
    # Lowered and raised again: everyone at sev1 has heard of it already.
    await advance_to(env, t0 + 12 * M)
    await handle.execute_update("change_severity", ChangeSeverity(severity="sev2", by="alice"))
    await advance_to(env, t0 + 14 * M)
    await handle.execute_update("change_severity", ChangeSeverity(severity="sev1", by="alice"))
    await handle.execute_update("resolve", Resolve(by="alice"))
    final = await handle.result()
    assert kinds(final).count("retriage_sent") == 1
    retriage = fakes.messages("retriage")
    # sev1's intake reaches duty-engineer, duty-manager and incident-commander; the duty
    # engineer heard of the ticket at sev3's intake already.
    assert sorted(m.recipient for m in retriage) == ["duty-manager", "incident-commander"]
    assert "Severity raised sev3 -> sev1 by alice: all regions" in retriage[0].text
    assert final.response_due_at == t0 + H and final.acknowledged_at == t0 + 2 * M


async def test_an_action_acts_once_per_request_id_whether_update_or_signal(
    stack: Stack, fakes: FakeActivities
) -> None:
    """A surface whose update found no worker sends the same action as a signal: the ticket
    applies the request id once, whichever comes first, and an update repeated with it
    answers with the status without acting again."""
    env = stack.env
    t0 = await now_second(env)
    handle = await open_ticket_at(stack, ticket(tier="mission_critical", severity="sev3"), t0)
    await advance_to(env, t0 + 5 * M)
    ack = Acknowledge(agent="alice", at=t0 + 5 * M, request_id="ack-link-1f2e")
    await handle.execute_update("acknowledge", ack, result_type=TicketStatus)
    await handle.signal("acknowledge", ack)
    again = await handle.execute_update(
        "acknowledge", ack.model_copy(update={"at": None}), result_type=TicketStatus
    )
    assert (again.acknowledged_by, again.acknowledged_at) == ("alice", t0 + 5 * M)
    # Another id acts: a second acknowledgement is refused.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            "acknowledge", Acknowledge(agent="bob", request_id="api-2"), result_type=TicketStatus
        )
    await advance_to(env, t0 + 8 * M)
    reply = AgentReply(agent="alice", summary="rolling back", at=t0 + 8 * M, request_id="r-3")
    await handle.signal("agent_reply", reply)
    answered = await handle.execute_update("agent_reply", reply, result_type=TicketStatus)
    assert kinds(answered).count("agent_replied") == 1
    await handle.execute_update("resolve", Resolve(by="alice", request_id="r-4"))
    final = await handle.result()
    assert kinds(final).count("acknowledged") == 1
    assert "acknowledge_repeated" not in kinds(final)
    assert kinds(final).count("agent_replied") == 1
    events = [e.kind for e in await fakes.events(final.ticket_id)]
    assert events.count("acknowledged") == 1 and events.count("agent_replied") == 1


async def test_a_customer_reply_reaches_whoever_acknowledged_or_rides_with_the_next_step(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0 = await now_second(env)
    handle = await open_ticket_at(stack, ticket(), t0)
    await advance_to(env, t0 + 10 * M)
    reply = CustomerReply(
        received_at=t0 + 10 * M, subject="more logs attached", reference="<r1@acme.example>"
    )
    await handle.signal("customer_reply", reply)
    await advance_to(env, t0 + 31 * M)  # the warning at 30 min carries it
    await handle.execute_update("acknowledge", Acknowledge(agent="duty-engineer"))
    await handle.signal(
        "customer_reply",
        CustomerReply(received_at=t0 + 31 * M, subject="still down", reference="<r2@a.example>"),
    )
    await until_status(handle, "the reply sent", lambda s: "customer_reply_sent" in kinds(s))
    await skip(env, M)
    await handle.execute_update("resolve", Resolve(by="duty-engineer"))
    await handle.result()
    warning = [m for m in fakes.messages("warning") if m.recipient == "duty-engineer"]
    assert "Customer replied via email" in warning[0].text
    assert "more logs attached" in warning[0].text
    forwarded = fakes.messages("reply-forward-")
    assert [m.recipient for m in forwarded] == ["duty-engineer"]
    assert "still down" in forwarded[0].text


# --- policy failures keep the last good plan --------------------------------------------------


async def test_adopting_a_version_nobody_has_is_refused_and_the_ticket_keeps_escalating(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket())
    version = (await status_of(handle)).policy_version
    await advance_to(stack.env, t0 + 5 * M)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("adopt_policy", AdoptPolicy(version="1999.1", by="ops"))
    assert "cannot adopt_policy" in str(refused.value.cause)
    status = await status_of(handle)
    assert status.policy_version == version
    assert status.policy_problem and "1999.1" in status.policy_problem
    assert "policy_adoption_failed" in kinds(status)
    await advance_to(stack.env, t0 + 61 * M)
    status = await status_of(handle)
    assert [e.step for e in status.escalations][-1] == "breach"
    assert status.policy_version == version


# --- statement of work ------------------------------------------------------------------------


async def test_a_failed_statement_of_work_is_recorded_as_failed_not_expired(
    env: WorkflowEnvironment,
) -> None:
    queue = f"tq-{uuid.uuid4()}"
    workflows = [SupportTicket, FailingStatementOfWork]
    async with worker_with(env.client, queue, FakeActivities().activities(), workflows):
        data = ticket(category="custom_engineering", opened_at=await now_second(env))
        handle = await env.client.start_workflow(
            "SupportTicket",
            data,
            id=data.workflow_id,
            task_queue=queue,
            result_type=TicketStatus,
        )
        # The child fails at once: wait in real time (skipping time here could
        # outrun the child's first task).
        status = await asyncio.wait_for(handle.result(), timeout=30)
    assert status.sow is not None and status.sow.outcome is SowOutcome.FAILED
    assert status.state is TicketState.CLOSED
    assert "sow_failed" in kinds(status) and "sow_expired" not in kinds(status)
