"""The SLA targets beyond the first response (next reply, resolution), as pure functions of
the ticket's status and its planned clocks: which clocks to plan, a plan's clocks merged
into the status, breaches, a target met, the pause while the ticket waits on the customer
and the resume that moves the deadlines, and the nearest deadline across every target.
Unit-tested without a server (tests/unit/test_targets.py); docs/ticket-life.md#targets.

Instants on a business-hours clock are computed by the plan activity (the calendar lives
there): a resume asks it for the new deadlines, passing the pause that just ended."""

from __future__ import annotations

from datetime import datetime, timedelta

from contract.models import (
    ClockRequest,
    Metric,
    PlannedClock,
    PlannedStep,
    TargetStatus,
    TicketState,
    TicketStatus,
)
from workflows.ticket.events import Event, Record

LIVE = (TicketState.OPEN, TicketState.ACKNOWLEDGED)


def label(metric: Metric) -> str:
    return metric.value.replace("_", " ")


def clocks_of(status: TicketStatus) -> list[TargetStatus]:
    """The targets beyond the first response."""
    return [t for t in status.targets if t.metric is not Metric.FIRST_RESPONSE]


def find(status: TicketStatus, metric: Metric, cycle: int) -> TargetStatus | None:
    return next((t for t in status.targets if (t.metric, t.cycle) == (metric, cycle)), None)


def requests(
    status: TicketStatus,
    now: datetime,
    pauses_ended: dict[tuple[Metric, int], datetime] | None = None,
) -> list[ClockRequest]:
    """What to plan: every clock not met yet, from its own start, with its paused time (and
    the pause that just ended, ``pauses_ended[(metric, cycle)]`` = its start, up to
    ``now``)."""
    ended = pauses_ended or {}
    found: list[ClockRequest] = []
    for t in clocks_of(status):
        if t.met_at is not None:
            continue
        pause_from = ended.get((t.metric, t.cycle))
        pause_to = now if pause_from is not None else None
        if t.resumed_at is not None and t.paused_since is not None:
            # A pause that ended while the policy could not be resolved: planned now.
            pause_from, pause_to = t.paused_since, t.resumed_at
        found.append(
            ClockRequest(
                metric=t.metric,
                cycle=t.cycle,
                started_at=t.started_at,
                paused_business=t.paused_business,
                pause_from=pause_from,
                pause_to=pause_to,
            )
        )
    return found


def unplanned(status: TicketStatus) -> list[TargetStatus]:
    """Clocks waiting for a plan the policy could not give: a pause that ended (its clock
    still stopped) or a next reply that started, both without their deadline yet."""
    return [
        t
        for t in clocks_of(status)
        if t.met_at is None and (t.resumed_at is not None or t.due_at is None)
    ]


def hold(status: TicketStatus, ended: dict[tuple[Metric, int], datetime], at: datetime) -> None:
    """The customer answered at ``at`` but the moved deadlines could not be planned: the
    clocks that paused stay stopped, their pause ending at ``at`` once a plan comes."""
    for t in clocks_of(status):
        if (t.metric, t.cycle) in ended and t.met_at is None:
            t.resumed_at = at


def settle_unplanned(status: TicketStatus) -> None:
    """A plan came but named no deadline for some held clocks (the policy has no such
    target any more): a held pause ends where it ended, a clock never planned is dropped."""
    for t in unplanned(status):
        if t.resumed_at is not None:
            _end_pause(t, t.resumed_at)
            t.resumed_at = None
    status.targets = [
        t for t in status.targets if t.metric is Metric.FIRST_RESPONSE or t.due_at is not None
    ]


