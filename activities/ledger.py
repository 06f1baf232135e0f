"""The ledger activity: SLA events and the ticket's row, written idempotently.

The store itself (SQLAlchemy on SQLite or PostgreSQL, Alembic migrations) is in
``ledger/``; this module is the side effect the workflows call.
"""

from __future__ import annotations

from temporalio import activity

from contract.models import SlaEvents
from ledger.store import SlaLedger


class LedgerActivities:
    def __init__(self, ledger: SlaLedger) -> None:
        self.ledger = ledger

    @activity.defn(name="record_sla_events")
    async def record_sla_events(self, batch: SlaEvents) -> int:
        """Append events and update the ticket's row; safe to retry (keys, revisions)."""
        added = await self.ledger.append(batch.events)
        if batch.summary is not None:
            await self.ledger.save_outcome(batch.summary)
        activity.logger.info(
            "ledger write",
            extra={"events": [e.key for e in batch.events], "new_events": added},
        )
        return added
