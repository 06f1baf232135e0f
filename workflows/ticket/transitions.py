"""The ticket's state transitions, as pure functions: each changes the ``TicketStatus`` it
is given and returns the events that record the change (history entry and ledger record).
No Temporal calls: the workflow emits the events, and these are unit-tested without a
server (tests/unit/test_transitions.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from contract.models import (
    Acknowledge,
    AdoptPolicy,
    AgentReply,
    ChangeSeverity,
    CustomerReply,
    PlannedStep,
    RejectedSignal,
    Resolve,
    Severity,
    SowResult,
    SowStatus,
    TicketState,
    TicketStatus,
    Tier,
    VerifyRequester,
)
from workflows.ticket.events import Event, Record, iso

# The agent actions and the states each may apply in (updates are refused otherwise).
ACTION_STATES: Mapping[str, tuple[TicketState, ...]] = MappingProxyType(
    {
        "acknowledge": (TicketState.OPEN,),
        "change_severity": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "mark_out_of_scope": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "resolve": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "adopt_policy": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "agent_reply": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "await_customer": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "verify_requester": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
    }
)


def refusal(status: TicketStatus | None, action: str) -> str | None:
    """Why ``action`` cannot apply to the ticket as it stands, or None (a ticket still
    planning its SLA is open)."""
    if status is None or status.state in ACTION_STATES[action]:
        return None
    detail = f"ticket {status.ticket_id} is {status.state.value}"
    if status.state is TicketState.ACKNOWLEDGED and status.acknowledged_at:
        detail += f" (by {status.acknowledged_by} at {status.acknowledged_at.isoformat()})"
    return f"cannot {action}: {detail}"


def acted_at(stamped: datetime | None, received: datetime, opened_at: datetime) -> datetime:
    """When an agent's action counts: the instant the surface stamped, but never later than
    the ticket's own clock and never before the ticket opened."""
    if stamped is None:
        return received
    return max(min(stamped, received), opened_at)


def breach(status: TicketStatus, now: datetime, at_due_counts: bool = True) -> list[Event]:
    """The response target is missed once the clock passes the deadline (at the deadline
    itself unless an acknowledgement of that instant is being applied)."""
    due = status.response_due_at
    if (
        status.state is not TicketState.OPEN
        or due is None
        or status.response_breached
        or not (now >= due if at_due_counts else now > due)
    ):
        return []
    status.response_breached, status.breached_at = True, due
    return [
        Event("response_target_missed", due, detail="no acknowledgement within the response target")
    ]


def withdraw_breach(status: TicketStatus, at: datetime) -> list[Event]:
    """An acknowledgement stamped before the deadline that was processed after the breach
    was recorded (the surface's message waited out an outage): the response was in time,
    so the breach is withdrawn and the record says so."""
    if not status.response_breached or status.breached_at is None or at > status.breached_at:
        return []
    status.response_breached, status.breached_at = False, None
    return [
        Event(
            "breach_withdrawn",
            at,
            detail="acknowledged before the deadline; the breach was recorded before the"
            " acknowledgement was processed",
        )
    ]


def acknowledge(
    status: TicketStatus, ack: Acknowledge, at: datetime, received: datetime, withdrawn: bool
) -> Event:
    """An open ticket is acknowledged at ``at`` (processed at ``received``)."""
    status.state = TicketState.ACKNOWLEDGED
    status.acknowledged_at, status.acknowledged_by = at, ack.agent
    status.acknowledged_received_at = received
    verdict = "breached" if status.response_breached else "met"
    detail: str | None = f"response target {verdict}" if status.commercial_sla else ack.note
    if at != received:
        detail = f"{detail or 'acknowledged'}; acted at {at.isoformat()}, processed at" + (
            f" {received.isoformat()}"
        )
    overrun = status.overrun(received)
    return Event(
        "acknowledged",
        at,
        by=ack.agent,
        detail=detail,
        record=Record(
            "acknowledged",
            by=ack.agent,
            detail={
                "note": ack.note,
                "response_breached": status.response_breached,
                "overrun_seconds": overrun.total_seconds() if overrun is not None else None,
                "received_at": iso(received) if at != received else None,
                "breach_withdrawn": withdrawn or None,
            },
        ),
    )