def merge(status: TicketStatus, clocks: list[PlannedClock]) -> None:
    """A plan's clocks become the ticket's targets (new ones added; a planned one takes its
    new deadline and paused time; a breach stays on record)."""
    for clock in clocks:
        target = find(status, clock.metric, clock.cycle)
        if target is None:
            status.targets.append(
                TargetStatus(
                    metric=clock.metric,
                    cycle=clock.cycle,
                    target=clock.target,
                    started_at=clock.started_at,
                    due_at=clock.due_at,
                    pausable=clock.pausable,
                    paused_business=clock.paused_business,
                )
            )
            continue
        target.target, target.due_at = clock.target, clock.due_at
        target.pausable, target.paused_business = clock.pausable, clock.paused_business
        if target.resumed_at is not None:
            # Planned with the pause that ended then (``requests``): the clock runs again.
            _end_pause(target, target.resumed_at)
            target.resumed_at = None


def first_response(status: TicketStatus) -> None:
    """Keep the first response's entry (always first) in step with the ``response_*``
    fields, for a ticket with an SLA clock."""
    rest = clocks_of(status)
    if not status.commercial_sla or status.response_target is None:
        status.targets = rest
        return
    met = status.acknowledged_at
    status.targets = [
        TargetStatus(
            metric=Metric.FIRST_RESPONSE,
            target=status.response_target,
            started_at=status.opened_at,
            due_at=status.response_due_at,
            met_at=met,
            breached=status.response_breached,
            breached_at=status.breached_at,
        ),
        *rest,
    ]


def running(status: TicketStatus) -> list[TargetStatus]:
    """Clocks that run now: not met, not paused, on a live ticket."""
    if status.state not in LIVE:
        return []
    return [t for t in clocks_of(status) if t.met_at is None and t.paused_since is None]


def pending_steps(
    status: TicketStatus, clocks: list[PlannedClock], fired: set[str]
) -> list[tuple[PlannedClock, PlannedStep]]:
    """The steps of running clocks not yet sent or superseded, soonest first."""
    live = {(t.metric, t.cycle) for t in running(status)}
    steps = [
        (clock, step)
        for clock in clocks
        if (clock.metric, clock.cycle) in live
        for step in clock.steps
        if step.name not in fired
    ]
    return sorted(steps, key=lambda pair: pair[1].due_at)


def missed(status: TicketStatus, now: datetime) -> list[Event]:
    """Running clocks past their deadline become breached (the deadline in force is kept)."""
    events: list[Event] = []
    for t in running(status):
        if t.breached or t.due_at is None or now < t.due_at:
            continue
        t.breached, t.breached_at = True, t.due_at
        events.append(
            Event(
                f"{t.metric.value}_target_missed",
                t.due_at,
                detail=f"{label(t.metric)} {t.cycle} not met within {t.target}",
                record=Record(
                    f"target-missed/{t.metric.value}-{t.cycle}",
                    kind="target_missed",
                    detail={
                        "metric": t.metric.value,
                        "cycle": t.cycle,
                        "due_at": t.due_at.isoformat(),
                        "started_at": t.started_at.isoformat(),
                    },
                ),
            )
        )
    return events


def _end_pause(target: TargetStatus, at: datetime) -> None:
    if target.paused_since is not None:
        target.paused += max(timedelta(0), at - target.paused_since)
        target.paused_since = None


def met(status: TicketStatus, metrics: set[Metric], at: datetime, by: str) -> list[Event]:
    """Every open clock of ``metrics`` is met at ``at`` (a paused one stops pausing)."""
    events: list[Event] = []
    for t in clocks_of(status):
        if t.metric not in metrics or t.met_at is not None:
            continue
        # A clock met while paused is in time: its deadline moves by the pause, which
        # began before that deadline (a clock breached earlier stays breached).
        was_paused = t.paused_since is not None
        _end_pause(t, min(at, t.resumed_at or at))
        t.resumed_at = None
        t.met_at = max(at, t.started_at)
        late = t.due_at is not None and t.met_at > t.due_at and not was_paused
        if late and not t.breached:
            t.breached, t.breached_at = True, t.due_at
        events.append(
            Event(
                f"{t.metric.value}_met",
                t.met_at,
                by=by,
                detail=f"{label(t.metric)} {t.cycle}"
                + (" (late)" if t.breached else " within the target"),
                record=Record(
                    f"target-met/{t.metric.value}-{t.cycle}",
                    kind="target_met",
                    by=by,
                    detail={
                        "metric": t.metric.value,
                        "cycle": t.cycle,
                        "started_at": t.started_at.isoformat(),
                        "due_at": t.due_at.isoformat() if t.due_at else None,
                        "met_at": t.met_at.isoformat(),
                        "breached": t.breached,
                        "paused_seconds": t.paused.total_seconds(),
                        "paused_business_seconds": t.paused_business.total_seconds(),
                    },
                ),
            )
        )
    return events


