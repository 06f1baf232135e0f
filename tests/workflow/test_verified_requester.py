"""A requester confirmed after submitting (issue 15, part 1), on the time-skipping server
with exact instants: the Community ticket of an unverified address at a contracted domain
takes the contract when the requester confirms (``verify_requester``), on the same ticket,
its deadlines from the submission; a deadline already past is breached at that deadline;
the contract's first responders are told; and whatever cannot be verified is refused with
why and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from contract import search_attributes as sa
from contract.models import (
    Acknowledge,
    Resolve,
    StepKind,
    TicketInput,
    TicketState,
    TicketStatus,
    VerifyRequester,
)
from harness.processes import eventually
from tests.conftest import (
    Stack,
    advance_to,
    open_now,
    open_ticket_at,
    status_of,
    ticket,
    time_skipping,
    until_status,
)
from tests.workflow.fakes import FakeActivities

M, S = timedelta(minutes=1), timedelta(seconds=1)
BANK = "example-bank"  # the default policy's contract: Mission Critical, sev1 due in 15 min
ADDRESS = "noc@bank.example"
# sev1's intake step under the bank's contract (its NOC is a contact at intake).
SEV1_INTAKE = ["duty-engineer", "duty-manager", "example-bank-noc", "incident-commander"]


@pytest_asyncio.fixture(loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test: each leaves tickets escalating."""
    async with time_skipping() as environment:
        yield environment


def unverified(**fields: object) -> TicketInput:
    """What the contact form opens for an unverified address at the bank's domain."""
    data: dict[str, object] = {
        "ticket_id": f"W-{uuid.uuid4().hex[:12]}",
        "customer_id": "community",
        "tier": None,
        "severity": "sev1",
        "reporter_email": ADDRESS,
        "intake_channel": "web_form",
    }
    return ticket(**(data | fields))


def kinds(status: TicketStatus) -> list[str]:
    return [entry.kind for entry in status.history]


async def verify(handle: WorkflowHandle[Any, TicketStatus], **fields: Any) -> TicketStatus:
    payload = VerifyRequester.model_validate({"customer_id": BANK, "address": ADDRESS} | fields)
    return await handle.execute_update("verify_requester", payload, result_type=TicketStatus)


async def test_a_confirmed_requester_takes_the_contract_on_the_same_ticket_from_submission(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0, handle = await open_now(stack, unverified())
    community = await status_of(handle)
    assert (community.customer_id, community.tier.value) == ("community", "community")
    assert community.response_due_at is None and not community.commercial_sla

    await advance_to(env, t0 + 5 * M)
    # The address as the requester typed it: compared without regard to case.
    after = await verify(handle, address="NOC@Bank.Example", at=t0 + 5 * M)
    assert (after.ticket_id, after.customer_id, after.tier.value, after.severity.value) == (
        community.ticket_id,
        BANK,
        "mission_critical",
        "sev1",
    )
    # The clock runs from the submission, not from the confirmation.
    assert (after.opened_at, after.response_due_at) == (t0, t0 + 15 * M)
    assert after.state is TicketState.OPEN and not after.response_breached
    assert after.entitlement == f"contract {BANK}"
    [verified] = [h for h in after.history if h.kind == "requester_verified"]
    assert verified.at == t0 + 5 * M
    assert verified.detail == (
        f"NOC@Bank.Example confirmed: the contract of {BANK}, community -> mission_critical;"
        f" response due {(t0 + 15 * M).isoformat()} (from the submission)"
    )

    # The contract's first responders hear of it at once (the Community queue did at intake).
    told = await until_status(
        handle, "the contract's first responders told", lambda s: "verified_sent" in kinds(s)
    )
    # (the history says so when the delivery starts; the fake records it when it runs)
    await eventually(
        "the verified notices",
        lambda: len(fakes.messages("verified-notice")) == len(SEV1_INTAKE),
        every=0.02,
    )
    assert sorted(m.recipient for m in fakes.messages("verified-notice")) == SEV1_INTAKE
    assert [m.recipient for m in fakes.messages("intake")] == ["community-queue"]
    assert told.next_step == "warning" and told.next_step_due_at == t0 + 10 * M

    # The contract's ladder then runs at its exact instants from the submission.
    await advance_to(env, t0 + 16 * M)
    status = await until_status(handle, "the breach", lambda s: len(s.escalations) >= 3)
    steps = [(e.step, e.kind, e.due_at) for e in status.escalations]
    assert steps[1:] == [
        ("warning", StepKind.WARNING, t0 + 10 * M),
        ("breach", StepKind.BREACH, t0 + 15 * M),
    ]
    for record in status.escalations[1:]:
        assert record.due_at <= record.fired_at < record.due_at + S, record
    assert status.response_breached and status.breached_at == t0 + 15 * M

    # Visibility and the ledger know it as the bank's ticket.
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.CUSTOMER_ID) == BANK
    assert attributes.get(sa.SUPPORT_TIER) == "mission_critical"
    assert attributes.get(sa.RESPONSE_DUE_AT) == t0 + 15 * M
    await handle.execute_update("resolve", Resolve(by="alice"))
    await handle.result()
    outcome = await fakes.outcome(community.ticket_id)
    assert outcome is not None
    assert (outcome.customer_id, outcome.tier.value, outcome.response_breached) == (
        BANK,
        "mission_critical",
        True,
    )
    events = [e.kind for e in await fakes.events(community.ticket_id)]
    assert events.count("requester_verified") == 1