def acknowledge_repeated(
    status: TicketStatus, ack: Acknowledge, received: datetime, n: int
) -> Event:
    return Event(
        "acknowledge_repeated",
        received,
        by=ack.agent,
        detail=f"ticket already {status.state.value}; nothing changed",
        record=Record(
            f"acknowledge-repeated-{n}",
            kind="acknowledge_repeated",
            by=ack.agent,
            detail={"state": status.state.value},
        ),
    )


def severity_changed(
    status: TicketStatus, change: ChangeSeverity, before: Severity, at: datetime, n: int
) -> Event:
    """The ticket's severity moves from ``before`` (its plan, when open, was applied
    already)."""
    status.severity = change.severity
    return Event(
        "severity_changed",
        at,
        by=change.by,
        detail=f"{before.value} -> {change.severity.value}"
        + (f": {change.reason}" if change.reason else ""),
        record=Record(
            f"severity-changed-{n}",
            kind="severity_changed",
            by=change.by,
            detail={
                "before": before.value,
                "after": change.severity.value,
                "reason": change.reason,
                "response_due_at": iso(status.response_due_at),
            },
        ),
    )


def policy_adopted(
    status: TicketStatus,
    adopt: AdoptPolicy,
    before: str | None,
    due_before: datetime | None,
    at: datetime,
    n: int,
) -> Event:
    """The ticket moved from policy ``before`` to the version it now runs under (its plan
    applied already; the deadline moves only while it is open)."""
    return Event(
        "policy_adopted",
        at,
        by=adopt.by,
        detail=f"{before} -> {status.policy_version}; response due"
        f" {iso(due_before)} -> {iso(status.response_due_at)}"
        + (f": {adopt.reason}" if adopt.reason else ""),
        record=Record(
            f"policy-adopted-{n}",
            kind="policy_adopted",
            by=adopt.by,
            detail={
                "before": before,
                "after": status.policy_version,
                "reason": adopt.reason,
                "response_due_at_before": iso(due_before),
                "response_due_at": iso(status.response_due_at),
            },
        ),
    )


def requester_verified(
    status: TicketStatus, verify: VerifyRequester, before: Tier, at: datetime
) -> list[Event]:
    """The requester of a Community ticket confirmed their address: the ticket is
    ``verify.customer_id``'s now (its new plan applied already, deadlines from when it
    opened). An acknowledgement given before it counts as the first response, late if it
    came after the new deadline."""
    status.customer_id = verify.customer_id
    events = [
        Event(
            "requester_verified",
            at,
            by=verify.by,
            detail=f"{verify.address} confirmed: the contract of {verify.customer_id},"
            f" {before.value} -> {status.tier.value}; response due"
            f" {iso(status.response_due_at)} (from the submission)",
            record=Record(
                "requester-verified",
                kind="requester_verified",
                by=verify.by,
                detail={
                    "customer_id": verify.customer_id,
                    "tier_before": before.value,
                    "tier": status.tier.value,
                    "response_due_at": iso(status.response_due_at),
                },
            ),
        )
    ]
    due, acked = status.response_due_at, status.acknowledged_at
    if status.state is not TicketState.OPEN and due and acked and acked > due:
        status.response_breached, status.breached_at = True, due
        events.append(
            Event(
                "response_target_missed",
                due,
                detail="acknowledged after the contract's response target (the requester"
                " confirmed later)",
            )
        )
    return events


def resolve(status: TicketStatus, resolve: Resolve, at: datetime) -> Event:
    status.state = TicketState.RESOLVED
    status.resolved_at, status.resolved_by = at, resolve.by
    status.next_step, status.next_step_due_at = None, None
    return Event(
        "resolved",
        at,
        by=resolve.by,
        detail=resolve.summary,
        record=Record("resolved", by=resolve.by, detail={"summary": resolve.summary}),
    )


