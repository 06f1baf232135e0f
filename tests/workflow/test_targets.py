"""The whole SLA (issue 16), on the time-skipping server with exact instants: a next reply
due after each customer reply, a resolution target with its own ladder, and a clock that
pauses while the ticket waits on the customer and moves its deadline by the time paused
(business time on a business-hours tier). docs/ticket-life.md#targets."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from contract import search_attributes as sa
from contract.models import (
    AgentReply,
    AwaitCustomer,
    ChangeSeverity,
    CustomerReply,
    Metric,
    Resolve,
    TargetStatus,
    TicketState,
    TicketStatus,
)
from harness.policy import with_targets, write_policy
from harness.processes import eventually
from policy.schema import POLICY_FILE_ENV
from tests.conftest import (
    Stack,
    advance_to,
    open_now,
    open_ticket_at,
    skip,
    status_of,
    ticket,
    until_status,
)
from tests.workflow.fakes import FakeActivities

H, M, S = timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)
CHICAGO = ZoneInfo("America/Chicago")


def target(status: TicketStatus, metric: Metric, cycle: int = 1) -> TargetStatus:
    return next(t for t in status.targets if (t.metric, t.cycle) == (metric, cycle))


def kinds(status: TicketStatus) -> list[str]:
    return [h.kind for h in status.history]


async def reply(handle: WorkflowHandle[Any, TicketStatus], at: datetime, ref: str) -> None:
    await handle.signal(
        "customer_reply", CustomerReply(received_at=at, subject="more", reference=ref)
    )


@pytest.fixture
def premium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        POLICY_FILE_ENV, str(write_policy(tmp_path, with_targets("premium", "PT4H", "P1D")))
    )


@pytest.mark.usefixtures("premium")
async def test_next_reply_is_due_after_each_customer_reply_and_met_by_an_agent_reply(
    stack: Stack, fakes: FakeActivities
) -> None:
    t0, handle = await open_now(stack, ticket(tier="premium"))
    status = await status_of(handle)
    assert [t.metric for t in status.targets] == [Metric.FIRST_RESPONSE, Metric.RESOLUTION]
    assert target(status, Metric.RESOLUTION).due_at == t0 + 24 * H
    # An agent's public answer is the first response.
    await advance_to(stack.env, t0 + 10 * M)
    answered = await handle.execute_update(
        "agent_reply",
        AgentReply(agent="alice", summary="looking", at=t0 + 10 * M),
        result_type=TicketStatus,
    )
    assert answered.state is TicketState.ACKNOWLEDGED
    assert answered.acknowledged_at == t0 + 10 * M and answered.acknowledged_by == "alice"
    assert target(answered, Metric.FIRST_RESPONSE).met_at == t0 + 10 * M
    # The customer answers: the next reply is due 4 h later.
    await advance_to(stack.env, t0 + 1 * H)
    await reply(handle, t0 + H, "<r1@acme.example>")
    status = await until_status(
        handle,
        "next reply planned",
        lambda s: any(t.metric is Metric.NEXT_REPLY for t in s.targets),
    )
    nxt = target(status, Metric.NEXT_REPLY)
    assert (nxt.started_at, nxt.due_at, nxt.met_at) == (t0 + H, t0 + 5 * H, None)
    description = await handle.describe()
    attributes = description.typed_search_attributes
    assert attributes.get(sa.SLA_NEXT_DEADLINE) == t0 + 5 * H
    assert attributes.get(sa.SLA_NEXT_METRIC) == "next_reply"
    # A second reply before the answer keeps the first one's clock.
    await advance_to(stack.env, t0 + 2 * H)
    await reply(handle, t0 + 2 * H, "<r2@acme.example>")
    await skip(stack.env, M)
    assert [
        t.cycle for t in (await status_of(handle)).targets if t.metric is Metric.NEXT_REPLY
    ] == [1]
    # The warning at 75 % of 4 h, then an answer in time.
    await advance_to(stack.env, t0 + 4 * H + M)
    assert "next_reply-1-warning" in [e.step for e in (await status_of(handle)).escalations]
    await advance_to(stack.env, t0 + 4 * H + 30 * M)
    answered = await handle.execute_update(
        "agent_reply", AgentReply(agent="alice", at=t0 + 4 * H + 30 * M), result_type=TicketStatus
    )
    nxt = target(answered, Metric.NEXT_REPLY)
    assert (nxt.met_at, nxt.breached) == (t0 + 4 * H + 30 * M, False)
    assert (await handle.describe()).typed_search_attributes.get(sa.SLA_NEXT_METRIC) == "resolution"
    # The next customer reply starts cycle 2.
    await advance_to(stack.env, t0 + 6 * H)
    await reply(handle, t0 + 6 * H, "<r3@acme.example>")
    status = await until_status(
        handle,
        "next reply 2",
        lambda s: any(t.metric is Metric.NEXT_REPLY and t.cycle == 2 for t in s.targets),
    )
    assert target(status, Metric.NEXT_REPLY, 2).due_at == t0 + 10 * H
    # Missed: the breach at the deadline, to the lead; recorded in the ledger.
    await advance_to(stack.env, t0 + 10 * H + M)
    status = await status_of(handle)
    second = target(status, Metric.NEXT_REPLY, 2)
    assert (second.breached, second.breached_at) == (True, t0 + 10 * H)
    breach = next(e for e in status.escalations if e.step == "next_reply-2-breach")
    assert (breach.due_at, breach.targets) == (t0 + 10 * H, ["support-lead"])
    assert not status.response_breached, "the first response keeps its own meaning"
    assert (await handle.describe()).typed_search_attributes.get(sa.SLA_BREACHED) is True
    missed = [e for e in await fakes.events(status.ticket_id) if e.kind == "target_missed"]
    assert [(e.detail["metric"], e.detail["cycle"], e.at) for e in missed] == [
        ("next_reply", 2, t0 + 10 * H)
    ]
    done = await handle.execute_update(
        "resolve", Resolve(by="alice", at=t0 + 10 * H + M), result_type=TicketStatus
    )
    assert target(done, Metric.NEXT_REPLY, 2).met_at == t0 + 10 * H + M
    assert target(done, Metric.RESOLUTION).met_at == t0 + 10 * H + M
    assert not target(done, Metric.RESOLUTION).breached


@pytest.mark.usefixtures("premium")
async def test_clocks_met_while_paused_are_met_in_time(stack: Stack, fakes: FakeActivities) -> None:
    """Resolved (or answered) while the ticket waits on the customer: the paused clock's
    deadline moves by the wait, so meeting it then is never late, even past the deadline
    it had when the wait began."""
    t0, handle = await open_now(stack, ticket(tier="premium"))
    await advance_to(stack.env, t0 + 10 * M)
    await handle.execute_update("agent_reply", AgentReply(agent="kim", at=t0 + 10 * M))
    await advance_to(stack.env, t0 + H)
    await reply(handle, t0 + H, "<p1@acme.example>")  # next reply due at 5 h
    await advance_to(stack.env, t0 + 2 * H)
    await handle.execute_update(
        "await_customer", AwaitCustomer(by="kim", reason="logs?", at=t0 + 2 * H)
    )
    # Past both deadlines the clocks had when the wait began (5 h and 24 h).
    await advance_to(stack.env, t0 + 30 * H)
    answered = await handle.execute_update(
        "agent_reply", AgentReply(agent="kim", at=t0 + 30 * H), result_type=TicketStatus
    )
    next_reply = target(answered, Metric.NEXT_REPLY)
    assert next_reply.met_at == t0 + 30 * H and not next_reply.breached
    resolved = await handle.execute_update(
        "resolve", Resolve(by="kim", at=t0 + 30 * H), result_type=TicketStatus
    )
    resolution = target(resolved, Metric.RESOLUTION)
    assert resolution.met_at == t0 + 30 * H and not resolution.breached
    assert resolution.paused == 28 * H and resolved.customer_wait == 28 * H
    assert not resolved.response_breached
    final = await handle.result()
    assert not any(t.breached for t in final.targets)
    assert "within the target" in next(
        h.detail or "" for h in final.history if h.kind == "resolution_met"
    )
    met = [e for e in await fakes.events(final.ticket_id) if e.kind == "target_met"]
    assert {e.detail["metric"]: e.detail["breached"] for e in met} == {
        "next_reply": False,
        "resolution": False,
    }


@pytest.mark.usefixtures("premium")
async def test_a_resolution_breach_fires_its_ladder_and_repeats_until_resolved(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket(tier="premium"))
    await advance_to(stack.env, t0 + 5 * M)
    await handle.execute_update("acknowledge", {"agent": "alice"})
    await advance_to(stack.env, t0 + 27 * H + M)
    status = await status_of(handle)
    fired = [(e.step, e.due_at) for e in status.escalations if e.step.startswith("resolution")]
    assert fired == [
        ("resolution-1-warning", t0 + 18 * H),
        ("resolution-1-breach", t0 + 24 * H),
        ("resolution-1-repeat-1", t0 + 25 * H),
        ("resolution-1-repeat-2", t0 + 26 * H),
        ("resolution-1-repeat-3", t0 + 27 * H),
    ]
    resolution = target(status, Metric.RESOLUTION)
    assert (resolution.breached, resolution.breached_at) == (True, t0 + 24 * H)
    assert "resolution_target_missed" in kinds(status)
    await handle.execute_update("resolve", Resolve(by="alice", at=t0 + 27 * H + M))
    done = await handle.result()
    assert target(done, Metric.RESOLUTION).met_at == t0 + 27 * H + M


async def test_a_pause_across_a_weekend_moves_a_standard_deadline_by_the_business_time_paused(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        POLICY_FILE_ENV, str(write_policy(tmp_path, with_targets("standard", "PT4H", "PT20H")))
    )
    start = await stack.env.get_current_time()
    # A Thursday 09:00 Chicago.
    local = start.astimezone(CHICAGO)
    days = (3 - local.weekday()) % 7 or 7
    opened = (local + timedelta(days=days)).replace(hour=9, minute=0, second=0, microsecond=0)
    opened = opened.astimezone(ZoneInfo("UTC"))
    handle = await open_ticket_at(stack, ticket(tier="standard"), opened)
    # 20 business hours from Thu 09:00 (open 08:00-18:00): 9 h on Thursday, 10 h on Friday,
    # the last hour on Monday: due Monday 09:00.
    status = await status_of(handle)
    monday_9 = opened + timedelta(days=4)  # Thu 09:00 -> Mon 09:00 (same wall time)
    assert target(status, Metric.RESOLUTION).due_at == monday_9.astimezone(CHICAGO).replace(
        hour=9
    ).astimezone(ZoneInfo("UTC"))
    await advance_to(stack.env, opened + 10 * M)
    await handle.execute_update("acknowledge", {"agent": "alice"})
    # Friday 17:00 Chicago: waiting on the customer.
    friday_17 = (
        (opened.astimezone(CHICAGO) + timedelta(days=1))
        .replace(hour=17)
        .astimezone(ZoneInfo("UTC"))
    )
    await advance_to(stack.env, friday_17)
    waiting = await handle.execute_update(
        "await_customer",
        AwaitCustomer(by="alice", reason="asked for the logs", at=friday_17),
        result_type=TicketStatus,
    )
    assert waiting.awaiting_customer_since == friday_17
    assert target(waiting, Metric.RESOLUTION).paused_since == friday_17
    assert target(waiting, Metric.FIRST_RESPONSE).paused == timedelta(0)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("await_customer", AwaitCustomer(by="bob", reason="again"))
    # Monday 10:00 Chicago the customer answers: paused Fri 17-18 and Mon 08-10, three
    # business hours (the weekend was closed anyway), so the deadline moves by 3 h.
    monday_10 = (
        (friday_17.astimezone(CHICAGO) + timedelta(days=3))
        .replace(hour=10)
        .astimezone(ZoneInfo("UTC"))
    )
    await advance_to(stack.env, monday_10)
    status = await status_of(handle)
    assert "resolution-1-breach" not in [e.step for e in status.escalations], "paused: silent"
    await reply(handle, monday_10, "<logs@acme.example>")
    status = await until_status(
        handle,
        "resumed",
        lambda s: s.awaiting_customer_since is None and "customer_resumed" in kinds(s),
    )
    resolution = target(status, Metric.RESOLUTION)
    before = monday_9.astimezone(CHICAGO).replace(hour=9).astimezone(ZoneInfo("UTC"))
    assert resolution.paused_business == 3 * H
    assert resolution.paused == monday_10 - friday_17
    assert resolution.due_at == before + 3 * H  # Monday 12:00 Chicago
    assert status.customer_wait == monday_10 - friday_17
    # The ladder moved with the deadline: the breach fires at Monday 12:00, not at 09:00.
    await advance_to(stack.env, resolution.due_at + M)
    status = await status_of(handle)
    fired = [(e.step, e.due_at) for e in status.escalations if e.step.startswith("resolution")]
    friday_14 = friday_17 - 3 * H  # 15 of the 20 business hours: 9 on Thursday, 6 on Friday
    assert fired == [
        ("resolution-1-warning", friday_14),
        ("resolution-1-breach", before + 3 * H),
    ]
    assert target(status, Metric.RESOLUTION).breached_at == before + 3 * H
    await handle.execute_update("resolve", Resolve(by="alice"))
    await handle.result()


async def test_a_retriage_during_a_pause_recomputes_from_the_start_keeping_the_paused_time(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def edit(policy: dict[str, Any]) -> None:
        with_targets("premium", None, "P1D")(policy)
        policy["tiers"]["premium"]["resolution"]["severities"] = {"sev1": "PT8H"}

    monkeypatch.setenv(POLICY_FILE_ENV, str(write_policy(tmp_path, edit)))
    t0, handle = await open_now(stack, ticket(tier="premium", severity="sev2"))
    await advance_to(stack.env, t0 + 5 * M)
    await handle.execute_update("acknowledge", {"agent": "alice"})
    await advance_to(stack.env, t0 + 2 * H)
    await handle.execute_update(
        "await_customer", AwaitCustomer(by="alice", reason="repro?", at=t0 + 2 * H)
    )
    await advance_to(stack.env, t0 + 3 * H)
    raised = await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev1", by="lead"), result_type=TicketStatus
    )
    resolution = target(raised, Metric.RESOLUTION)
    # 8 h from the start; still paused (the pause so far is added at resume).
    assert (resolution.target, resolution.due_at) == (8 * H, t0 + 8 * H)
    assert resolution.paused_since == t0 + 2 * H
    assert raised.response_due_at == t0 + H, "the first response's deadline is history"
    await advance_to(stack.env, t0 + 5 * H)
    await reply(handle, t0 + 5 * H, "<repro@acme.example>")
    status = await until_status(
        handle, "resumed", lambda s: target(s, Metric.RESOLUTION).paused_since is None
    )
    resolution = target(status, Metric.RESOLUTION)
    assert (resolution.paused, resolution.due_at) == (3 * H, t0 + 11 * H)
    # Lowered again: 1 day from the start, the 3 h paused kept.
    lowered = await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev3", by="lead"), result_type=TicketStatus
    )
    assert target(lowered, Metric.RESOLUTION).due_at == t0 + 27 * H
    await handle.execute_update("resolve", Resolve(by="alice"))
    await handle.result()


async def test_a_community_ticket_waiting_on_the_customer_still_closes_when_idle(
    stack: Stack,
) -> None:
    t0, handle = await open_now(stack, ticket(tier="community", customer_id="someone"))
    await advance_to(stack.env, t0 + H)
    waiting = await handle.execute_update(
        "await_customer",
        AwaitCustomer(by="mod", reason="which version?", at=t0 + H),
        result_type=TicketStatus,
    )
    assert waiting.awaiting_customer_since == t0 + H and waiting.targets == []
    await advance_to(stack.env, t0 + H + 14 * 24 * H + M)
    closed = await handle.result()
    # Idle for 14 days after its last activity (the wait itself): closed as any idle one.
    assert closed.state is TicketState.CLOSED and closed.closed_at is not None
    # Closed by the idle timer at 14 days after the wait began, to the second: the close is
    # stamped with the workflow's clock when the timer wakes it, which the time-skipping
    # server sets a few milliseconds past the timer.
    assert closed.closed_at.replace(microsecond=0) == t0 + H + 14 * 24 * H
    assert closed.history[-1].kind == "closed_idle"
    # The wait ends with the ticket and counts up to the close (14 days, to the second).
    assert closed.awaiting_customer_since is None and closed.awaiting_customer_reason is None
    assert closed.customer_wait.total_seconds() // 1 == (14 * 24 * H).total_seconds()


async def test_tickets_under_a_policy_without_more_targets_behave_as_before(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket(tier="premium"))
    status = await status_of(handle)
    assert [t.metric for t in status.targets] == [Metric.FIRST_RESPONSE]
    await reply(handle, t0, "<x@acme.example>")
    await skip(stack.env, M)
    assert [t.metric for t in (await status_of(handle)).targets] == [Metric.FIRST_RESPONSE]
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.SLA_NEXT_DEADLINE) is None
    await handle.execute_update("resolve", Resolve(by="alice"))
    await handle.result()


async def test_a_resolution_clock_survives_continue_as_new_without_repeating_a_step(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def edit(policy: dict[str, Any]) -> None:
        with_targets("premium", resolution="PT4H")(policy)
        policy["limits"] = {"continue_as_new_after_events": 60}

    monkeypatch.setenv(POLICY_FILE_ENV, str(write_policy(tmp_path, edit)))
    t0, handle = await open_now(stack, ticket(tier="premium"))
    first_run = (await handle.describe()).run_id
    await advance_to(stack.env, t0 + 5 * M)
    await handle.execute_update("acknowledge", {"agent": "alice"})
    await advance_to(stack.env, t0 + 20 * H + M)
    status = await status_of(handle)
    assert (await handle.describe()).run_id != first_run, "continued as new"
    fired = [e.step for e in status.escalations if e.step.startswith("resolution")]
    assert fired == [
        "resolution-1-warning",
        "resolution-1-breach",
        *[f"resolution-1-repeat-{n}" for n in range(1, 17)],
    ]
    assert target(status, Metric.RESOLUTION).breached_at == t0 + 4 * H
    await handle.execute_update("resolve", Resolve(by="alice", at=t0 + 20 * H + M))
    done = await handle.result()
    assert target(done, Metric.RESOLUTION).met_at == t0 + 20 * H + M


async def test_a_resume_the_policy_cannot_plan_keeps_the_clock_stopped_until_it_can(
    stack: Stack, fakes: FakeActivities, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer answers while the policy cannot be resolved (a worker restarted without
    its versions while the file is broken): the paused resolution neither loses its pause
    nor runs on its old deadline; the try after the file is fixed moves it by exactly the
    wait, and the next reply the answer started gets its deadline from the answer."""
    policy = write_policy(tmp_path, with_targets("premium", "PT4H", "P1D"))
    monkeypatch.setenv(POLICY_FILE_ENV, str(policy))
    env = stack.env
    t0, handle = await open_now(stack, ticket(tier="premium"))
    await advance_to(env, t0 + 10 * M)
    await handle.execute_update("agent_reply", AgentReply(agent="kim", at=t0 + 10 * M))
    await advance_to(env, t0 + 2 * H)
    await handle.execute_update(
        "await_customer", AwaitCustomer(by="kim", reason="logs?", at=t0 + 2 * H)
    )
    await advance_to(env, t0 + 2 * H + 5 * M)
    fakes.forget_policy_versions()
    text = policy.read_text()
    policy.write_text("version: broken\ntiers: [\n")

    await advance_to(env, t0 + 5 * H)
    await reply(handle, t0 + 5 * H, "<logs@acme.example>")
    held = await until_status(handle, "the failed plan", lambda s: "policy_unavailable" in kinds(s))
    resolution = target(held, Metric.RESOLUTION)
    # The wait is over, but the clock stays stopped with its pause ending at the answer.
    assert held.awaiting_customer_since is None and held.customer_wait == 3 * H
    assert (resolution.paused_since, resolution.resumed_at) == (t0 + 2 * H, t0 + 5 * H)
    assert resolution.due_at == t0 + 24 * H and not resolution.breached
    pending = target(held, Metric.NEXT_REPLY)
    assert (pending.started_at, pending.due_at) == (t0 + 5 * H, None)

    # Fixed between two tries (one a minute): the next try plans both.
    await advance_to(env, t0 + 5 * H + 2 * M + 30 * S)
    policy.write_text(text)
    await advance_to(env, t0 + 5 * H + 4 * M)
    status = await until_status(
        handle, "the clocks planned", lambda s: "clocks_planned" in kinds(s)
    )
    resolution = target(status, Metric.RESOLUTION)
    assert resolution.due_at == t0 + 27 * H  # 24 h plus the 3 h waited
    assert (resolution.paused, resolution.paused_since, resolution.resumed_at) == (
        3 * H,
        None,
        None,
    )
    assert target(status, Metric.NEXT_REPLY).due_at == t0 + 9 * H  # 4 h from the answer
    planned = next(h for h in status.history if h.kind == "clocks_planned")
    assert t0 + 5 * H + 3 * M <= planned.at < t0 + 5 * H + 3 * M + S
    failures = [
        h.at.replace(microsecond=0) for h in status.history if h.kind == "policy_unavailable"
    ]
    assert failures == [t0 + 5 * H, t0 + 5 * H + M, t0 + 5 * H + 2 * M]
    assert not any(t.breached for t in status.targets)
    await handle.execute_update("resolve", Resolve(by="kim"))
    await handle.result()


