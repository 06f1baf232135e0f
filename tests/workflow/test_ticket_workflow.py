"""SupportTicket on the time-skipping server: every deadline asserted at its exact instant.

A step's ``due_at`` is the instant the policy promises and is asserted exactly; its
``fired_at`` is when the workflow actually ran it, which trails the instant by the server's
task latency (milliseconds), so it is asserted to lie in [due_at, due_at + 1 s).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle

from contract import search_attributes as sa
from contract.models import (
    Acknowledge,
    ChangeSeverity,
    CustomerReply,
    EscalationRecord,
    MarkOutOfScope,
    Resolve,
    SowDecision,
    TicketState,
    TicketStatus,
)
from harness.policy import write_policy
from policy.load import default_policy_path, load_policy
from tests.conftest import (
    Stack,
    advance_to,
    now_second,
    open_now,
    open_ticket_at,
    result_of,
    status_of,
    ticket,
)
from tests.workflow.fakes import FakeActivities

H, M = timedelta(hours=1), timedelta(minutes=1)


def assert_fired(record: EscalationRecord, step: str, due: datetime, targets: list[str]) -> None:
    assert (record.step, record.due_at, record.targets) == (step, due, targets)
    # The intake step fires as soon as the ticket starts; the tests open tickets with
    # ``opened_at`` truncated to the second, so up to a second more may pass before it.
    latency = timedelta(seconds=2 if record.kind.value == "intake" else 1)
    assert due <= record.fired_at < due + latency, record


def steps(status: TicketStatus) -> list[str]:
    return [e.step for e in status.escalations]


async def finish(handle: WorkflowHandle[Any, TicketStatus], by: str = "alice") -> TicketStatus:
    await handle.signal("resolve", Resolve(by=by, summary="done"))
    return await handle.result()  # completes without waiting on timers: no skipping needed


# --- targets per tier --------------------------------------------------------------------


async def test_premium_ladder_warns_breaches_and_repeats_at_exact_instants(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 95 * M)
    status = await status_of(handle)
    assert status.response_due_at == t0 + H
    assert status.response_breached and status.breached_at == t0 + H
    assert status.state is TicketState.OPEN
    fired = status.escalations
    assert steps(status) == ["intake", "warning", "final-warning", "breach", "repeat-1"]
    assert_fired(fired[0], "intake", t0, ["support-queue", "duty-engineer"])
    assert_fired(fired[1], "warning", t0 + 30 * M, ["duty-engineer"])
    assert_fired(fired[2], "final-warning", t0 + 45 * M, ["duty-engineer", "support-lead"])
    assert_fired(fired[3], "breach", t0 + H, ["support-lead", "duty-manager"])
    assert_fired(fired[4], "repeat-1", t0 + 90 * M, ["duty-manager"])
    assert (status.next_step, status.next_step_due_at) == ("repeat-2", t0 + 2 * H)

    await handle.signal("acknowledge", Acknowledge(agent="alice"))
    await advance_to(stack.env, t0 + 3 * H)
    status = await status_of(handle)
    assert status.state is TicketState.ACKNOWLEDGED
    assert status.acknowledged_by == "alice"
    assert t0 + 95 * M <= status.acknowledged_at < t0 + 96 * M  # type: ignore[operator]
    assert status.response_breached, "an acknowledgement after breach stays a breach"
    assert steps(status)[-1] == "repeat-1", "acknowledgement stops the ladder"
    result = await finish(handle)
    assert result.state is TicketState.RESOLVED and result.resolved_by == "alice"


async def test_mission_critical_sev1_has_15_minute_target_and_contract_contacts(
    stack: Stack,
) -> None:
    t0 = await now_second(stack.env)
    handle = await open_ticket_at(
        stack, ticket(customer_id="example-bank", tier="mission_critical", severity="sev1"), t0
    )
    await advance_to(stack.env, t0 + 21 * M)
    status = await status_of(handle)
    assert status.response_target == 15 * M and status.response_due_at == t0 + 15 * M
    fired = status.escalations
    assert_fired(
        fired[0],
        "intake",
        t0,
        ["duty-engineer", "duty-manager", "incident-commander", "example-bank-noc"],
    )
    assert_fired(
        fired[1], "warning", t0 + 10 * M, ["duty-engineer", "support-lead", "duty-manager"]
    )
    assert_fired(
        fired[2], "breach", t0 + 15 * M, ["duty-manager", "incident-commander", "example-bank-noc"]
    )
    assert_fired(fired[3], "repeat-1", t0 + 20 * M, ["duty-manager", "incident-commander"])
    await finish(handle)


async def test_mission_critical_below_sev1_is_no_worse_than_premium(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev2"))
    status = await status_of(handle)
    assert status.response_due_at == t0 + H
    await finish(handle)


async def test_community_ticket_has_no_clock_and_closes_when_idle(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket(tier="community", severity="sev1"))
    await advance_to(stack.env, t0 + 2 * H)
    status = await status_of(handle)
    assert status.commercial_sla is False
    assert status.response_due_at is None and status.response_target is None
    assert steps(status) == ["intake"] and status.escalations[0].targets == ["community-queue"]
    assert not status.response_breached
    description = await handle.describe()
    assert description.typed_search_attributes.get(sa.SLA_BREACHED) is None
    result = await result_of(stack.env, handle)  # untouched: closes after 14 idle days
    assert result.state is TicketState.CLOSED
    assert result.closed_at is not None
    assert t0 + timedelta(days=14) <= result.closed_at < t0 + timedelta(days=14, seconds=1)


# --- Standard: business hours, weekends, holidays, DST -----------------------------------

CHICAGO = "America/Chicago"


def next_local(
    after: datetime, weekday: int, hour: int, zone: str = CHICAGO, where: Any = None
) -> datetime:
    """The first local ``weekday`` at ``hour``:00 after ``after`` (and satisfying ``where``)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    day = after.astimezone(tz).date() + timedelta(days=1)
    while True:
        candidate = datetime(day.year, day.month, day.day, hour, tzinfo=tz)
        if day.weekday() == weekday and (where is None or where(candidate)):
            return candidate.astimezone(UTC)
        day += timedelta(days=1)


