"""The ticket's outbox: history, ledger, search attributes and deliveries."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
)
from temporalio.workflow import ActivityCancellationType

from workflows.activity_options import (
    DELIVERY_RETRY,
    DELIVERY_TIMEOUT,
    LEDGER_RETRY,
    LEDGER_TIMEOUT,
    LOCAL_ATTEMPT_RETRY,
    LOCAL_ATTEMPT_TIMEOUT,
    delivery_deadline,
)
from workflows.ticket import targets
from workflows.ticket.events import Event, Record
from workflows.ticket.patches import (
    BATCHED_LEDGER_WRITES,
    CANCELLED_ATTEMPT_SUPERSEDED,
    CHANGES_SO_FAR,
    LOCAL_FIRST_ATTEMPTS,
    ROLLED_UP,
)

with workflow.unsafe.imports_passed_through():
    from activities.ledger import LedgerActivities
    from activities.notify import NotifyActivities
    from contract import search_attributes as sa
    from contract.models import (
        DeliveryFailureDetails,
        EscalationRecord,
        HistoryEntry,
        Metric,
        PageUpdate,
        Recipient,
        SlaEvent,
        SlaEvents,
        StepDelivery,
        StepKind,
        TicketInput,
        TicketOutcome,
        TicketPlan,
        TicketStatus,
    )


class Outbox:
    """How a ticket reaches the world: ``emit`` (history, ledger, search attributes),
    deliveries of steps and messages, page updates, and the ledger writes, batched per
    activation. The workflow class builds on it."""

    def __init__(self) -> None:
        self._status: TicketStatus | None = None
        self._plan: TicketPlan | None = None
        self._ticket: TicketInput
        self._background: list[asyncio.Task[Any]] = []
        self._search: dict[str, Any] = {}
        self._revision = 0
        self._counters: dict[str, int] = {}
        # Recipients reached through a pager: their page is acknowledged / resolved with
        # the ticket. Page updates run one after another, in order.
        self._paged: list[Recipient] = []
        self._page_updates: asyncio.Task[Any] | None = None
        self._deliveries: list[asyncio.Task[Any]] = []
        self._unwritten: list[SlaEvent] = []
        # Everyone a step has been sent to (re-triage tells only those who have not heard).
        self._notified: set[str] = set()
        # Whether the ticket keeps target clocks beyond the first response (SLA_TARGETS).
        self._clocks_on = False
        # Whether this run makes an activity's first attempt locally (LOCAL_FIRST_ATTEMPTS).
        self._local_first = False
        # Whether this run took CHANGES_SO_FAR (every change it rolls up); None until asked.
        self._so_far: bool | None = None

    def _send(
        self,
        name: str,
        kind: str,
        recipients: list[Recipient],
        at: datetime,
        message: str,
        due_at: datetime,
    ) -> None:
        """Deliver a message outside the ladder (a re-triage, a customer's reply) to
        ``recipients``. The ticket's history and the ledger record it as ``<kind>_sent``."""
        targets = [r.name for r in recipients]
        event_kind = f"{kind}_sent"
        self._emit(Event(event_kind, at, detail=f"{message} (to {', '.join(targets)})"))
        self._start_delivery(
            name=name,
            kind=kind,
            due_at=due_at,
            recipients=recipients,
            message=message,
            event_kind=event_kind,
            at=at,
            source="workflow",
            detail={"step": name, "targets": targets, "message": message},
            record=EscalationRecord(
                step=name, kind=StepKind.INTAKE, due_at=due_at, fired_at=at, targets=targets
            ),
        )

    def _start_delivery(
        self,
        *,
        name: str,
        kind: str,
        due_at: datetime,
        recipients: list[Recipient],
        message: str | None,
        event_kind: str,
        at: datetime,
        source: str,
        detail: dict[str, Any],
        record: EscalationRecord,
        metric: Metric | None = None,
    ) -> asyncio.Task[Any]:
        """Deliver one message to ``recipients`` in the background, keyed like a step
        (``<workflow id>/<name>/<recipient>``). The delivery also writes the ledger: the
        events this activation recorded before it (instead of an activity of their own,
        e.g. "opened" with the intake), its own event and the ticket's row."""
        status = self._state()
        self._revision += 1
        wf_id = workflow.info().workflow_id
        request = StepDelivery(
            workflow_id=wf_id,
            ticket_id=status.ticket_id,
            customer_id=status.customer_id,
            tier=status.tier,
            severity=status.severity,
            step=name,
            kind=kind,
            due_at=due_at,
            response_due_at=status.response_due_at,
            subject=self._ticket.subject,
            recipients=recipients,
            message=message,
            metric=metric,
            time_zone=status.time_zone,
            failover_after=self._current_plan().failover_after,
            earlier_events=self._claim_unwritten(),
            event=SlaEvent(
                key=f"{wf_id}/{name}",
                ticket_id=status.ticket_id,
                kind=event_kind,
                at=at,
                source=source,
                detail=detail,
            ),
            summary=self._outcome(),
        )
        self._notified |= {r.name for r in recipients}
        self._deliveries = [d for d in self._deliveries if not d.done()]
        task = self._spawn(self._deliver(request, record))
        self._deliveries.append(task)
        return task

    async def _deliver(self, request: StepDelivery, record: EscalationRecord) -> None:
        try:
            result = await self._run_activity(
                NotifyActivities.deliver_step,
                request,
                start_to_close_timeout=DELIVERY_TIMEOUT,
                schedule_to_close_timeout=delivery_deadline(
                    request.failover_after, request.recipients
                ),
                retry_policy=DELIVERY_RETRY,
                # A delivery an acknowledgement cancels reports whether it had been sent.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            record.failed = result.failed
        except (ActivityError, asyncio.CancelledError) as err:
            if isinstance(err, asyncio.CancelledError) or isinstance(err.cause, CancelledError):
                self._superseded_by_ack(request, record)
                return
            cause = err.cause
            details = DeliveryFailureDetails.of(
                cause if isinstance(cause, ApplicationError) else None
            )
            if _cancel_requested() and self._patched(CANCELLED_ATTEMPT_SUPERSEDED):
                # The acknowledgement cancelled it while an attempt was failing (an activity
                # learns of a cancellation only between attempts): moot, not failed.
                self._superseded_by_ack(request, record, details.delivered or [])
                return
            # Only the ledger behind: its own outcome; else who was not reached.
            record.failed = details.undelivered(request.recipients, str(cause or err))
            # The activity writes the step's ledger events only when it succeeds.
            dumped = details.model_dump(mode="json")
            outcome = {key: value for key, value in dumped.items() if value is not None}
            self._write_carried(request, outcome)
        if record.failed:
            # Never silently skipped: the failure is on the ticket and in the ledger.
            now = workflow.now()
            self._emit(
                Event(
                    "notification_failed",
                    now,
                    detail=f"step {record.step}: "
                    + "; ".join(f"{f.recipient}: {f.error}" for f in record.failed),
                    record=Record(
                        f"{record.step}/failed",
                        kind="notification_failed",
                        detail={
                            "step": record.step,
                            "failed": [f.model_dump() for f in record.failed],
                        },
                    ),
                )
            )

    def _write_carried(self, request: StepDelivery, outcome: dict[str, Any]) -> None:
        """The ledger events a delivery carried, written by the workflow itself when the
        delivery did not write them (it failed, or an acknowledgement cancelled it), with
        the delivery's ``outcome`` in the step's event."""
        for earlier in request.earlier_events:
            self._write_ledger(earlier)
        if request.event is not None:
            event = request.event
            self._write_ledger(event.model_copy(update={"detail": {**event.detail, **outcome}}))

    def _superseded_by_ack(
        self, request: StepDelivery, record: EscalationRecord, delivered: list[str] | None = None
    ) -> None:
        """A delivery the acknowledgement cancelled before it was sent (to everyone but
        ``delivered``): recorded as superseded on the ticket and in the ledger (with the
        events it carried)."""
        now = workflow.now()
        record.superseded_at = now
        self._write_carried(request, {"delivered": delivered or []})
        self._emit(
            Event(
                "step_superseded",
                now,
                detail=f"step {record.step} (due {record.due_at.isoformat()}) not sent: the"
                " ticket was acknowledged before it was delivered",
                record=Record(
                    f"superseded/{record.due_at.isoformat()}/{record.step}",
                    kind="step_superseded",
                    detail={
                        "step": record.step,
                        "due_at": record.due_at.isoformat(),
                        "reason": "acknowledged",
                    },
                ),
            )
        )

    def _update_pages(self, action: Literal["acknowledge", "resolve"], by: str) -> None:
        """Acknowledge or resolve the ticket's page where it paged someone (PagerDuty
        ``dedup_key`` = workflow id), after any earlier update."""
        if not self._paged:
            return
        update = PageUpdate(
            workflow_id=workflow.info().workflow_id,
            ticket_id=self._state().ticket_id,
            action=action,
            by=by,
            recipients=list(self._paged),
        )
        # After the triggers still in flight (an acknowledge that overtook its trigger
        # would leave the incident open) and after any earlier update.
        before = [d for d in self._deliveries if not d.done()]
        if self._page_updates is not None:
            before.append(self._page_updates)

        async def run() -> None:
            await asyncio.gather(*before)
            try:
                await workflow.execute_activity_method(
                    NotifyActivities.update_pages,
                    update,
                    start_to_close_timeout=DELIVERY_TIMEOUT,
                    schedule_to_close_timeout=delivery_deadline(
                        self._current_plan().failover_after, update.recipients
                    ),
                    retry_policy=DELIVERY_RETRY,
                )
            except ActivityError as err:
                error = str(err.cause or err)
                self._emit(
                    Event(
                        "page_update_failed",
                        workflow.now(),
                        detail=error,
                        record=Record(
                            f"page-{action}/failed",
                            kind="page_update_failed",
                            detail={"action": action, "error": error},
                        ),
                    )
                )

        self._page_updates = self._spawn(run())

    def _sync_search_attributes(self) -> None:
        """Upsert only the search attributes whose value changed (each upsert is billed)."""
        status = self._state()
        desired: dict[SearchAttributeKey[Any], Any] = {
            sa.SUPPORT_TIER: status.tier.value,
            sa.SUPPORT_SEVERITY: status.severity.value,
            sa.TICKET_STATE: status.state.value,
            sa.CUSTOMER_ID: status.customer_id,
            sa.RESPONSE_DUE_AT: status.response_due_at,
            sa.SLA_BREACHED: status.response_breached if status.commercial_sla else None,
        }
        if self._clocks_on:
            nearest = targets.nearest(status)
            desired[sa.SLA_BREACHED] = targets.breached(status)
            desired[sa.SLA_NEXT_DEADLINE] = nearest[0] if nearest else None
            desired[sa.SLA_NEXT_METRIC] = nearest[1].value if nearest else None
        updates: list[SearchAttributeUpdate[Any]] = []
        for key, value in desired.items():
            if self._search.get(key.name) != value:
                self._search[key.name] = value
                updates.append(key.value_unset() if value is None else key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)

    def _emit(self, *events: Event) -> None:
        """Write ``events`` to the ticket's history (and the worker's log) and to the ledger
        (in the background), then upsert the search attributes that changed. Transitions
        call it once the status is complete, so one change is one upsert."""
        status = self._state()
        targets.first_response(status)
        for event in events:
            if event.logged:
                status.history.append(
                    HistoryEntry(at=event.at, kind=event.kind, by=event.by, detail=event.detail)
                )
                workflow.logger.info(
                    "ticket %s",
                    event.kind,
                    extra={"ticket_id": status.ticket_id, "by": event.by, "detail": event.detail},
                )
        for event in events:
            if event.record is not None:
                record = event.record
                self._revision += 1
                self._write_ledger(
                    SlaEvent(
                        key=f"{workflow.info().workflow_id}/{record.name}",
                        ticket_id=status.ticket_id,
                        kind=record.kind or record.name,
                        at=event.at,
                        source=f"agent:{record.by}" if record.by else "workflow",
                        detail={k: v for k, v in record.detail.items() if v is not None},
                    )
                )
        self._sync_search_attributes()

    def _write_ledger(self, event: SlaEvent) -> None:
        """The event and the ticket's row, in the background: since the
        ``BATCHED_LEDGER_WRITES`` change, one activity (one billed Action) carries every
        event of a workflow activation (an acknowledgement and a resolution that arrive
        together, a step and its failure record) instead of one activity per event, and
        when the activation fires a step, its delivery carries them (``_fire``)."""
        if not self._batch_ledger_writes():
            # Tickets whose history predates the change replay their one-per-event writes.
            self._spawn(
                workflow.execute_activity_method(
                    LedgerActivities.record_sla_events,
                    SlaEvents(events=[event], summary=self._outcome()),
                    start_to_close_timeout=LEDGER_TIMEOUT,
                    retry_policy=LEDGER_RETRY,
                )
            )
            return
        self._unwritten.append(event)
        if len(self._unwritten) == 1:
            self._spawn(self._write_unwritten())

    def _batch_ledger_writes(self) -> bool:
        return self._patched(BATCHED_LEDGER_WRITES)

    def _claim_unwritten(self) -> list[SlaEvent]:
        """The events waiting for this activation's ledger write, for a delivery to carry
        (none on the old branch, which wrote each one at once)."""
        if not self._batch_ledger_writes():
            return []
        events, self._unwritten = self._unwritten, []
        return events

    async def _write_unwritten(self) -> None:
        # A task starts once the code that spawned it yields, so by then it takes every
        # event the activation recorded; later events start the next batch. A step fired
        # meanwhile may have taken them to write with its delivery.
        events, self._unwritten = self._unwritten, []
        if not events:
            return
        await self._run_activity(
            LedgerActivities.record_sla_events,
            SlaEvents(events=events, summary=self._outcome()),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
        )

    def _patched(self, patch_id: str) -> bool:
        """``workflow.patched(patch_id)``, except that a run which took ``CHANGES_SO_FAR``
        has every change it rolls up with no marker of its own. Whether it took it is asked
        at the first call of the run (in ``run``, before its first activity), so a run that
        began before the roll-up replays without it and asks each change as it did."""
        if self._so_far is None:
            self._so_far = self._takes_changes_so_far()
        if self._so_far and patch_id in ROLLED_UP:
            return True
        return workflow.patched(patch_id)

    def _takes_changes_so_far(self) -> bool:
        """A method so that the tests' previous releases can run without the roll-up."""
        return workflow.patched(CHANGES_SO_FAR)

    def _takes_local_first(self) -> bool:
        """Whether this run makes first attempts locally (LOCAL_FIRST_ATTEMPTS); asked once
        per run, before its first activity; a method so that the tests' previous release
        can run without it."""
        return self._patched(LOCAL_FIRST_ATTEMPTS)

    async def _run_activity(
        self,
        method: Any,
        arg: Any,
        *,
        start_to_close_timeout: timedelta,
        retry_policy: RetryPolicy,
        schedule_to_close_timeout: timedelta | None = None,
        cancellation_type: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL,
    ) -> Any:
        """Run one of the ticket's activities. Since ``LOCAL_FIRST_ATTEMPTS`` its first
        attempt is a local activity, run by this worker inside the workflow task that asks
        for it: the common case (the plan resolved, a step delivered, a batch of events
        written) then costs no activity task and no workflow task for its result, which
        halves what a step asks of the server and spares a ticket evicted from the cache
        a second replay. A first attempt that fails for good (a non-retryable error: a
        broken policy, a delivery that reached everyone but not the ledger) is the answer,
        as the server's activity would have given; one cancelled (an acknowledgement made
        a delivery moot) is cancelled; any other failure, or an attempt cut at
        ``LOCAL_ATTEMPT_TIMEOUT``, goes to the server as the activity with its own
        timeouts and retries (a delivery skips whom the first attempt reached)."""
        if self._local_first:
            try:
                return await workflow.execute_local_activity_method(
                    method,
                    arg,
                    start_to_close_timeout=min(start_to_close_timeout, LOCAL_ATTEMPT_TIMEOUT),
                    retry_policy=LOCAL_ATTEMPT_RETRY,
                    cancellation_type=cancellation_type,
                )
            except (ActivityError, ApplicationError, CancelledError) as err:
                # A local attempt's failure comes unwrapped (a timeout as an ActivityError).
                cause = err.cause if isinstance(err, ActivityError) else err
                final = isinstance(cause, ApplicationError) and cause.non_retryable
                # Cancelled meanwhile (an acknowledgement made the delivery moot) though the
                # attempt failed otherwise: no server activity after the acknowledgement.
                cancelled = isinstance(cause, CancelledError) or _cancel_requested()
                if final or cancelled:
                    if isinstance(err, ActivityError):
                        raise
                    # In the shape the server's activity fails in, which the callers read.
                    raise ActivityError(
                        "local activity failed",
                        scheduled_event_id=0,
                        started_event_id=0,
                        identity="",
                        activity_type=method.__name__,
                        activity_id="",
                        retry_state=RetryState.CANCEL_REQUESTED
                        if cancelled
                        else RetryState.NON_RETRYABLE_FAILURE,
                    ) from err
                workflow.logger.warning(
                    "first attempt failed; retried as a server activity",
                    extra={
                        "ticket_id": self._ticket.ticket_id,
                        "activity": method.__name__,
                        "error": str(cause or err),
                    },
                )
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=start_to_close_timeout,
            schedule_to_close_timeout=schedule_to_close_timeout,
            retry_policy=retry_policy,
            cancellation_type=cancellation_type,
        )

    def _outcome(self) -> TicketOutcome:
        return self._state().outcome(workflow.info().workflow_id, self._revision, workflow.now())

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._background.append(task)
        return task

    async def _await_background(self) -> None:
        while self._background:
            pending, self._background = self._background, []
            await asyncio.gather(*pending)

    def _next(self, counter: str) -> int:
        self._counters[counter] = self._counters.get(counter, 0) + 1
        return self._counters[counter]

    def _state(self) -> TicketStatus:
        assert self._status is not None
        return self._status

    def _current_plan(self) -> TicketPlan:
        assert self._plan is not None
        return self._plan


def current_search_attributes() -> dict[str, Any]:
    """The search attributes this run started with (set at intake, or carried over)."""
    return {key.name: workflow.info().typed_search_attributes.get(key) for key in sa.ALL}


def _cancel_requested() -> bool:
    """Whether the running delivery task was asked to stop (an acknowledgement made it
    moot), even if the activity then failed instead of acknowledging the cancellation."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