@pytest.mark.usefixtures("premium")
async def test_a_ticket_routed_to_a_statement_of_work_ends_its_wait_there(stack: Stack) -> None:
    t0, handle = await open_now(stack, ticket(tier="premium"))
    await advance_to(stack.env, t0 + 10 * M)
    await handle.execute_update("agent_reply", AgentReply(agent="bob", at=t0 + 10 * M))
    await handle.execute_update(
        "await_customer", AwaitCustomer(by="bob", reason="which release?", at=t0 + 10 * M)
    )
    await advance_to(stack.env, t0 + 70 * M)
    routed = await handle.execute_update(
        "mark_out_of_scope",
        {"by": "bob", "reason": "a feature"},
        result_type=TicketStatus,
    )
    child = stack.client.get_workflow_handle(f"sow-{handle.id.removeprefix('ticket-')}")
    await eventually(f"{child.id} to start", child.describe, every=0.02, ignoring=RPCError)
    assert routed.state is TicketState.ROUTED_TO_SOW
    assert routed.awaiting_customer_since is None
    # The hour waited, to the second (the route is stamped when the update is applied).
    assert routed.customer_wait // S == 60 * M // S


@pytest.mark.usefixtures("premium")
async def test_the_new_actions_are_refused_once_the_ticket_left_the_sla_path(stack: Stack) -> None:
    handle = await open_ticket_at(stack, ticket(tier="premium"))
    await handle.execute_update("mark_out_of_scope", {"by": "alice", "reason": "a feature"})
    child = stack.client.get_workflow_handle(f"sow-{handle.id.removeprefix('ticket-')}")
    await eventually(f"{child.id} to start", child.describe, every=0.02, ignoring=RPCError)
    for name, payload in (
        ("agent_reply", AgentReply(agent="bob")),
        ("await_customer", AwaitCustomer(by="bob", reason="r")),
    ):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(name, payload)
        assert f"cannot {name}: ticket" in str(refused.value.cause), name
    status = await status_of(handle)
    assert status.awaiting_customer_since is None
    assert all(t.met_at is None for t in status.targets if t.metric is Metric.RESOLUTION)