def local(instant: datetime, days: int, hour: int, zone: str = CHICAGO) -> datetime:
    """``days`` local days after ``instant``'s local date, at ``hour``:00 local, in UTC."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    day = instant.astimezone(tz).date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, tzinfo=tz).astimezone(UTC)


def crosses_dst(friday: datetime) -> bool:
    """Whether the UTC offset changes between this Friday and the Monday after it."""
    return friday.utcoffset() != (friday + timedelta(days=3)).utcoffset()


@pytest.mark.parametrize(
    "case",
    ["tuesday-morning", "friday-afternoon", "saturday", "holiday-monday", "dst-change"],
)
async def test_standard_target_is_four_business_hours(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    env = stack.env
    from zoneinfo import ZoneInfo

    start = await env.get_current_time()
    tz = ZoneInfo(CHICAGO)
    if case == "tuesday-morning":
        opened = next_local(start, 1, 9)
        due, warning = local(opened, 0, 13), local(opened, 0, 12)
    elif case == "friday-afternoon":
        opened = next_local(start, 4, 16)  # two business hours left on Friday
        due, warning = local(opened, 3, 10), local(opened, 3, 9)
    elif case == "saturday":
        opened = next_local(start, 5, 11)
        due, warning = local(opened, 2, 12), local(opened, 2, 11)
    elif case == "holiday-monday":
        opened = next_local(start, 4, 16)
        due, warning = local(opened, 4, 10), local(opened, 4, 9)
    else:
        opened = next_local(start, 4, 16, where=lambda f: crosses_dst(f.astimezone(tz)))
        due, warning = local(opened, 3, 10), local(opened, 3, 9)
        assert (due - opened) != timedelta(days=2, hours=18), "the offset really changes"

    def edit(policy: dict[str, Any]) -> None:
        hours = policy["calendars"]["us-business-hours"]
        hours["holidays"] = []
        hours["closures"] = []
        if case == "holiday-monday":
            monday = (opened.astimezone(tz) + timedelta(days=3)).date()
            hours["holidays"] = [monday.isoformat()]

    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(write_policy(tmp_path, edit)))
    handle = await open_ticket_at(stack, ticket(tier="standard", severity="sev2"), opened)
    await advance_to(env, due + M)
    status = await status_of(handle)
    assert status.response_due_at == due
    assert status.time_zone == CHICAGO
    assert_fired(status.escalations[1], "warning", warning, ["duty-engineer"])
    assert_fired(status.escalations[2], "breach", due, ["duty-engineer", "support-lead"])
    await finish(handle)


# --- acknowledgement -----------------------------------------------------------------------


async def test_ack_before_breach_stops_the_clock_and_is_met(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 20 * M)
    await handle.signal("acknowledge", Acknowledge(agent="bob", note="looking"))
    await advance_to(stack.env, t0 + 5 * H)
    status = await status_of(handle)
    assert status.state is TicketState.ACKNOWLEDGED
    assert status.acknowledged_by == "bob"
    assert t0 + 20 * M <= status.acknowledged_at < t0 + 21 * M  # type: ignore[operator]
    assert not status.response_breached
    assert steps(status) == ["intake"], "no warning or breach after the acknowledgement"
    description = await handle.describe()
    attributes = description.typed_search_attributes
    assert attributes.get(sa.TICKET_STATE) == "acknowledged"
    assert attributes.get(sa.SLA_BREACHED) is False
    assert attributes.get(sa.RESPONSE_DUE_AT) == t0 + H
    await finish(handle)
    events = {e.kind for e in await stack.ledger.events(handle.id.removeprefix("ticket-"))}
    assert {"opened", "notified", "acknowledged", "resolved"} <= events
    assert "breached" not in events


async def test_duplicate_and_late_acks_are_recorded_and_change_nothing(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 5 * M)
    await handle.signal("acknowledge", Acknowledge(agent="bob"))
    await advance_to(stack.env, t0 + 6 * M)
    await handle.signal("acknowledge", Acknowledge(agent="carol"))
    await advance_to(stack.env, t0 + 7 * M)
    status = await status_of(handle)
    assert status.acknowledged_by == "bob"
    assert t0 + 5 * M <= status.acknowledged_at < t0 + 6 * M  # type: ignore[operator]
    repeated = [h for h in status.history if h.kind == "acknowledge_repeated"]
    assert [h.by for h in repeated] == ["carol"]
    result = await finish(handle)
    assert result.acknowledged_by == "bob"
    ticket_id = handle.id.removeprefix("ticket-")
    kinds = [e.kind for e in await stack.ledger.events(ticket_id)]
    assert kinds.count("acknowledged") == 1 and kinds.count("acknowledge_repeated") == 1


async def test_resolve_without_ack_counts_as_the_response(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 10 * M)
    result = await finish(handle, by="dave")
    assert result.state is TicketState.RESOLVED
    assert result.acknowledged_by == "dave" and not result.response_breached


async def test_resolve_twice_and_signals_after_resolution_are_refused_by_the_server(
    stack: Stack,
) -> None:
    handle = await open_ticket_at(stack, ticket())
    await finish(handle)
    with pytest.raises(Exception, match=r"(?i)completed|not found"):
        await handle.signal("acknowledge", Acknowledge(agent="late"))


# --- severity changes ------------------------------------------------------------------------


async def test_raising_severity_recomputes_from_the_original_open_time(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev3"))
    assert (await status_of(handle)).response_due_at == t0 + H
    await advance_to(stack.env, t0 + 20 * M)
    await handle.signal("change_severity", ChangeSeverity(severity="sev1", by="triage"))
    await advance_to(stack.env, t0 + 21 * M)
    status = await status_of(handle)
    assert status.severity.value == "sev1"
    assert status.response_due_at == t0 + 15 * M, "15 min from the open time, not from now"
    assert status.response_breached and status.breached_at == t0 + 15 * M
    # The sev1 breach was already overdue: it fires at once; the overdue sev1 warning is
    # superseded by it rather than sent after the breach.
    assert steps(status) == ["intake", "breach"]
    # The overdue breach fires in the activation that applied the new plan: at the instant
    # the ticket's own record gives for it (not within a wall-clock window).
    [changed_at] = [h.at for h in status.history if h.kind == "severity_changed"]
    planned_at = [h.at for h in status.history if h.kind == "plan_resolved"][-1]
    assert t0 + 20 * M <= changed_at <= planned_at
    assert status.escalations[1].fired_at == planned_at
    assert "step_superseded" in [h.kind for h in status.history]
    description = await handle.describe()
    assert description.typed_search_attributes.get(sa.SUPPORT_SEVERITY) == "sev1"
    assert description.typed_search_attributes.get(sa.SLA_BREACHED) is True
    await finish(handle)


async def test_lowering_severity_moves_deadlines_and_fired_steps_do_not_repeat(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev1"))
    await advance_to(stack.env, t0 + 11 * M)  # intake and the sev1 warning (10 min) fired
    await handle.signal(
        "change_severity",
        ChangeSeverity(severity="sev3", by="triage", reason="workaround in place"),
    )
    await advance_to(stack.env, t0 + 61 * M)
    status = await status_of(handle)
    assert status.response_due_at == t0 + H
    assert steps(status) == ["intake", "warning", "breach"], "warning is not sent twice"
    assert_fired(status.escalations[2], "breach", t0 + H, ["duty-manager", "incident-commander"])
    await finish(handle)


# --- out of scope ------------------------------------------------------------------------


async def test_out_of_scope_category_goes_to_sow_and_accepted_closes(
    stack: Stack, fakes: FakeActivities
) -> None:
    t0, handle = await open_now(stack, ticket(category="custom_engineering"))
    await advance_to(stack.env, t0 + 2 * H)
    status = await status_of(handle)
    assert status.state is TicketState.ROUTED_TO_SOW and status.out_of_scope
    assert status.escalations == [], "no SLA ladder for out-of-scope work"
    # The vendor's people are told how to record the decision; the reporter (a customer)
    # is told what happens next, and nothing of the vendor's instructions.
    told = {m.recipient: m.text for m in fakes.messages("opened")}
    assert set(told) == {"advisory-services", "account-team", "reporter"}
    assert "--name sow_decision" in told["advisory-services"]
    assert "outside the scope of Premium support" in told["reporter"]
    assert "temporal" not in told["reporter"] and "sow_decision" not in told["reporter"]
    assert status.sow is not None and "custom_engineering" in status.sow.reason
    sow = stack.client.get_workflow_handle(status.sow.workflow_id)
    assert status.sow.workflow_id == f"sow-{status.ticket_id}"
    await sow.signal(
        "sow_decision", SowDecision(decision="accepted", by="advisor", reference="SOW-77")
    )
    result = await handle.result()
    assert result.state is TicketState.CLOSED
    assert result.sow is not None
    assert (result.sow.outcome.value, result.sow.decided_by, result.sow.reference) == (
        "accepted",
        "advisor",
        "SOW-77",
    )


async def test_mark_out_of_scope_stops_the_clock_and_sow_can_be_declined(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 10 * M)
    await handle.signal(
        "mark_out_of_scope", MarkOutOfScope(by="bob", reason="asks for a custom operator")
    )
    await advance_to(stack.env, t0 + 3 * H)
    status = await status_of(handle)
    assert status.state is TicketState.ROUTED_TO_SOW
    assert steps(status) == ["intake"] and not status.response_breached
    assert (await handle.describe()).typed_search_attributes.get(sa.TICKET_STATE) == (
        "routed_to_sow"
    )
    sow = stack.client.get_workflow_handle(f"sow-{status.ticket_id}")
    await sow.signal("sow_decision", SowDecision(decision="declined", by="account-manager"))
    result = await handle.result()
    assert result.state is TicketState.CLOSED and result.sow is not None
    assert result.sow.outcome.value == "declined"


async def test_sow_reminds_then_expires_without_a_decision(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket(category="consulting"))
    result = await result_of(stack.env, handle)
    assert result.state is TicketState.CLOSED and result.sow is not None
    assert result.sow.outcome.value == "expired"
    assert result.closed_at is not None
    assert t0 + timedelta(days=14) <= result.closed_at < t0 + timedelta(days=14, seconds=2)
    sow_result = await result_of(
        stack.env, stack.client.get_workflow_handle(f"sow-{result.ticket_id}")
    )
    reminded = datetime.fromisoformat(sow_result["reminded_at"])
    assert t0 + timedelta(days=2) <= reminded < t0 + timedelta(days=2, seconds=2)


# --- intake ----------------------------------------------------------------------------------


async def test_second_start_of_the_same_ticket_reports_the_existing_one(stack: Stack) -> None:
    from starter import open_ticket

    data = ticket()
    first = await open_ticket(stack.client, data, stack.task_queue)
    second = await open_ticket(stack.client, data, stack.task_queue)
    assert first.created and not second.created
    assert second.workflow_id == first.workflow_id and second.run_id == first.run_id
    handle = stack.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
    await finish(handle)
    third = await open_ticket(stack.client, data, stack.task_queue)
    assert not third.created and third.status == "completed", "closed tickets stay unique"


async def test_invalid_input_from_a_raw_client_fails_the_workflow_naming_the_field(
    stack: Stack,
) -> None:
    handle = await stack.client.start_workflow(
        "SupportTicket",
        {"ticket_id": "RAW-1", "customer_id": "acme", "tier": "gold"},
        id="ticket-RAW-1",
        task_queue=stack.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "tier" in str(failure.value.cause)


async def test_opened_at_in_the_future_is_refused(stack: Stack) -> None:
    now = await stack.env.get_current_time()
    data = ticket().model_dump(mode="json")
    data["opened_at"] = (now + timedelta(days=1)).isoformat()
    handle = await stack.client.start_workflow(
        "SupportTicket",
        data,
        id=f"ticket-{data['ticket_id']}",
        task_queue=stack.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "opened_at" in str(failure.value.cause) and "future" in str(failure.value.cause)


# --- search attributes and history -----------------------------------------------------------


async def test_search_attributes_are_upserted_only_when_they_change(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 65 * M)  # warning, final warning, breach
    await handle.signal("acknowledge", Acknowledge(agent="bob"))
    await finish(handle)
    upserts = [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    changed = [
        sorted(
            e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields.keys()
        )
        for e in upserts
    ]
    assert changed == [
        # Tier, severity, state, customer and the promised deadline were set at intake.
        # The SDK marks a ticket with each workflow.patched() id it takes, once per run:
        # that is how open tickets still on an old branch are found (docs/versioning.md).
        # A new ticket takes one id, the roll-up of every change so far (not billed).
        ["TemporalChangeVersion"],
        ["SlaBreached"],  # breach
        ["TicketState"],  # acknowledged
        ["TicketState"],  # resolved
    ]


async def test_policy_version_is_pinned_in_status_and_history(stack: Stack) -> None:
    handle = await open_ticket_at(stack, ticket())
    result = await finish(handle)
    version = load_policy(default_policy_path()).version
    assert result.policy_version == version
    # The plan, with its version, is in the history: the result of its local activity
    # (local-first-attempts: a marker's details) or of its server activity.
    results = [
        payload
        async for e in handle.fetch_history_events()
        for payloads in (
            [*e.marker_recorded_event_attributes.details.values()]
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            else [e.activity_task_completed_event_attributes.result]
        )
        for payload in payloads.payloads
    ]
    assert any(f'"policy_version":"{version}"'.encode() in p.data for p in results)


async def test_a_long_escalating_ticket_continues_as_new_without_losing_anything(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def edit(policy: dict[str, Any]) -> None:
        policy["limits"] = {"continue_as_new_after_events": 60}

    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(write_policy(tmp_path, edit)))
    env = stack.env
    t0 = await now_second(env)
    data = ticket(tier="mission_critical", severity="sev1")
    handle = await open_ticket_at(stack, data, t0)
    first_run = (await handle.describe()).run_id
    await advance_to(env, t0 + 15 * M + 12 * 5 * M + 30 * timedelta(seconds=1))
    status = await status_of(handle)
    assert (await handle.describe()).run_id != first_run, "continued as new"
    assert "continued_as_new" in [h.kind for h in status.history]
    names = steps(status)
    assert names == ["intake", "warning", "breach"] + [f"repeat-{n}" for n in range(1, 13)]
    for n, record in enumerate(status.escalations[3:], start=1):
        assert_fired(
            record,
            f"repeat-{n}",
            t0 + 15 * M + n * 5 * M,
            ["duty-manager", "incident-commander"],
        )
    await handle.signal("acknowledge", Acknowledge(agent="zoe"))
    result = await finish(handle)
    assert result.acknowledged_by == "zoe" and result.response_breached
    assert steps(result) == names
    events = await stack.ledger.events(data.ticket_id)
    keys = [e.key for e in events]
    assert len(keys) == len(set(keys))
    assert [e.kind for e in events].count("escalated") == 12


async def test_lowering_severity_of_a_breached_ticket_keeps_repeating_on_the_new_cadence(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket(tier="mission_critical", severity="sev1"))
    await advance_to(stack.env, t0 + 2 * H + 30 * timedelta(seconds=1))  # repeats to 2:00
    before = await status_of(handle)
    assert before.escalations[-1].step == "repeat-21"
    await handle.signal("change_severity", ChangeSeverity(severity="sev2", by="triage"))
    await advance_to(stack.env, t0 + 2 * H + 31 * M)
    status = await status_of(handle)
    assert status.response_due_at == t0 + H and status.response_breached
    # sev2 repeats every 15 min after its 1 h breach: the next after 2:00 is 2:15, then
    # 2:30; numbering goes on from the repeats already sent.
    sent = status.escalations[len(before.escalations) :]
    assert [(e.step, e.due_at) for e in sent] == [
        ("repeat-22", t0 + 2 * H + 15 * M),
        ("repeat-23", t0 + 2 * H + 30 * M),
    ]
    assert sent[0].targets == ["duty-manager", "incident-commander"]
    await finish(handle)


async def test_a_day_of_repeats_then_a_severity_change_fetches_a_bounded_number_of_plans(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket())
    await advance_to(stack.env, t0 + 25 * H + 40 * M)
    await handle.signal("change_severity", ChangeSeverity(severity="sev3", by="triage"))
    await advance_to(stack.env, t0 + 26 * H + 10 * M)
    status = await status_of(handle)
    repeats = [e for e in status.escalations if e.kind.value == "repeat"]
    assert [e.due_at for e in repeats[-2:]] == [t0 + 25 * H + 30 * M, t0 + 26 * H]
    assert repeats[-1].due_at == t0 + 26 * H and repeats[-1].step == f"repeat-{len(repeats)}"
    assert len(repeats) == 50  # every 30 min from 1:30 to 26:00
    plans = [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "resolve_ticket_plan"
    ]
    assert len(plans) <= 6, "intake, two repeat windows, the severity change, one more window"
    await finish(handle)


async def test_a_client_cannot_start_a_ticket_with_forged_carried_state(stack: Stack) -> None:
    t0 = await now_second(stack.env)
    status = TicketStatus(
        ticket_id="FORGED-1",
        customer_id="acme",
        tier="premium",
        severity="sev2",
        category="incident",
        state=TicketState.ACKNOWLEDGED,
        opened_at=t0,
    )
    data = ticket("FORGED-1").model_dump(mode="json")
    data["continued"] = {
        "status": status.model_dump(mode="json"),
        "plan": {
            "policy_version": "x",
            "tier": "premium",
            "severity": "sev2",
            "commercial_sla": False,
            "calendar": None,
            "time_zone": "UTC",
            "response_target": None,
            "response_due_at": None,
            "steps": [],
            "sow": {"recipients": [], "remind_after": "PT1H", "expire_after": "PT2H"},
        },
        "fired": [],
        "revision": 1,
        "counters": {},
    }
    handle = await stack.client.start_workflow(
        "SupportTicket", data, id="ticket-FORGED-1", task_queue=stack.task_queue
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "continued: internal field" in str(failure.value.cause)


async def test_a_malformed_signal_is_recorded_with_what_was_wrong_and_changes_nothing(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket())
    await handle.signal("acknowledge", {"agent": "", "mood": "grumpy"})
    await handle.signal("change_severity", {"severity": "sev9", "by": "x"})
    await advance_to(stack.env, t0 + M)
    status = await status_of(handle)
    assert status.state is TicketState.OPEN and status.severity.value == "sev2"
    rejected = {h.kind: h.detail for h in status.history if h.kind.endswith("_rejected")}
    assert rejected == {
        "acknowledge_rejected": "agent: String should have at least 1 character;"
        " mood: unknown field",
        "change_severity_rejected": "severity: Input should be 'sev1', 'sev2', 'sev3' or 'sev4'",
    }
    await handle.signal("acknowledge", {"agent": "bob"})
    result = await finish(handle)
    assert result.acknowledged_by == "bob"
    kinds = [e.kind for e in await stack.ledger.events(result.ticket_id)]
    assert kinds.count("signal_rejected") == 2


async def test_a_malformed_sow_decision_is_recorded_and_not_applied(stack: Stack) -> None:
    handle = await open_ticket_at(stack, ticket(category="consulting"))
    status = await status_of(handle)
    assert status.sow is not None
    sow = stack.client.get_workflow_handle(status.sow.workflow_id)
    await sow.signal("sow_decision", {"decision": "maybe", "by": "advisor"})
    await sow.signal("sow_decision", {"decision": "declined", "by": "advisor"})
    result = await handle.result()
    assert result.sow is not None and result.sow.outcome.value == "declined"
    sow_result = await sow.result()
    assert sow_result["rejected"] == ["decision: Input should be 'accepted' or 'declined'"]


async def test_a_customer_reply_is_recorded_once_per_message_and_changes_no_clock(
    stack: Stack,
) -> None:
    t0 = await now_second(stack.env)
    data = ticket()
    handle = await open_ticket_at(stack, data, t0)
    reply = CustomerReply(
        received_at=t0 + 5 * M, subject="Re: still failing", reference="<m1@acme.example>"
    )
    await handle.signal("customer_reply", reply)
    await handle.signal("customer_reply", reply)  # the mailbox delivered it twice
    await handle.signal(
        "customer_reply", {"received_at": "yesterday", "reference": "<m2@acme.example>"}
    )
    await advance_to(stack.env, t0 + 10 * M)
    status = await status_of(handle)
    replies = [h for h in status.history if h.kind == "customer_reply"]
    assert [(h.by, h.detail) for h in replies] == [("customer", "via email: Re: still failing")]
    assert "customer_reply_rejected" in [h.kind for h in status.history]
    assert (status.state, status.response_due_at) == (TicketState.OPEN, t0 + H)
    await finish(handle)
    events = [e for e in await stack.ledger.events(data.ticket_id) if e.kind == "customer_reply"]
    assert len(events) == 1 and events[0].detail["subject"] == "Re: still failing"


async def test_messages_that_move_no_deadline_keep_the_running_timer(stack: Stack) -> None:
    """KEEP_WAKE_TIMER: the wake-up timer is started once per wake, not once per message
    (each timer started is a billed Action); the step still fires at its exact instant."""
    t0, handle = await open_now(stack, ticket())
    for minute in (5, 6, 7):  # customer replies: recorded, no deadline moves
        await advance_to(stack.env, t0 + minute * M)
        reply = CustomerReply(
            received_at=t0 + minute * M, subject="Re: still down", reference=f"<m{minute}@x>"
        )
        await handle.signal("customer_reply", reply)
    await advance_to(stack.env, t0 + 31 * M)
    status = await status_of(handle)
    assert steps(status) == ["intake", "warning"]
    assert_fired(status.escalations[1], "warning", t0 + 30 * M, ["duty-engineer"])
    kinds = [e.event_type async for e in handle.fetch_history_events()]
    # The warning's timer, then the final warning's: none cancelled and started again.
    assert kinds.count(EventType.EVENT_TYPE_TIMER_STARTED) == 2
    assert kinds.count(EventType.EVENT_TYPE_TIMER_CANCELED) == 0
    await finish(handle)
