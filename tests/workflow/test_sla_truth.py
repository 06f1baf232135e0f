"""The record stays true (issue 13, workflow side), on the time-skipping server with exact
instants: agent actions as Updates, a status planned before its first answer, stamped
acknowledgements, entitlement, default severity, out of scope without a clock, deliveries
an acknowledgement makes moot, re-triage and customer replies that reach people, a pinned
policy version's cadence after the file changes, policy failures that keep the last good
plan, and a statement of work that failed or could not notify."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
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
    SowDecision,
    SowOutcome,
    SowResult,
    StepKind,
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


def assert_repeats_on_time(status: TicketStatus, first: int, dues: list[datetime]) -> None:
    """The ticket's repeats from the ``first``-th on were sent as ``repeat-<n>``, due at
    ``dues`` exactly and each fired within a second after it (the server's task latency)."""
    sent = [e for e in status.escalations if e.kind is StepKind.REPEAT][first - 1 :]
    assert [(e.step, e.due_at) for e in sent] == [
        (f"repeat-{n}", due) for n, due in enumerate(dues, start=first)
    ]
    for record in sent:
        assert record.due_at <= record.fired_at < record.due_at + S, record


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
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev3"))
    await advance_to(env, t0 + 5 * M)
    await handle.execute_update("change_severity", ChangeSeverity(severity="sev1", by="t"))
    status = await until_status(
        handle, "the re-triage message", lambda s: "retriage_sent" in kinds(s)
    )
    await advance_to(env, t0 + 16 * M)
    status = await status_of(handle)
    assert status.response_breached and status.breached_at == t0 + 15 * M
    lowered = await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev3", by="t"), result_type=TicketStatus
    )
    assert lowered.response_due_at == t0 + H
    assert lowered.response_breached and lowered.breached_at == t0 + 15 * M
    # Raised to sev1 a second time: everyone sev1 reaches has heard of the ticket already,
    # so nobody is told again (and the breach stays where it was).
    await advance_to(env, t0 + 17 * M)
    raised = await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev1", by="t"), result_type=TicketStatus
    )
    assert raised.response_due_at == t0 + 15 * M and raised.breached_at == t0 + 15 * M
    # Lowered again before sev1's first repeat (20 min): acknowledged at sev2 below.
    await advance_to(env, t0 + 18 * M)
    lowered = await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev2", by="t"), result_type=TicketStatus
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
    final = await handle.result()
    assert kinds(final).count("severity_changed") == 4
    assert kinds(final).count("retriage_sent") == 1
    retriage = fakes.messages("retriage")
    # sev1's intake reaches duty-engineer, duty-manager and incident-commander; the
    # duty engineer heard of the ticket at sev3's intake already.
    assert sorted(m.recipient for m in retriage) == ["duty-manager", "incident-commander"]
    assert {m.step for m in retriage} == {"retriage-1"}
    assert "Severity raised sev3 -> sev1 by t" in retriage[0].text


