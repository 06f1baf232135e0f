"""The builders of the tests of the ticket's pure rules and its messages: a ticket's status
and one step's delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contract.models import Recipient, Severity, StepDelivery, TicketState, TicketStatus, Tier

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DUE = T0 + timedelta(hours=1)


def ticket(**changes: object) -> TicketStatus:
    """A Premium sev2 ticket opened at ``T0``, due an hour later, with ``changes``."""
    return TicketStatus(
        ticket_id="T-1",
        customer_id="acme",
        tier=Tier.PREMIUM,
        severity=Severity.SEV2,
        category="bug",
        state=TicketState.OPEN,
        opened_at=T0,
        response_due_at=DUE,
    ).model_copy(update=changes)


def delivery(recipients: list[Recipient] | None = None, **changes: object) -> StepDelivery:
    """The breach step of ticket X (Premium sev1, due 2026-11-26 12:00 UTC) to
    ``recipients``, with ``changes`` (validated as the model's fields)."""
    due = datetime(2026, 11, 26, 12, tzinfo=UTC)
    fields: dict[str, object] = {
        "workflow_id": "ticket-X",
        "ticket_id": "X",
        "customer_id": "acme",
        "tier": Tier.PREMIUM,
        "severity": Severity.SEV1,
        "step": "breach",
        "kind": "breach",
        "due_at": due,
        "response_due_at": due,
        "subject": "s",
        "recipients": recipients or [],
    }
    return StepDelivery.model_validate({**fields, **changes})
