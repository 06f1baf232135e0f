"""The ladder's rules without a server: pending steps, the next wake, send or supersede."""

from __future__ import annotations

from datetime import timedelta

from contract.models import (
    HistoryEntry,
    PlannedStep,
    Severity,
    SowTerms,
    StepKind,
    TicketPlan,
    TicketState,
    Tier,
)
from tests.unit.tickets import T0
from tests.unit.tickets import ticket as status
from workflows.ticket import ladder
from workflows.ticket.ladder import Progress


def step(name: str, kind: StepKind, minutes: int) -> PlannedStep:
    return PlannedStep(name=name, kind=kind, due_at=T0 + timedelta(minutes=minutes), recipients=[])


def plan(*steps: PlannedStep, idle: timedelta | None = None) -> TicketPlan:
    return TicketPlan(
        policy_version="v1",
        tier=Tier.PREMIUM,
        severity=Severity.SEV2,
        commercial_sla=True,
        calendar=None,
        time_zone="UTC",
        response_target=timedelta(hours=1),
        response_due_at=T0 + timedelta(hours=1),
        steps=list(steps),
        idle_close_after=idle,
        sow=SowTerms(recipients=[], remind_after=timedelta(days=1), expire_after=timedelta(days=7)),
    )


INTAKE = step("intake", StepKind.INTAKE, 0)
WARNING = step("warning", StepKind.WARNING, 45)
BREACH = step("breach", StepKind.BREACH, 60)
REPEATS = [step(f"repeat-{n}", StepKind.REPEAT, 60 + 30 * n) for n in (1, 2, 3)]


def test_pending_steps_are_those_not_fired_in_due_order() -> None:
    progress = Progress()
    ladder_plan = plan(BREACH, INTAKE, WARNING, *REPEATS)
    assert [s.name for s in progress.pending(ladder_plan)] == [
        "intake",
        "warning",
        "breach",
        "repeat-1",
        "repeat-2",
        "repeat-3",
    ]
    progress.done(INTAKE)
    progress.done(REPEATS[1])  # repeats count by instant: repeat-1 is past the horizon too
    assert [s.name for s in progress.pending(ladder_plan)] == ["warning", "breach", "repeat-3"]
    assert progress.repeat_horizon == REPEATS[1].due_at


def test_repeats_are_numbered_as_sent() -> None:
    progress = Progress(repeats_sent=4)
    assert progress.sent_name(REPEATS[0]) == "repeat-5"
    assert progress.sent_name(REPEATS[2]) == "repeat-6"
    assert progress.sent_name(WARNING) == "warning"
    assert progress.repeats_sent == 6


def test_one_due_step_is_sent() -> None:
    assert ladder.triage([WARNING], breach_recorded=False) == [(WARNING, False)]


def test_overdue_warning_after_the_breach_and_older_repeats_are_superseded() -> None:
    due = [WARNING, BREACH, *REPEATS]
    assert [(s.name, superseded) for s, superseded in ladder.triage(due, True)] == [
        ("warning", True),
        ("breach", False),
        ("repeat-1", True),
        ("repeat-2", True),
        ("repeat-3", True),  # the breach in the same batch supersedes every repeat
    ]
    assert [(s.name, x) for s, x in ladder.triage(REPEATS, True)] == [
        ("repeat-1", True),
        ("repeat-2", True),
        ("repeat-3", False),  # only the latest repeat goes out
    ]


def test_next_wake_is_the_earliest_of_step_deadline_idle_and_retry() -> None:
    ticket = status()
    assert ladder.next_wake(ticket, [WARNING], None, None) == WARNING.due_at
    assert ladder.next_wake(ticket, [], None, None) == ticket.response_due_at
    retry = T0 + timedelta(minutes=5)
    assert ladder.next_wake(ticket, [WARNING], None, retry) == retry
    breached = status(response_breached=True)
    assert ladder.next_wake(breached, [REPEATS[0]], None, None) == REPEATS[0].due_at
    acknowledged = status(state=TicketState.ACKNOWLEDGED)
    idle = T0 + timedelta(days=3)
    assert ladder.next_wake(acknowledged, [WARNING], idle, retry) == idle
    assert ladder.next_wake(acknowledged, [WARNING], None, retry) is None


def test_idle_close_counts_from_the_last_activity() -> None:
    community = plan(idle=timedelta(days=7))
    ticket = status()
    assert ladder.idle_close_at(ticket, community) == T0 + timedelta(days=7)
    later = T0 + timedelta(days=2)
    ticket.history.append(HistoryEntry(at=later, kind="customer_reply"))
    assert ladder.idle_close_at(ticket, community) == later + timedelta(days=7)
    assert ladder.idle_close_at(ticket, plan()) is None
    assert ladder.idle_close_at(status(state=TicketState.RESOLVED), community) is None


def test_rank_orders_severities() -> None:
    assert [ladder.rank(s) for s in (Severity.SEV1, Severity.SEV4)] == [1, 4]