async def test_raising_an_acknowledged_ticket_tells_the_new_first_responders_once(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev3"))
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
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev3"))
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


async def open_with_a_waiting_reply(
    stack: Stack, reference: str
) -> tuple[datetime, WorkflowHandle[Any, TicketStatus]]:
    """A Premium ticket opened now (to the second) with a customer reply at 5 min, which
    waits on the open ticket for its next step."""
    t0 = await now_second(stack.env)
    handle = await open_ticket_at(stack, ticket(), t0)
    await advance_to(stack.env, t0 + 5 * M)
    reply = CustomerReply(received_at=t0 + 5 * M, subject="more logs attached", reference=reference)
    await handle.signal("customer_reply", reply)
    return t0, handle


async def test_replies_on_a_ticket_acknowledged_by_someone_no_step_names_reach_the_first_responders(
    stack: Stack, fakes: FakeActivities
) -> None:
    """Premium's intake step reaches support-queue and duty-engineer; alice is named by no
    step of the policy. A reply that waited on the open ticket for its next step (the
    warning at 30 min) goes out at the acknowledgement instead; a later one at once."""
    env = stack.env
    t0, handle = await open_with_a_waiting_reply(stack, "<r1@a>")
    await advance_to(env, t0 + 10 * M)
    acked = await handle.execute_update(
        "acknowledge", Acknowledge(agent="alice", at=t0 + 10 * M), result_type=TicketStatus
    )
    assert "customer_reply_sent" in kinds(acked)
    await advance_to(env, t0 + 12 * M)
    await handle.signal(
        "customer_reply",
        CustomerReply(received_at=t0 + 12 * M, subject="still down", reference="<r2@a>"),
    )
    status = await until_status(
        handle, "both replies sent", lambda s: kinds(s).count("customer_reply_sent") == 2
    )
    at_ack, later = [e for e in status.history if e.kind == "customer_reply_sent"]
    assert at_ack.at == t0 + 10 * M  # the acknowledgement's instant
    assert t0 + 12 * M <= later.at < t0 + 12 * M + S
    await handle.execute_update("resolve", Resolve(by="alice"))
    final = await handle.result()
    handed = fakes.messages("reply-forward-ack-")
    assert sorted(m.recipient for m in handed) == ["duty-engineer", "support-queue"]
    assert all("more logs attached" in m.text and "still down" not in m.text for m in handed)
    forwarded = [m for m in fakes.messages("reply-forward-") if m not in handed]
    assert sorted(m.recipient for m in forwarded) == ["duty-engineer", "support-queue"]
    assert all("still down" in m.text and "more logs" not in m.text for m in forwarded)
    # No step carried the first reply: the warnings were moot once acknowledged.
    assert fakes.messages("warning") == [] and fakes.messages("final-warning") == []
    events = [e for e in await fakes.events(final.ticket_id) if e.kind == "customer_reply_sent"]
    assert [e.at for e in events] == [at_ack.at, later.at]
    assert [sorted(e.detail["delivered"]) for e in events] == [
        ["duty-engineer", "support-queue"]
    ] * 2


async def test_a_reply_waiting_on_an_open_ticket_is_handed_to_whoever_acknowledges_it(
    stack: Stack, fakes: FakeActivities
) -> None:
    """The duty manager is named by Premium's breach and repeat steps only (not intake): a
    reply waiting for the next step goes to the duty manager alone, at the acknowledgement."""
    env = stack.env
    t0, handle = await open_with_a_waiting_reply(stack, "<r3@a>")
    await advance_to(env, t0 + 20 * M)
    acked = await handle.execute_update(
        "acknowledge", Acknowledge(agent="duty-manager", at=t0 + 19 * M), result_type=TicketStatus
    )
    sent = next(e for e in acked.history if e.kind == "customer_reply_sent")
    assert sent.at == t0 + 19 * M and "(to duty-manager)" in (sent.detail or "")
    await handle.execute_update("resolve", Resolve(by="duty-manager"))
    await handle.result()
    handed = fakes.messages("reply-forward-")
    assert [(m.step, m.recipient) for m in handed] == [("reply-forward-ack-1", "duty-manager")]
    assert "Customer replied via email" in handed[0].text
    assert "more logs attached" in handed[0].text


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


async def test_a_ticket_keeps_its_pinned_repeat_cadence_after_the_policy_file_changes(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mission Critical sev1 repeats every 5 min after its 15 min breach, 24 at a time: the
    next window is fetched at the 24th (2:15), here after the file went to 10 min."""
    policy = write_policy(tmp_path, lambda p: None)
    monkeypatch.setenv(POLICY_FILE_ENV, str(policy))
    env = stack.env
    t0 = await now_second(env)
    pinned = await open_ticket_at(stack, ticket(tier="mission_critical", severity="sev1"), t0)
    version = (await status_of(pinned)).policy_version
    await advance_to(env, t0 + H + 2 * M)

    def every_ten_minutes(p: dict[str, Any]) -> None:
        repeat = p["tiers"]["mission_critical"]["severities"]["sev1"]["ladder"][-1]
        repeat["repeat_every"] = "PT10M"

    write_policy(tmp_path, every_ten_minutes)
    t1 = t0 + H + 3 * M
    later = await open_ticket_at(stack, ticket(tier="mission_critical", severity="sev1"), t1)
    await advance_to(env, t0 + 2 * H + 31 * M)
    status = await status_of(pinned)
    # Before and after the change, and across the window fetched after it: every 5 min.
    assert_repeats_on_time(status, 1, [t0 + 15 * M + n * 5 * M for n in range(1, 28)])
    assert status.policy_version == version and "policy_version_changed" not in kinds(status)
    # The new file took effect for the ticket opened under it.
    new = await status_of(later)
    assert new.policy_version not in (None, version)
    assert_repeats_on_time(new, 1, [t1 + 15 * M + n * 10 * M for n in range(1, 8)])
    await advance_to(env, t0 + 2 * H + 32 * M)  # between both tickets' repeats
    for handle in (pinned, later):
        await handle.execute_update("resolve", Resolve(by="alice"))
        assert (await handle.result()).state is TicketState.RESOLVED


async def test_a_ladder_extension_without_its_policy_keeps_the_plan_and_retries(
    stack: Stack, fakes: FakeActivities, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker restarts without the versions it kept in memory while the file is broken:
    the window of repeats after the 24th (2:15) cannot be fetched until the file is fixed."""
    policy = write_policy(tmp_path, lambda p: None)
    monkeypatch.setenv(POLICY_FILE_ENV, str(policy))
    env = stack.env
    t0 = await now_second(env)
    handle = await open_ticket_at(stack, ticket(tier="mission_critical", severity="sev1"), t0)
    version = (await status_of(handle)).policy_version
    await advance_to(env, t0 + 2 * H + 12 * M)
    fakes.forget_policy_versions()
    policy.write_text("version: broken\ntiers: [\n")
    await advance_to(env, t0 + 2 * H + 17 * M + 30 * S)
    status = await status_of(handle)
    assert_repeats_on_time(status, 1, [t0 + 15 * M + n * 5 * M for n in range(1, 25)])
    failures = [e for e in status.history if e.kind == "policy_unavailable"]
    # At the window's end, then again every POLICY_RETRY_AFTER (1 min).
    assert [e.at.replace(microsecond=0) for e in failures] == [
        t0 + 2 * H + 15 * M,
        t0 + 2 * H + 16 * M,
        t0 + 2 * H + 17 * M,
    ]
    assert all(f"keeps its plan under policy {version}" in (e.detail or "") for e in failures)
    assert status.policy_problem and "not valid YAML" in status.policy_problem
    # The last good plan stays: version and deadline unchanged, nothing new pending.
    assert (status.policy_version, status.response_due_at) == (version, t0 + 15 * M)
    assert status.next_step is None

    async def recorded() -> list[Any] | None:  # the ledger is written in the background
        events = [e for e in await fakes.events(status.ticket_id) if e.kind == "policy_unavailable"]
        return events if len(events) == 3 else None

    ledger = await eventually("three policy_unavailable events", recorded, every=0.02)
    assert [e.at for e in ledger] == [e.at for e in failures]
    assert all("not valid YAML" in e.detail["problem"] for e in ledger)
    # Fixed between two tries: the try at 2:18 fetches the window, at the pinned cadence.
    write_policy(tmp_path, lambda p: None)
    await advance_to(env, t0 + 2 * H + 26 * M)
    status = await status_of(handle)
    assert_repeats_on_time(status, 25, [t0 + 2 * H + 20 * M, t0 + 2 * H + 25 * M])
    assert status.policy_problem is None and kinds(status).count("policy_unavailable") == 3
    assert status.next_step_due_at == t0 + 2 * H + 30 * M
    await advance_to(env, t0 + 2 * H + 27 * M)
    await handle.execute_update("resolve", Resolve(by="alice"))
    assert (await handle.result()).policy_version == version


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


async def test_failed_statement_of_work_notifications_are_recorded_on_the_ticket_and_ledger(
    stack: Stack, fakes: FakeActivities
) -> None:
    """Advisory services cannot be reached: the child's opening message retries until its
    delivery deadline (1 day 7 min: a day of worker outage plus the channels' turns), then
    the child records the failure; the ticket records it when the statement of work is
    decided."""
    fakes.unreachable.add("advisory-services")
    # A try every 5 min, not the policy's backoff (some 2,900 tries of a day, 10 s of real
    # time on the test server): the attempts still run to the delivery deadline.
    fakes.retry_after = 5 * M
    env = stack.env
    t0, handle = await open_now(stack, ticket())
    await advance_to(env, t0 + 10 * M)
    await handle.execute_update("mark_out_of_scope", MarkOutOfScope(by="erin", reason="feature"))
    await sow_started(stack, handle)
    child = stack.client.get_workflow_handle(
        f"sow-{handle.id.removeprefix('ticket-')}", result_type=SowResult
    )
    opened = f"{child.id}/opened/advisory-services"
    await advance_to(env, t0 + 10 * M + timedelta(days=1))
    assert (await child.query("status", result_type=SowResult)).failed_notifications == []
    tried = fakes.attempts.count(opened)
    await advance_to(env, t0 + 10 * M + timedelta(days=1, minutes=8))
    failed = (await child.query("status", result_type=SowResult)).failed_notifications
    assert fakes.attempts.count(opened) > tried  # retried to the end, then given up
    failure = "opened: advisory-services: TransientDeliveryError: delivery failed for"
    # Only the one not reached: the account team and the reporter got the notice.
    assert len(failed) == 1 and failed[0].startswith(failure), failed
    assert not [m for m in fakes.sent if m.key == opened]
    fakes.unreachable.clear()
    decided_at = t0 + timedelta(days=1, minutes=30)
    await advance_to(env, decided_at)
    await child.signal("sow_decision", SowDecision(decision="declined", by="advisor"))
    status = await until_status(handle, "closed", lambda s: s.state is TicketState.CLOSED)
    assert status.sow is not None and status.sow.outcome is SowOutcome.DECLINED
    assert status.closed_at is not None and decided_at <= status.closed_at < decided_at + S
    recorded = [e for e in status.history if e.kind == "sow_notification_failed"]
    assert [e.detail for e in recorded] == failed
    assert {e.at for e in recorded} == {status.closed_at}
    assert kinds(status)[-1] == "sow_declined"

    async def in_ledger() -> Any:  # written in the background
        events = await fakes.events(status.ticket_id)
        return next((e for e in events if e.kind == "sow_notification_failed"), None)

    event = await eventually("the ledger's sow_notification_failed", in_ledger, every=0.02)
    assert event.at == status.closed_at and event.detail["failed"] == failed
    # The decision's message reached advisory services once it was back.
    assert [m.recipient for m in fakes.messages("declined")][:1] == ["advisory-services"]
