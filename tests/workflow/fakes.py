"""Fake activities for the workflow-logic tests: the worker's four activities, registered
under the same names (``contract.names``) and taking the same payloads, with no I/O.

- ``resolve_ticket_plan`` plans with the real, pure planner (``policy.plan``) under the
  policy file as loaded now, its versions kept in memory (as a worker without a ledger
  database does; ``forget_policy_versions`` loses them, as such a worker's restart does);
- ``record_sla_events`` keeps the SLA events (idempotent by key) and the ticket's row (the
  newest revision wins) in memory, and answers the ledger's two reads the tests make,
  ``events`` and ``outcome``;
- ``deliver_step`` renders each recipient's message with the real ``Notification`` and
  records it instead of sending it, once per delivery key; a recipient named in
  ``unreachable`` fails transiently, as a sink that is down does;
- ``update_pages`` records the page updates.

The real activities, with HTTP sinks, SMTP and SQLite or PostgreSQL, are tested in
``tests/integration`` (docs/testing.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.channels import Notification
from activities.notify import step_events
from activities.policy import PolicyActivities
from contract import names
from contract.models import (
    DeliveryFailureDetails,
    PageUpdate,
    PlanRequest,
    SlaEvent,
    SlaEvents,
    StepDelivery,
    StepDeliveryResult,
    TicketOutcome,
    TicketPlan,
)
from ledger.policy_archive import MemoryPolicyStore


@dataclass(frozen=True)
class Sent:
    """One message a step delivered to one recipient."""

    key: str  # <workflow id>/<step>/<recipient>, the real delivery key
    recipient: str
    step: str
    kind: str
    text: str  # the message as every channel renders it in plain text


@dataclass
class FakeActivities:
    sent: list[Sent] = field(default_factory=list)
    # Every delivery key tried, sent or not (a retried step tries again).
    attempts: list[str] = field(default_factory=list)
    # Recipient names whose deliveries fail transiently until removed.
    unreachable: set[str] = field(default_factory=set)
    # The retry delay such a failure asks for (None: the activity's retry policy decides).
    retry_after: timedelta | None = None
    # How long (real time) such an attempt hangs before it fails, as a timing-out sink does.
    hang: timedelta | None = None
    # Whether a local first attempt hangs too (False: it fails at once, and only the
    # server's attempts hang, to put a message in the middle of one of those).
    hang_local: bool = True
    page_updates: list[PageUpdate] = field(default_factory=list)
    _events: dict[str, SlaEvent] = field(default_factory=dict)
    _outcomes: dict[str, TicketOutcome] = field(default_factory=dict)
    _policy: PolicyActivities = field(default_factory=lambda: PolicyActivities(MemoryPolicyStore()))

    def activities(self) -> list[object]:
        return [
            self.resolve_ticket_plan,
            self.record_sla_events,
            self.deliver_step,
            self.update_pages,
        ]

    # --- the ledger's reads ----------------------------------------------------------------

    async def events(self, ticket_id: str) -> list[SlaEvent]:
        """The ticket's events in the ledger's order (by instant, then as written)."""
        return sorted(
            (e for e in self._events.values() if e.ticket_id == ticket_id), key=lambda e: e.at
        )

    async def outcome(self, ticket_id: str) -> TicketOutcome | None:
        return self._outcomes.get(ticket_id)

    def forget_policy_versions(self) -> None:
        """Lose the policy versions kept in memory, as a restarted worker without a ledger
        database does: a pinned version resolves again only while the file has it."""
        self._policy = PolicyActivities(MemoryPolicyStore())

    def messages(self, step: str | None = None) -> list[Sent]:
        """What was sent, of one step family (``breach``, ``retriage``...) if given."""
        return [m for m in self.sent if step is None or m.step.startswith(step)]

    def _record(self, events: list[SlaEvent], summary: TicketOutcome | None) -> int:
        added = [e for e in events if e.key not in self._events]
        self._events.update((e.key, e) for e in added)
        if summary is not None:
            held = self._outcomes.get(summary.ticket_id)
            if held is None or held.revision < summary.revision:
                self._outcomes[summary.ticket_id] = summary
        return len(added)

    # --- the activities --------------------------------------------------------------------

    @activity.defn(name=names.RESOLVE_TICKET_PLAN)
    async def resolve_ticket_plan(self, request: PlanRequest) -> TicketPlan:
        return await self._policy.resolve_ticket_plan(request)

    @activity.defn(name=names.RECORD_SLA_EVENTS)
    async def record_sla_events(self, batch: SlaEvents) -> int:
        return self._record(batch.events, batch.summary)

    @activity.defn(name=names.DELIVER_STEP)
    async def deliver_step(self, request: StepDelivery) -> StepDeliveryResult:
        delivered: list[str] = []
        channels: dict[str, str] = {}
        down: list[str] = []
        for recipient in request.recipients:
            key = f"{request.workflow_id}/{request.step}/{recipient.name}"
            self.attempts.append(key)
            if recipient.name in self.unreachable:
                down.append(recipient.name)
                continue
            if all(m.key != key for m in self.sent):
                text = Notification.of(request, recipient, key).text()
                self.sent.append(Sent(key, recipient.name, request.step, request.kind, text))
            delivered.append(recipient.name)
            channels[recipient.name] = recipient.channels[0].type.value
        if down:
            if self.hang is not None and (self.hang_local or not activity.info().is_local):
                await asyncio.sleep(self.hang.total_seconds())
            raise ApplicationError(
                "delivery failed for " + ", ".join(down),
                DeliveryFailureDetails(delivered=delivered).model_dump(
                    mode="json", exclude_none=True
                ),
                type="TransientDeliveryError",
                next_retry_delay=self.retry_after,
            )
        self._record(step_events(request, delivered, [], channels), request.summary)
        return StepDeliveryResult(delivered=delivered, channels=channels)

    @activity.defn(name=names.UPDATE_PAGES)
    async def update_pages(self, update: PageUpdate) -> list[str]:
        self.page_updates.append(update)
        return [r.name for r in update.recipients]
