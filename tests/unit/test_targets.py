"""The targets beyond the first response without a server (workflows/ticket/targets.py) and
their planning (policy/plan.py): deadlines on the ticket's calendar, the time paused added,
breaches, a target met, the pause and the resume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from contract.models import (
    ClockRequest,
    Metric,
    PlannedClock,
    TicketInput,
    TicketState,
)
from harness.policy import TARGET_LADDER, policy_text, with_targets
from policy.load import parse_policy
from policy.plan import resolve_plan
from policy.schema import PolicyError
from tests.unit.tickets import T0, ticket
from workflows.ticket import targets

H = timedelta(hours=1)
CHICAGO = ZoneInfo("America/Chicago")
LADDER = [
    *TARGET_LADDER[:2],
    {**TARGET_LADDER[2], "repeat_every": "PT2H", "max_repeats": 2},
]
LADDER[0] = {**LADDER[0], "at": {"share": 0.5}}


def policy_with(tier: str, **clocks: dict[str, Any]) -> Any:
    def edit(policy: dict[str, Any]) -> None:
        with_targets(tier)(policy)
        for metric, spec in clocks.items():
            policy["tiers"][tier][metric] = {"ladder": LADDER, **spec}

    return parse_policy(policy_text(edit), "policy.yaml")


def data(tier: str) -> TicketInput:
    return TicketInput(ticket_id="T-1", customer_id="acme", tier=tier, severity="sev2", subject="s")


def test_a_new_ticket_plans_its_resolution_from_opening_with_its_own_ladder() -> None:
    policy = policy_with("premium", resolution={"target": "PT8H", "severities": {"sev1": "PT4H"}})
    plan = resolve_plan(policy, data("premium"), None, T0)
    [clock] = plan.clocks
    assert (clock.metric, clock.cycle, clock.due_at, clock.pausable) == (
        Metric.RESOLUTION,
        1,
        T0 + 8 * H,
        True,
    )
    assert [(s.name, s.due_at) for s in clock.steps] == [
        ("resolution-1-warning", T0 + 4 * H),
        ("resolution-1-breach", T0 + 8 * H),
        ("resolution-1-repeat-1", T0 + 10 * H),
        ("resolution-1-repeat-2", T0 + 12 * H),
    ]
    assert not clock.more_steps
    sev1 = resolve_plan(policy, data("premium"), None, T0).model_copy()
    assert resolve_plan(policy, data("premium"), "sev1", T0).clocks[0].due_at == T0 + 4 * H
    assert sev1.next_reply_target is None


def test_a_pause_that_ended_moves_a_business_hours_deadline_by_the_business_time_lost() -> None:
    policy = policy_with("standard", next_reply={"target": "PT4H"})
    opened = datetime(2026, 12, 10, 9, tzinfo=CHICAGO).astimezone(UTC)  # a Thursday
    friday_17 = datetime(2026, 12, 11, 17, tzinfo=CHICAGO).astimezone(UTC)
    monday_10 = datetime(2026, 12, 14, 10, tzinfo=CHICAGO).astimezone(UTC)
    started = datetime(2026, 12, 11, 16, tzinfo=CHICAGO).astimezone(UTC)  # Fri 16:00
    request = ClockRequest(
        metric=Metric.NEXT_REPLY, started_at=started, pause_from=friday_17, pause_to=monday_10
    )
    [clock] = resolve_plan(policy, data("standard"), None, opened, clocks=[request]).clocks
    # 4 business hours from Fri 16:00 is Mon 10:00; the 3 business hours paused (Fri 17-18,
    # Mon 08-10) move it to Mon 13:00.
    assert clock.paused_business == 3 * H
    assert clock.due_at == datetime(2026, 12, 14, 13, tzinfo=CHICAGO).astimezone(UTC)
    again = request.model_copy(
        update={"paused_business": clock.paused_business, "pause_from": None, "pause_to": None}
    )
    [same] = resolve_plan(policy, data("standard"), None, opened, clocks=[again]).clocks
    assert same.due_at == clock.due_at, "a re-plan keeps the time paused"


def test_no_clock_without_a_commercial_sla_or_for_out_of_scope_work() -> None:
    policy = policy_with("premium", resolution={"target": "PT8H"})
    consulting = data("premium").model_copy(update={"category": "consulting"})
    assert resolve_plan(policy, consulting, None, T0).clocks == []
    with pytest.raises(PolicyError, match="without a commercial SLA"):
        policy_with("community", resolution={"target": "PT8H"})


def test_a_clock_ladder_needs_its_breach_at_the_target() -> None:
    bad = [dict(step) for step in LADDER]
    bad[1]["at"] = {"share": 0.9}
    with pytest.raises(PolicyError, match="resolution"):
        policy_with("premium", resolution={"target": "PT8H", "ladder": bad})


def planned(metric: Metric, due: datetime, cycle: int = 1, pausable: bool = True) -> PlannedClock:
    return PlannedClock(
        metric=metric,
        cycle=cycle,
        target=due - T0,
        pausable=pausable,
        started_at=T0,
        due_at=due,
        steps=[],
    )


def test_a_clock_breaches_at_its_deadline_and_a_late_answer_keeps_the_breach() -> None:
    status = ticket(state=TicketState.ACKNOWLEDGED, response_target=H)
    targets.merge(status, [planned(Metric.NEXT_REPLY, T0 + 4 * H)])
    assert targets.missed(status, T0 + 4 * H - timedelta(seconds=1)) == []
    [event] = targets.missed(status, T0 + 4 * H)
    assert (event.kind, event.at) == ("next_reply_target_missed", T0 + 4 * H)
    assert event.record is not None and event.record.kind == "target_missed"
    [met] = targets.met(status, {Metric.NEXT_REPLY}, T0 + 5 * H, "ana")
    target = targets.find(status, Metric.NEXT_REPLY, 1)
    assert target is not None
    assert (target.met_at, target.breached, target.breached_at) == (T0 + 5 * H, True, T0 + 4 * H)
    assert met.record is not None and met.record.detail["breached"] is True
    assert targets.breached(status) and not status.response_breached


def test_a_pause_stops_pausable_clocks_only_and_a_resume_counts_the_wait() -> None:
    status = ticket(state=TicketState.ACKNOWLEDGED, response_target=H)
    targets.merge(
        status,
        [
            planned(Metric.RESOLUTION, T0 + 8 * H),
            planned(Metric.NEXT_REPLY, T0 + 4 * H, pausable=False),
        ],
    )
    targets.pause(status, "ana", "logs?", T0 + H, 1)
    assert targets.paused(status) == {(Metric.RESOLUTION, 1): T0 + H}
    assert [t.metric for t in targets.running(status)] == [Metric.NEXT_REPLY]
    assert targets.missed(status, T0 + 9 * H)[0].kind == "next_reply_target_missed"
    event = targets.resume(status, T0 + 3 * H, 1)
    assert event.kind == "customer_resumed" and status.awaiting_customer_since is None
    resolution = targets.find(status, Metric.RESOLUTION, 1)
    assert resolution is not None
    assert (resolution.paused, resolution.paused_since) == (2 * H, None)
    assert status.customer_wait == 2 * H


def test_a_resolution_the_policy_marks_not_pausable_runs_on_while_the_ticket_waits() -> None:
    # Premium (24x7): an 8 h resolution that never pauses, a 4 h next reply that does.
    policy = policy_with(
        "premium", resolution={"target": "PT8H", "pausable": False}, next_reply={"target": "PT4H"}
    )
    [resolution] = resolve_plan(policy, data("premium"), None, T0).clocks
    reply = ClockRequest(metric=Metric.NEXT_REPLY, started_at=T0 + H)
    [next_reply] = resolve_plan(policy, data("premium"), None, T0, clocks=[reply]).clocks
    assert (resolution.metric, resolution.pausable, resolution.due_at) == (
        Metric.RESOLUTION,
        False,
        T0 + 8 * H,
    )
    assert (next_reply.pausable, next_reply.due_at) == (True, T0 + 5 * H)
    status = ticket(state=TicketState.ACKNOWLEDGED, response_target=H)
    targets.merge(status, [resolution, next_reply])
    waiting = targets.pause(status, "ana", "logs?", T0 + 2 * H, 1)
    assert waiting.record is not None and waiting.record.detail["paused"] == ["next_reply-1"]
    assert targets.paused(status) == {(Metric.NEXT_REPLY, 1): T0 + 2 * H}
    assert [t.metric for t in targets.running(status)] == [Metric.RESOLUTION]
    # Its steps stay due (the paused next reply's do not), and it breaches at its deadline
    # while the ticket still waits.
    pending = targets.pending_steps(status, [resolution, next_reply], set())
    assert [step.name for _, step in pending][:2] == ["resolution-1-warning", "resolution-1-breach"]
    assert {clock.metric for clock, _ in pending} == {Metric.RESOLUTION}
    [missed] = targets.missed(status, T0 + 8 * H)
    assert (missed.kind, missed.at) == ("resolution_target_missed", T0 + 8 * H)
    # The customer answers 9 h in: only the next reply's deadline moves (by the 7 h paused).
    ended = targets.paused(status)
    targets.resume(status, T0 + 9 * H, 1)
    after = resolve_plan(
        policy, data("premium"), None, T0, clocks=targets.requests(status, T0 + 9 * H, ended)
    ).clocks
    assert [(c.metric, c.due_at, c.paused_business) for c in after] == [
        (Metric.RESOLUTION, T0 + 8 * H, timedelta(0)),
        (Metric.NEXT_REPLY, T0 + 12 * H, 7 * H),
    ]
    target = targets.find(status, Metric.RESOLUTION, 1)
    assert target is not None and (target.paused, target.breached) == (timedelta(0), True)


def test_the_nearest_deadline_is_the_first_response_while_open_then_the_running_clocks() -> None:
    status = ticket(response_target=H)
    targets.merge(status, [planned(Metric.RESOLUTION, T0 + 8 * H)])
    assert targets.nearest(status) == (T0 + H, Metric.FIRST_RESPONSE)
    status.state = TicketState.ACKNOWLEDGED
    targets.merge(status, [planned(Metric.NEXT_REPLY, T0 + 5 * H)])
    assert targets.nearest(status) == (T0 + 5 * H, Metric.NEXT_REPLY)
    targets.pause(status, "ana", "logs?", T0 + 2 * H, 1)
    assert targets.nearest(status) is None, "everything waits on the customer"


def test_a_new_next_reply_clock_waits_until_the_open_one_is_answered() -> None:
    status = ticket(state=TicketState.ACKNOWLEDGED)
    assert targets.next_reply_cycle(status) == 1
    targets.merge(status, [planned(Metric.NEXT_REPLY, T0 + 4 * H)])
    assert targets.next_reply_cycle(status) is None
    targets.met(status, {Metric.NEXT_REPLY}, T0 + H, "ana")
    assert targets.next_reply_cycle(status) == 2


def test_the_first_response_entry_follows_the_response_fields() -> None:
    status = ticket(response_target=H, response_breached=True, breached_at=T0 + H)
    targets.first_response(status)
    [first] = status.targets
    assert (first.metric, first.due_at, first.breached, first.met_at) == (
        Metric.FIRST_RESPONSE,
        T0 + H,
        True,
        None,
    )
    status.commercial_sla = False
    targets.first_response(status)
    assert status.targets == []
