"""The ticket's state transitions without a server: what each changes, and the events
(history entry, ledger record) it returns."""

from __future__ import annotations

from datetime import timedelta

from contract.models import (
    Acknowledge,
    AdoptPolicy,
    ChangeSeverity,
    Resolve,
    Severity,
    SowOutcome,
    SowResult,
    TicketState,
    Tier,
)
from tests.unit.tickets import DUE, T0, ticket
from workflows.ticket import transitions
from workflows.ticket.events import Record


def test_breach_at_the_deadline_unless_an_ack_of_that_instant_is_applied() -> None:
    status = ticket()
    assert transitions.breach(status, DUE - timedelta(seconds=1)) == []
    assert transitions.breach(status, DUE, at_due_counts=False) == []
    [event] = transitions.breach(status, DUE)
    assert (event.kind, event.at, event.record) == ("response_target_missed", DUE, None)
    assert (status.response_breached, status.breached_at) == (True, DUE)
    assert transitions.breach(status, DUE + timedelta(hours=1)) == []  # once


def test_acknowledge_in_time_records_met_with_no_overrun() -> None:
    status = ticket()
    at = T0 + timedelta(minutes=20)
    event = transitions.acknowledge(status, Acknowledge(agent="ana"), at, at, withdrawn=False)
    assert status.state is TicketState.ACKNOWLEDGED
    assert (status.acknowledged_at, status.acknowledged_by) == (at, "ana")
    assert (event.kind, event.by, event.detail) == ("acknowledged", "ana", "response target met")
    assert event.record == Record(
        "acknowledged",
        by="ana",
        detail={
            "note": None,
            "response_breached": False,
            "overrun_seconds": None,
            "received_at": None,
            "breach_withdrawn": None,
        },
    )


def test_late_ack_records_the_overrun_and_a_stamped_ack_withdraws_a_breach() -> None:
    late = ticket()
    transitions.breach(late, DUE)
    at = DUE + timedelta(minutes=10)
    event = transitions.acknowledge(late, Acknowledge(agent="bo"), at, at, withdrawn=False)
    assert event.record is not None and event.record.detail["overrun_seconds"] == 600.0
    assert event.detail == "response target breached"

    stamped = ticket()
    transitions.breach(stamped, DUE)
    acted, received = DUE - timedelta(minutes=5), DUE + timedelta(minutes=30)
    [withdrawn] = transitions.withdraw_breach(stamped, acted)
    assert withdrawn.kind == "breach_withdrawn"
    assert (stamped.response_breached, stamped.breached_at) == (False, None)
    event = transitions.acknowledge(stamped, Acknowledge(agent="cy"), acted, received, True)
    assert event.record is not None
    assert event.record.detail["breach_withdrawn"] is True
    assert event.record.detail["received_at"] == received.isoformat()
    assert event.detail == (
        f"response target met; acted at {acted.isoformat()}, processed at {received.isoformat()}"
    )


def test_acted_at_is_clamped_to_the_ticket_clock_and_its_opening() -> None:
    now = T0 + timedelta(hours=2)
    assert transitions.acted_at(None, now, T0) == now
    assert transitions.acted_at(now + timedelta(hours=1), now, T0) == now
    assert transitions.acted_at(T0 - timedelta(days=1), now, T0) == T0


def test_refusal_names_the_state_and_who_acknowledged() -> None:
    assert transitions.refusal(None, "acknowledge") is None
    assert transitions.refusal(ticket(), "acknowledge") is None
    acked = ticket(state=TicketState.ACKNOWLEDGED, acknowledged_at=T0, acknowledged_by="ana")
    assert transitions.refusal(acked, "acknowledge") == (
        f"cannot acknowledge: ticket T-1 is acknowledged (by ana at {T0.isoformat()})"
    )
    assert transitions.refusal(acked, "resolve") is None
    closed = ticket(state=TicketState.CLOSED)
    assert transitions.refusal(closed, "resolve") == "cannot resolve: ticket T-1 is closed"


def test_severity_change_and_resolution_are_recorded_by_the_agent() -> None:
    status = ticket()
    change = ChangeSeverity(severity=Severity.SEV1, by="lead", reason="outage")
    event = transitions.severity_changed(status, change, Severity.SEV2, T0, 3)
    assert status.severity is Severity.SEV1
    assert event.detail == "sev2 -> sev1: outage"
    assert event.record is not None and event.record.name == "severity-changed-3"
    assert event.record.by == "lead"

    status.state = TicketState.ACKNOWLEDGED
    event = transitions.resolve(status, Resolve(by="ana", summary="fixed"), DUE)
    assert (status.state, status.resolved_at, status.next_step) == (
        TicketState.RESOLVED,
        DUE,
        None,
    )
    assert event.record == Record("resolved", by="ana", detail={"summary": "fixed"})


def test_statement_of_work_decision_closes_and_records_failed_notifications() -> None:
    status = ticket()
    transitions.route_to_sow(status, "consulting", "policy", T0, "T-1/sow")
    assert status.state is TicketState.ROUTED_TO_SOW and status.out_of_scope
    result = SowResult(
        outcome=SowOutcome.ACCEPTED,
        decided_by="sales",
        reference="SOW-9",
        failed_notifications=["notify: ana: smtp down"],
    )
    events = transitions.sow_decided(status, result, DUE)
    assert [(e.kind, e.logged, e.record.name if e.record else None) for e in events] == [
        ("sow_notification_failed", True, None),
        ("sow_notification_failed", False, "sow/notification-failed"),
        ("sow_accepted", True, "closed"),
    ]
    assert status.state is TicketState.CLOSED and status.closed_at == DUE
    assert status.sow is not None and status.sow.reference == "SOW-9"


def test_idle_close_and_ignored_actions() -> None:
    status = ticket(tier=Tier.COMMUNITY, commercial_sla=False, response_due_at=None)
    event = transitions.close_idle(status, DUE)
    assert (status.state, event.record) == (TicketState.CLOSED, Record("closed", "closed_idle"))
    event, why = transitions.ignored(status, "resolve", "ana", DUE, 2)
    assert why == "cannot resolve: ticket T-1 is closed"
    assert event.record == Record("ignored-2", "resolve_ignored", "ana", {"state": "closed"})


def test_policy_adoption_records_both_versions_and_deadlines() -> None:
    status = ticket(policy_version="2026-12-01")
    moved = DUE + timedelta(minutes=30)
    status.response_due_at = moved
    adopt = AdoptPolicy(version="2026-12-01", by="ops", reason="new targets")
    event = transitions.policy_adopted(status, adopt, "2026-11-01", DUE, T0, 1)
    assert event.detail == (
        f"2026-11-01 -> 2026-12-01; response due {DUE.isoformat()} -> {moved.isoformat()}"
        ": new targets"
    )
    assert event.record == Record(
        "policy-adopted-1",
        "policy_adopted",
        "ops",
        {
            "before": "2026-11-01",
            "after": "2026-12-01",
            "reason": "new targets",
            "response_due_at_before": DUE.isoformat(),
            "response_due_at": moved.isoformat(),
        },
    )
