"""One builder of a ticket's status for the unit tests of the ticket's pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contract.models import Severity, TicketState, TicketStatus, Tier

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