def close_idle(status: TicketStatus, now: datetime) -> Event:
    status.state, status.closed_at = TicketState.CLOSED, now
    return Event(
        "closed_idle",
        now,
        detail="no activity; community tickets close when idle",
        record=Record("closed", kind="closed_idle"),
    )


def route_to_sow(status: TicketStatus, reason: str, by: str, at: datetime, child_id: str) -> Event:
    status.state = TicketState.ROUTED_TO_SOW
    status.out_of_scope = True
    status.next_step, status.next_step_due_at = None, None
    status.sow = SowStatus(workflow_id=child_id, reason=reason)
    return Event(
        "out_of_scope",
        at,
        by=by,
        detail=reason,
        record=Record(
            "out-of-scope",
            kind="out_of_scope",
            by=by,
            detail={"reason": reason, "sow_workflow_id": child_id},
        ),
    )


def sow_decided(status: TicketStatus, result: SowResult, now: datetime) -> list[Event]:
    """The statement of work is decided (or failed): the ticket closes with its outcome;
    notifications of the statement of work that failed are on the record."""
    events = [Event("sow_notification_failed", now, detail=f) for f in result.failed_notifications]
    if result.failed_notifications:
        events.append(
            Event(
                "sow_notification_failed",
                now,
                logged=False,
                record=Record(
                    "sow/notification-failed",
                    kind="sow_notification_failed",
                    detail={"failed": result.failed_notifications},
                ),
            )
        )
    assert status.sow is not None
    status.sow.outcome = result.outcome
    status.sow.decided_by, status.sow.decided_at = result.decided_by, result.decided_at
    status.sow.reference = result.reference
    status.state, status.closed_at = TicketState.CLOSED, now
    outcome = f"sow_{result.outcome.value}"
    events.append(
        Event(
            outcome,
            now,
            by=result.decided_by,
            detail=result.reference,
            record=Record(
                "closed", kind=outcome, by=result.decided_by, detail={"reference": result.reference}
            ),
        )
    )
    return events


def ignored(status: TicketStatus, what: str, by: str, at: datetime, n: int) -> tuple[Event, str]:
    """An action that arrived when it no longer applies: recorded, and why."""
    state = status.state.value
    event = Event(
        f"{what}_ignored",
        at,
        by=by,
        detail=f"ticket is {state}",
        record=Record(f"ignored-{n}", kind=f"{what}_ignored", by=by, detail={"state": state}),
    )
    return event, f"cannot {what}: ticket {status.ticket_id} is {state}"


def superseded(step: PlannedStep, now: datetime) -> Event:
    """A due step recorded, not sent: a later step of its ladder is due at the same time."""
    return Event(
        "step_superseded",
        now,
        detail=f"step {step.name} (due {step.due_at.isoformat()}) not sent:"
        " a later step of the ladder is due",
        record=Record(
            f"superseded/{step.due_at.isoformat()}/{step.name}",
            kind="step_superseded",
            detail={"step": step.name, "due_at": step.due_at.isoformat()},
        ),
    )


def agent_replied(reply: AgentReply, at: datetime, n: int) -> Event:
    return Event(
        "agent_replied",
        at,
        by=reply.agent,
        detail=reply.summary or "answered the customer",
        record=Record(
            f"agent-reply-{n}",
            kind="agent_replied",
            by=reply.agent,
            detail={"summary": reply.summary},
        ),
    )


def customer_replied(reply: CustomerReply, digest: str, at: datetime) -> Event:
    return Event(
        "customer_reply",
        at,
        by="customer",
        detail=f"via {reply.via}: {reply.subject}",
        record=Record(
            f"customer-reply-{digest}",
            kind="customer_reply",
            detail={
                "via": reply.via,
                "subject": reply.subject,
                "received_at": reply.received_at.isoformat(),
            },
        ),
    )


def rejected(signal: RejectedSignal, at: datetime, n: int) -> Event:
    return Event(
        f"{signal.signal}_rejected",
        at,
        detail="; ".join(signal.problems),
        record=Record(
            f"rejected-{n}",
            kind="signal_rejected",
            detail={"signal": signal.signal, "problems": signal.problems},
        ),
    )