async def test_a_requester_confirmed_after_the_deadline_is_breached_at_the_deadline(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0, handle = await open_now(stack, unverified())
    await advance_to(env, t0 + 22 * M)
    after = await verify(handle, at=t0 + 22 * M)
    # Missed at the contract's deadline, counted from the submission.
    assert after.response_due_at == t0 + 15 * M
    status = await until_status(handle, "the late steps", lambda s: len(s.escalations) >= 2)
    assert status.response_breached and status.breached_at == t0 + 15 * M
    missed = next(h for h in status.history if h.kind == "response_target_missed")
    assert missed.at == t0 + 15 * M
    # The steps already past are caught up at once: the breach is sent, the warning and the
    # repeat it overtook are recorded as superseded (nobody gets a burst of stale pages).
    breach = status.escalations[1]
    assert (breach.step, breach.due_at) == ("breach", t0 + 15 * M)
    assert t0 + 22 * M <= breach.fired_at < t0 + 22 * M + S
    superseded = [h.detail or "" for h in status.history if h.kind == "step_superseded"]
    assert [d.split(" (")[0] for d in superseded] == ["step warning", "step repeat-1"]
    # The next repeat comes at its own instant.
    await advance_to(env, t0 + 26 * M)
    status = await until_status(handle, "the next repeat", lambda s: len(s.escalations) >= 3)
    repeat = status.escalations[2]
    assert (repeat.kind, repeat.due_at) == (StepKind.REPEAT, t0 + 25 * M)
    assert repeat.due_at <= repeat.fired_at < repeat.due_at + S


async def test_an_acknowledgement_before_the_confirmation_is_the_first_response(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0, late = await open_now(stack, unverified())
    # Opened at the same instant (a second open_now could fall in the next second).
    early = await open_ticket_at(stack, unverified(reporter_email="ops@bank.example"), t0)
    await advance_to(env, t0 + 5 * M)
    await early.execute_update("acknowledge", Acknowledge(agent="alice", at=t0 + 5 * M))
    await advance_to(env, t0 + 20 * M)
    await late.execute_update("acknowledge", Acknowledge(agent="bob", at=t0 + 20 * M))
    await advance_to(env, t0 + 25 * M)

    in_time = await verify(early, address="ops@bank.example", at=t0 + 25 * M)
    assert in_time.state is TicketState.ACKNOWLEDGED and in_time.tier.value == "mission_critical"
    assert (in_time.response_due_at, in_time.acknowledged_at) == (t0 + 15 * M, t0 + 5 * M)
    assert not in_time.response_breached

    too_late = await verify(late, at=t0 + 25 * M)
    assert (too_late.response_due_at, too_late.acknowledged_at) == (t0 + 15 * M, t0 + 20 * M)
    assert too_late.response_breached and too_late.breached_at == t0 + 15 * M
    # An acknowledged ticket escalates no further: only the verification notice goes out.
    await advance_to(env, t0 + 40 * M)
    for handle in (early, late):
        status = await status_of(handle)
        assert [e.step for e in status.escalations] == ["intake"]
        assert "verified_sent" in kinds(status)
    await eventually(
        "both tickets' notices", lambda: len(fakes.messages("verified-notice")) == 8, every=0.02
    )
    notices = [m.key.split("/")[0] for m in fakes.messages("verified-notice")]
    assert sorted(notices) == sorted([early.id] * 4 + [late.id] * 4)


async def test_what_cannot_be_verified_is_refused_with_why_and_changes_nothing(
    stack: Stack, fakes: FakeActivities
) -> None:
    env = stack.env
    t0, handle = await open_now(stack, unverified())
    _, contracted = await open_now(stack, ticket(customer_id="acme", tier="premium"))
    await advance_to(env, t0 + 2 * M)

    async def refused(target: WorkflowHandle[Any, TicketStatus], **fields: Any) -> str:
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await verify(target, **fields)
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError)
        return cause.message

    ticket_id = handle.id.removeprefix("ticket-")
    assert await refused(handle, address="eve@bank.example") == (
        f"cannot verify_requester: eve@bank.example is not the requester of ticket {ticket_id}"
    )
    assert await refused(contracted) == (
        f"cannot verify_requester: ticket {contracted.id.removeprefix('ticket-')} is customer"
        " acme's, not an unverified requester's"
    )
    assert await refused(handle, customer_id="no-such-customer") == (
        "cannot verify_requester: customer 'no-such-customer' has no support contract under"
        f" policy {(await status_of(handle)).policy_version}"
    )
    # A signal is refused the same way, and its refusal is on the ticket's record.
    await handle.signal(
        "verify_requester",
        VerifyRequester(customer_id=BANK, address="eve@bank.example"),
    )
    status = await until_status(
        handle, "the refused signal", lambda s: "requester_not_verified" in kinds(s)[-1:]
    )
    assert (status.customer_id, status.tier.value) == ("community", "community")
    assert status.response_due_at is None and status.policy_problem is None
    # Nobody but the two tickets' intake steps was told anything.
    assert sorted(m.recipient for m in fakes.messages()) == [
        "community-queue",
        "duty-engineer",
        "support-queue",
    ]

    # One request id acts once; a repeat of a done verification changes nothing.
    first = await verify(handle, request_id="verify:abc")
    again = await verify(handle, request_id="verify:abc")
    once_more = await verify(handle)
    assert first.customer_id == again.customer_id == once_more.customer_id == BANK
    final = await status_of(handle)
    assert kinds(final).count("requester_verified") == 1

    # A resolved ticket has nothing to move.
    await handle.execute_update("resolve", Resolve(by="alice"))
    _, resolved = await open_now(stack, unverified())
    await resolved.execute_update("resolve", Resolve(by="alice"))
    # Refused by the validator while the ticket's last writes land, or not delivered at all
    # once its run ended (a resolved ticket ends as soon as they have landed).
    with pytest.raises((WorkflowUpdateFailedError, RPCError)) as late:
        await verify(resolved)
    if isinstance(late.value, WorkflowUpdateFailedError):
        assert str(late.value.cause).startswith(
            f"cannot verify_requester: ticket {resolved.id.removeprefix('ticket-')} is resolved"
        )
    else:
        assert late.value.status is RPCStatusCode.NOT_FOUND, late.value
    assert (await resolved.result()).customer_id != BANK