def pause(status: TicketStatus, by: str, reason: str, at: datetime, n: int) -> Event:
    """The ticket waits on the customer: pausable clocks stop (the first response never)."""
    status.awaiting_customer_since, status.awaiting_customer_reason = at, reason
    stopped = [t for t in running(status) if t.pausable]
    for t in stopped:
        t.paused_since = at
    names = [f"{label(t.metric)} {t.cycle}" for t in stopped]
    return Event(
        "awaiting_customer",
        at,
        by=by,
        detail=reason + (f" (paused: {', '.join(names)})" if names else ""),
        record=Record(
            f"awaiting-customer-{n}",
            by=by,
            detail={"reason": reason, "paused": [f"{t.metric.value}-{t.cycle}" for t in stopped]},
        ),
    )


def paused(status: TicketStatus) -> dict[tuple[Metric, int], datetime]:
    """The paused clocks, each with when its pause began (a resume asks the plan to move
    its deadline by the pause, before anything changes)."""
    return {
        (t.metric, t.cycle): t.paused_since
        for t in clocks_of(status)
        if t.paused_since is not None and t.met_at is None
    }


def resume(status: TicketStatus, at: datetime, n: int) -> Event:
    """The customer answered: the wait ends and the paused clocks run again (their new
    deadlines come with the plan asked for with ``paused``)."""
    since = status.awaiting_customer_since
    assert since is not None
    waited = max(timedelta(0), at - since)
    status.customer_wait += waited
    status.awaiting_customer_since, status.awaiting_customer_reason = None, None
    for t in clocks_of(status):
        if t.met_at is None and t.resumed_at is None:
            _end_pause(t, at)
    return Event(
        "customer_resumed",
        at,
        by="customer",
        detail=f"the customer answered after {waited}",
        record=Record(
            f"customer-resumed-{n}",
            kind="customer_resumed",
            detail={"waited_seconds": waited.total_seconds(), "since": since.isoformat()},
        ),
    )


def stop_waiting(status: TicketStatus, at: datetime) -> None:
    """The ticket is done with waiting (resolved, closed idle, routed to a statement of
    work): the wait counts up to ``at``."""
    since = status.awaiting_customer_since
    if since is not None:
        status.customer_wait += max(timedelta(0), at - since)
        status.awaiting_customer_since, status.awaiting_customer_reason = None, None


def next_reply_cycle(status: TicketStatus) -> int | None:
    """The cycle of a new next-reply clock, or None while one is still open (the oldest
    unanswered reply keeps its clock)."""
    replies = [t for t in clocks_of(status) if t.metric is Metric.NEXT_REPLY]
    if any(t.met_at is None for t in replies):
        return None
    return len(replies) + 1


def nearest(status: TicketStatus) -> tuple[datetime, Metric] | None:
    """The nearest deadline among the targets not met (the first response while open),
    paused clocks left out: for the board and ops queries."""
    found: list[tuple[datetime, Metric]] = []
    if status.state is TicketState.OPEN and status.response_due_at is not None:
        found.append((status.response_due_at, Metric.FIRST_RESPONSE))
    found += [(t.due_at, t.metric) for t in running(status) if t.due_at is not None]
    return min(found, key=lambda pair: pair[0]) if found else None


def breached(status: TicketStatus) -> bool:
    """Any target breached (the first response included)."""
    return status.response_breached or any(t.breached for t in clocks_of(status))
