"""``SupportTicket``: one workflow owns one ticket's SLA clock from intake to close.

The life of a ticket:
  open -> acknowledged -> resolved
  open | acknowledged -> routed_to_sow -> closed   (child workflow ``StatementOfWork``)
  community tickets -> closed when idle

One updatable-timer loop drives it: wait until the next step falls due *or* a signal
arrives, handle what arrived, fire what is due, recompute, repeat. Signals only queue a
command; the loop applies them in order, so a signal and a timer in the same instant give
one consistent outcome (the queued signal wins, because it is applied first).

Notifications and ledger writes run as background activities: a slow chat service or a
ledger outage never delays the next escalation. They are awaited before the workflow ends.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from workflows import sla_metrics
from workflows.activity_options import (
    DELIVERY_RETRY,
    DELIVERY_TIMEOUT,
    LEDGER_RETRY,
    LEDGER_TIMEOUT,
    POLICY_RETRY,
    POLICY_TIMEOUT,
    delivery_deadline,
)

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from support import search_attributes as sa
    from support.models import (
        Acknowledge,
        ChangeSeverity,
        CustomerReply,
        DeliveryFailure,
        EscalationRecord,
        HistoryEntry,
        MarkOutOfScope,
        PageUpdate,
        PlannedStep,
        PlanRequest,
        Recipient,
        RejectedSignal,
        Resolve,
        SlaEvent,
        SlaEvents,
        SowInput,
        SowOutcome,
        SowResult,
        SowStatus,
        StepDelivery,
        StepDeliveryResult,
        StepKind,
        TicketCarry,
        TicketInput,
        TicketOutcome,
        TicketPlan,
        TicketState,
        TicketStatus,
        describe_validation_error,
        opened_at_problem,
        sow_workflow_id,
    )

# A ticket carried into a new run keeps its latest history entries and escalations; the
# ledger keeps every one.
CARRIED_ENTRIES = 200
TERMINAL = (TicketState.RESOLVED, TicketState.CLOSED)

# Workflow changes that alter commands, by patch id (README: "Changing workflow code while
# tickets are in flight"). Tickets that started before a change keep its old branch for the
# rest of their run; remove a branch only once no open ticket's history lacks the marker.
BATCHED_LEDGER_WRITES = "ledger-writes-batched-per-activation"


@dataclass
class _Command:
    name: str
    payload: BaseModel
    at: datetime


@workflow.defn(name="SupportTicket", failure_exception_types=[ValidationError])
class SupportTicket:
    def __init__(self) -> None:
        self._inbox: list[_Command] = []
        self._status: TicketStatus | None = None
        self._plan: TicketPlan | None = None
        # Non-repeat steps fire once per ticket, by name. Repeats are counted by instant:
        # every repeat due at or before the horizon has been sent or superseded, whatever
        # severity's cadence planned it.
        self._fired: set[str] = set()
        self._repeat_horizon: datetime | None = None
        self._repeats_sent = 0
        self._background: list[asyncio.Task[Any]] = []
        self._search: dict[str, Any] = {}
        self._revision = 0
        self._counters: dict[str, int] = {}
        # Recipients reached through a pager: their page is acknowledged / resolved with
        # the ticket. Page updates run one after another, in order.
        self._paged: list[Recipient] = []
        self._page_updates: asyncio.Task[Any] | None = None
        self._deliveries: list[asyncio.Task[Any]] = []
        self._replies: set[str] = set()
        self._unwritten: list[SlaEvent] = []

    # --- messages ----------------------------------------------------------------------

    # Handlers take the raw payload and validate it themselves: a malformed signal from a
    # client in any language is recorded on the ticket with what was wrong (the SDK would
    # otherwise drop it with nothing but a worker log line).

    @workflow.signal(name="acknowledge")
    def acknowledge(self, ack: RawValue) -> None:
        self._receive("acknowledge", Acknowledge, ack)

    @workflow.signal(name="change_severity")
    def change_severity(self, change: RawValue) -> None:
        self._receive("change_severity", ChangeSeverity, change)

    @workflow.signal(name="mark_out_of_scope")
    def mark_out_of_scope(self, mark: RawValue) -> None:
        self._receive("mark_out_of_scope", MarkOutOfScope, mark)

    @workflow.signal(name="resolve")
    def resolve(self, resolve: RawValue) -> None:
        self._receive("resolve", Resolve, resolve)

    @workflow.signal(name="customer_reply")
    def customer_reply(self, reply: RawValue) -> None:
        self._receive("customer_reply", CustomerReply, reply)

    def _receive(self, name: str, model: type[BaseModel], raw: RawValue) -> None:
        try:
            payload = workflow.payload_converter().from_payload(raw.payload, model)
        except ValidationError as err:
            problems = describe_validation_error(err, top="(signal)")
            payload = RejectedSignal(signal=name, problems=problems)
            name = "rejected"
        except Exception as err:  # not JSON at all
            payload = RejectedSignal(signal=name, problems=[f"(signal): {err}"])
            name = "rejected"
        self._inbox.append(_Command(name, payload, workflow.now()))

    @workflow.query(name="status")
    def status(self) -> TicketStatus:
        if self._status is None:
            raise RuntimeError("the ticket is still starting; query again in a moment")
        return self._status

    # --- the ticket's life ---------------------------------------------------------------

    @workflow.run
    async def run(self, ticket: TicketInput) -> TicketStatus:
        if ticket.continued is not None:
            self._resume(ticket)
            await self._sla_loop()
            await self._finish()
            return self._state()
        now = workflow.now()
        opened_at = ticket.opened_at or now
        problem = opened_at_problem(opened_at, now)
        if problem:
            raise ApplicationError(problem, type="InvalidTicket", non_retryable=True)
        self._ticket = ticket
        self._status = TicketStatus(
            ticket_id=ticket.ticket_id,
            customer_id=ticket.customer_id,
            tier=ticket.tier,
            severity=ticket.severity,
            category=ticket.category,
            state=TicketState.OPEN,
            opened_at=opened_at,
        )
        self._search = _current_search_attributes()
        self._log("opened", at=opened_at, detail=f"via {ticket.intake_channel}")
        plan = await self._resolve(ticket.severity)
        self._apply_plan(plan)
        sla_metrics.ticket_opened(ticket.tier.value, ticket.severity.value)
        self._record(
            "opened",
            at=opened_at,
            intake_channel=ticket.intake_channel,
            policy_version=plan.policy_version,
            response_due_at=_iso(plan.response_due_at),
        )

        if plan.out_of_scope_reason:
            await self._route_to_sow(plan.out_of_scope_reason, by="policy", at=now)
        else:
            await self._sla_loop()
        await self._finish()
        return self._status

    async def _sla_loop(self) -> None:
        status = self._state()
        while True:
            await self._drain_inbox()
            if status.state in TERMINAL or status.state is TicketState.ROUTED_TO_SOW:
                return
            now = workflow.now()
            if status.state is TicketState.OPEN:
                self._check_breach(now)
                due = [s for s in self._pending_steps() if s.due_at <= now]
                if due:
                    self._catch_up(due, now)
                    continue
                if await self._extend_ladder():
                    continue
            history_full = self._history_full()
            if history_full:
                self._background = [task for task in self._background if not task.done()]
                if not self._background and not self._inbox:
                    self._continue_as_new()
            wake_at = self._next_wake()
            timeout = (wake_at - now) if wake_at else None
            self._refresh_next_step()
            self._sync_search_attributes()
            try:
                # With a full history, also wake when background work has landed (it may
                # be a ledger outage: the timers keep running meanwhile).
                await workflow.wait_condition(
                    lambda full=history_full: (  # type: ignore[misc]
                        bool(self._inbox)
                        or (full and all(task.done() for task in self._background))
                    ),
                    timeout=timeout,
                )
            except TimeoutError:
                if self._idle_close_due(workflow.now()):
                    self._close_idle(workflow.now())
                    return

    # --- long-lived tickets -------------------------------------------------------------

    def _history_full(self) -> bool:
        info = workflow.info()
        limit = self._current_plan().history_limit
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= limit

    def _continue_as_new(self) -> None:
        """Carry the ticket into a fresh run of the same workflow id: an unacknowledged
        ticket escalating for days must never hit Temporal's history limit."""
        status = self._state()
        plan = self._current_plan()
        plan.steps = self._pending_steps()
        kept = CARRIED_ENTRIES
        dropped = max(0, len(status.history) - kept) + max(0, len(status.escalations) - kept)
        status.history, status.escalations = status.history[-kept:], status.escalations[-kept:]
        if dropped:
            self._log(
                "trimmed",
                at=workflow.now(),
                detail=f"{dropped} older entries left out of this run (the ledger keeps all)",
            )
        carry = TicketCarry(
            status=status,
            plan=plan,
            fired=sorted(self._fired),
            repeat_horizon=self._repeat_horizon,
            repeats_sent=self._repeats_sent,
            revision=self._revision,
            counters=self._counters,
            paged=self._paged,
        )
        workflow.continue_as_new(self._ticket.model_copy(update={"continued": carry}))

    def _resume(self, ticket: TicketInput) -> None:
        carry = ticket.continued
        if carry is None or workflow.info().continued_run_id is None:
            # Only this workflow carries state into its next run; an intake client that
            # sends ``continued`` gets a failed start, not a forged ticket.
            raise ApplicationError(
                "continued: internal field, not accepted at intake",
                type="InvalidTicket",
                non_retryable=True,
            )
        self._ticket = ticket.model_copy(update={"continued": None})
        self._status, self._plan = carry.status, carry.plan
        self._fired = set(carry.fired)
        self._repeat_horizon, self._repeats_sent = carry.repeat_horizon, carry.repeats_sent
        self._revision, self._counters = carry.revision, dict(carry.counters)
        self._paged = list(carry.paged)
        self._search = _current_search_attributes()
        self._log(
            "continued_as_new",
            at=workflow.now(),
            detail=f"run {workflow.info().run_id} carries the ticket on",
        )

    def _pending_steps(self) -> list[PlannedStep]:
        plan = self._current_plan()
        horizon = self._repeat_horizon
        pending = [
            s
            for s in plan.steps
            if (s.kind is StepKind.REPEAT and (horizon is None or s.due_at > horizon))
            or (s.kind is not StepKind.REPEAT and s.name not in self._fired)
        ]
        return sorted(pending, key=lambda s: s.due_at)

    def _next_wake(self) -> datetime | None:
        status = self._state()
        candidates: list[datetime] = []
        if status.state is TicketState.OPEN:
            pending = self._pending_steps()
            if pending:
                candidates.append(pending[0].due_at)
            if status.response_due_at and not status.response_breached:
                candidates.append(status.response_due_at)
        idle_at = self._idle_close_at()
        if idle_at:
            candidates.append(idle_at)
        return min(candidates) if candidates else None

    def _refresh_next_step(self) -> None:
        status = self._state()
        pending = self._pending_steps() if status.state is TicketState.OPEN else []
        status.next_step = pending[0].name if pending else None
        status.next_step_due_at = pending[0].due_at if pending else None

    async def _extend_ladder(self) -> bool:
        """All expanded repeat steps are done but the ladder goes on: fetch the repeats
        due after the last one sent. True when that added steps to wait for."""
        plan = self._current_plan()
        if self._pending_steps() or not plan.more_steps:
            return False
        after = self._repeat_horizon or max(
            (s.due_at for s in plan.steps if s.kind is StepKind.REPEAT), default=None
        )
        more = await self._resolve(self._state().severity, repeats_after=after)
        repeats = [s for s in more.steps if s.kind is StepKind.REPEAT]
        # Done repeats are dropped, so a ladder that runs for days stays small.
        plan.steps = [s for s in plan.steps if s.kind is not StepKind.REPEAT] + repeats
        plan.more_steps = more.more_steps and bool(repeats)
        self._note_policy_version(more.policy_version)
        return bool(self._pending_steps())

    # --- commands --------------------------------------------------------------------------

    async def _drain_inbox(self) -> None:
        while self._inbox:
            command = self._inbox.pop(0)
            if command.name == "acknowledge":
                assert isinstance(command.payload, Acknowledge)
                self._on_acknowledge(command.payload, command.at)
            elif command.name == "change_severity":
                assert isinstance(command.payload, ChangeSeverity)
                await self._on_change_severity(command.payload, command.at)
            elif command.name == "mark_out_of_scope":
                assert isinstance(command.payload, MarkOutOfScope)
                if self._state().state in (TicketState.OPEN, TicketState.ACKNOWLEDGED):
                    await self._route_to_sow(command.payload.reason, command.payload.by, command.at)
                else:
                    self._ignored("mark_out_of_scope", command.payload.by, command.at)
            elif command.name == "resolve":
                assert isinstance(command.payload, Resolve)
                self._on_resolve(command.payload, command.at)
            elif command.name == "customer_reply":
                assert isinstance(command.payload, CustomerReply)
                self._on_customer_reply(command.payload, command.at)
            elif command.name == "rejected":
                assert isinstance(command.payload, RejectedSignal)
                self._on_rejected(command.payload, command.at)

    def _on_acknowledge(self, ack: Acknowledge, at: datetime) -> None:
        status = self._state()
        if status.state is not TicketState.OPEN:
            n = self._next("ack-repeat")
            self._log(
                "acknowledge_repeated",
                at=at,
                by=ack.agent,
                detail=f"ticket already {status.state.value}; nothing changed",
            )
            self._record(
                f"acknowledge-repeated-{n}",
                kind="acknowledge_repeated",
                at=at,
                by=ack.agent,
                state=status.state.value,
            )
            return
        # An acknowledgement at the due instant itself is in time (the queued signal is
        # applied before the breach timer of the same instant).
        self._check_breach(at, at_due_counts=False)
        status.state = TicketState.ACKNOWLEDGED
        status.acknowledged_at, status.acknowledged_by = at, ack.agent
        sla_metrics.acknowledged(
            status.tier.value, at - status.opened_at, breached=status.response_breached
        )
        verdict = "breached" if status.response_breached else "met"
        self._log(
            "acknowledged",
            at=at,
            by=ack.agent,
            detail=f"response target {verdict}" if status.commercial_sla else ack.note,
        )
        self._record(
            "acknowledged",
            at=at,
            by=ack.agent,
            note=ack.note,
            response_breached=status.response_breached,
            overrun_seconds=self._overrun_seconds(),
        )
        self._sync_search_attributes()
        self._update_pages("acknowledge", ack.agent)

    async def _on_change_severity(self, change: ChangeSeverity, at: datetime) -> None:
        status = self._state()
        n = self._next("severity")
        before = status.severity
        if status.state in TERMINAL or status.state is TicketState.ROUTED_TO_SOW:
            self._ignored("change_severity", change.by, at)
            return
        if change.severity == before:
            self._log("severity_unchanged", at=at, by=change.by, detail=before.value)
            return
        status.severity = change.severity
        if status.state is TicketState.OPEN:
            # Deadlines are recomputed from the original open time: a re-triage does not
            # give the support team a fresh clock.
            plan = await self._resolve(change.severity, repeats_after=self._repeat_horizon)
            self._apply_plan(plan)
        self._log(
            "severity_changed",
            at=at,
            by=change.by,
            detail=f"{before.value} -> {change.severity.value}"
            + (f": {change.reason}" if change.reason else ""),
        )
        self._record(
            f"severity-changed-{n}",
            kind="severity_changed",
            at=at,
            by=change.by,
            before=before.value,
            after=change.severity.value,
            reason=change.reason,
            response_due_at=_iso(status.response_due_at),
        )
        self._sync_search_attributes()

    def _on_resolve(self, resolve: Resolve, at: datetime) -> None:
        status = self._state()
        if status.state is TicketState.OPEN:
            # Resolving is also the first response: record it as the acknowledgement.
            self._on_acknowledge(Acknowledge(agent=resolve.by, note="resolved"), at)
        if status.state is not TicketState.ACKNOWLEDGED:
            self._ignored("resolve", resolve.by, at)
            return
        status.state = TicketState.RESOLVED
        status.resolved_at, status.resolved_by = at, resolve.by
        status.next_step, status.next_step_due_at = None, None
        self._log("resolved", at=at, by=resolve.by, detail=resolve.summary)
        self._record("resolved", at=at, by=resolve.by, summary=resolve.summary)
        self._sync_search_attributes()
        self._update_pages("resolve", resolve.by)

    def _on_customer_reply(self, reply: CustomerReply, at: datetime) -> None:
        # Keyed by the message's reference: the same reply delivered twice is one event.
        digest = hashlib.sha256(reply.reference.encode()).hexdigest()[:16]
        if digest in self._replies:
            return
        self._replies.add(digest)
        self._log(
            "customer_reply", at=at, by="customer", detail=f"via {reply.via}: {reply.subject}"
        )
        self._record(
            f"customer-reply-{digest}",
            kind="customer_reply",
            at=at,
            via=reply.via,
            subject=reply.subject,
            received_at=reply.received_at.isoformat(),
        )

    def _on_rejected(self, rejected: RejectedSignal, at: datetime) -> None:
        n = self._next("rejected")
        detail = "; ".join(rejected.problems)
        self._log(f"{rejected.signal}_rejected", at=at, detail=detail)
        self._record(
            f"rejected-{n}",
            kind="signal_rejected",
            at=at,
            signal=rejected.signal,
            problems=rejected.problems,
        )

    def _ignored(self, what: str, by: str, at: datetime) -> None:
        state = self._state().state.value
        n = self._next("ignored")
        self._log(f"{what}_ignored", at=at, by=by, detail=f"ticket is {state}")
        self._record(f"ignored-{n}", kind=f"{what}_ignored", at=at, by=by, state=state)

    # --- steps and the clock ---------------------------------------------------------------

    def _check_breach(self, now: datetime, at_due_counts: bool = True) -> None:
        status = self._state()
        due = status.response_due_at
        if (
            status.state is TicketState.OPEN
            and due is not None
            and not status.response_breached
            and (now >= due if at_due_counts else now > due)
        ):
            status.response_breached = True
            status.breached_at = status.response_due_at
            sla_metrics.sla_breached(status.tier.value, status.severity.value)
            self._log(
                "response_target_missed",
                at=due,
                detail="no acknowledgement within the response target",
            )
            self._sync_search_attributes()

    def _catch_up(self, due: list[PlannedStep], now: datetime) -> None:
        """Fire the steps that are due. Normally that is one step at its instant; when
        several are overdue at once (a severity raised past its new deadline, a worker that
        was down), warnings after the breach and all but the latest repeat are superseded:
        recorded, not sent, so nobody gets a burst of stale pages."""
        breach_due = self._state().response_breached
        breach_in_batch = any(s.kind is StepKind.BREACH for s in due)
        repeats = [s for s in due if s.kind is StepKind.REPEAT]
        for step in due:
            superseded = (step.kind is StepKind.WARNING and breach_due) or (
                step.kind is StepKind.REPEAT and (breach_in_batch or step is not repeats[-1])
            )
            if superseded:
                self._mark_done(step)
                self._log(
                    "step_superseded",
                    at=now,
                    detail=f"step {step.name} (due {step.due_at.isoformat()}) not sent:"
                    " a later step of the ladder is due",
                )
                self._record(
                    f"superseded/{step.due_at.isoformat()}/{step.name}",
                    kind="step_superseded",
                    at=now,
                    step=step.name,
                    due_at=step.due_at.isoformat(),
                )
            else:
                self._fire(step, now)

    def _mark_done(self, step: PlannedStep) -> None:
        if step.kind is StepKind.REPEAT:
            self._repeat_horizon = max(step.due_at, self._repeat_horizon or step.due_at)
        else:
            self._fired.add(step.name)

    def _fire(self, step: PlannedStep, now: datetime) -> None:
        status = self._state()
        self._mark_done(step)
        name = step.name
        if step.kind is StepKind.REPEAT:
            # Repeats are numbered as sent, so the name (and the idempotency key) stays
            # unique when a severity change switches to another cadence.
            self._repeats_sent += 1
            name = f"{step.name.rsplit('-', 1)[0]}-{self._repeats_sent}"
        record = EscalationRecord(
            step=name,
            kind=step.kind,
            due_at=step.due_at,
            fired_at=now,
            targets=[r.name for r in step.recipients],
        )
        status.escalations.append(record)
        sla_metrics.escalation_fired(status.tier.value, status.severity.value, step.kind.value)
        kind = {
            StepKind.INTAKE: "notified",
            StepKind.WARNING: "warned",
            StepKind.BREACH: "breached",
            StepKind.REPEAT: "escalated",
        }[step.kind]
        self._log(kind, at=now, detail=f"step {name} to {', '.join(record.targets)}")
        self._revision += 1
        wf_id = workflow.info().workflow_id
        request = StepDelivery(
            workflow_id=wf_id,
            ticket_id=status.ticket_id,
            customer_id=status.customer_id,
            tier=status.tier,
            severity=status.severity,
            step=name,
            kind=step.kind.value,
            due_at=step.due_at,
            response_due_at=status.response_due_at,
            subject=self._ticket.subject,
            recipients=step.recipients,
            time_zone=status.time_zone,
            failover_after=self._current_plan().failover_after,
            # Events this activation recorded before the step ride on its delivery
            # instead of an activity of their own (the "opened" event with the intake).
            earlier_events=self._claim_unwritten(),
            event=SlaEvent(
                key=f"{wf_id}/{name}",
                ticket_id=status.ticket_id,
                kind=kind,
                at=now,
                source="timer",
                detail={
                    "step": name,
                    "due_at": step.due_at.isoformat(),
                    "targets": record.targets,
                },
            ),
            summary=self._outcome(),
        )
        self._paged += [r for r in step.recipients if r.pages() and r not in self._paged]
        self._deliveries = [d for d in self._deliveries if not d.done()]
        self._deliveries.append(self._spawn(self._deliver(request, record)))

    async def _deliver(self, request: StepDelivery, record: EscalationRecord) -> None:
        try:
            result = await workflow.execute_activity(
                "deliver_step",
                request,
                result_type=StepDeliveryResult,
                start_to_close_timeout=DELIVERY_TIMEOUT,
                schedule_to_close_timeout=delivery_deadline(
                    request.failover_after, request.recipients
                ),
                retry_policy=DELIVERY_RETRY,
            )
            record.failed = result.failed
        except ActivityError as err:
            cause = err.cause
            details: dict[str, Any] = {}
            if isinstance(cause, ApplicationError) and cause.details:
                details = dict(cause.details[0])
            delivered: list[str] = list(details.get("delivered", []))
            if "failed" in details:  # only the ledger was behind: the activity's own outcome
                record.failed = [DeliveryFailure.model_validate(f) for f in details["failed"]]
            else:
                record.failed = [
                    DeliveryFailure(recipient=r.name, channel="all", error=str(cause or err))
                    for r in request.recipients
                    if r.name not in delivered
                ]
            # The activity writes the step's ledger events only when it succeeds.
            for earlier in request.earlier_events:
                self._write_ledger(earlier)
            if request.event is not None:
                event = request.event
                outcome = {"delivered": delivered}
                for key in ("channels", "failed"):
                    if key in details:
                        outcome[key] = details[key]
                self._write_ledger(event.model_copy(update={"detail": {**event.detail, **outcome}}))
        if record.failed:
            # Never silently skipped: the failure is on the ticket and in the ledger.
            self._log(
                "notification_failed",
                at=workflow.now(),
                detail=f"step {record.step}: "
                + "; ".join(f"{f.recipient}: {f.error}" for f in record.failed),
            )
            self._record(
                f"{record.step}/failed",
                kind="notification_failed",
                at=workflow.now(),
                step=record.step,
                failed=[f.model_dump() for f in record.failed],
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
                await workflow.execute_activity(
                    "update_pages",
                    update,
                    start_to_close_timeout=DELIVERY_TIMEOUT,
                    schedule_to_close_timeout=delivery_deadline(
                        self._current_plan().failover_after, update.recipients
                    ),
                    retry_policy=DELIVERY_RETRY,
                )
            except ActivityError as err:
                self._log("page_update_failed", at=workflow.now(), detail=str(err.cause or err))
                self._record(
                    f"page-{action}/failed",
                    kind="page_update_failed",
                    at=workflow.now(),
                    action=action,
                    error=str(err.cause or err),
                )

        self._page_updates = self._spawn(run())

    def _idle_close_at(self) -> datetime | None:
        status = self._state()
        plan = self._current_plan()
        if plan.idle_close_after is None or status.state in TERMINAL:
            return None
        last = status.history[-1].at if status.history else status.opened_at
        return max(last, status.opened_at) + plan.idle_close_after

    def _idle_close_due(self, now: datetime) -> bool:
        idle_at = self._idle_close_at()
        return idle_at is not None and now >= idle_at

    def _close_idle(self, now: datetime) -> None:
        status = self._state()
        status.state, status.closed_at = TicketState.CLOSED, now
        self._log("closed_idle", at=now, detail="no activity; community tickets close when idle")
        self._record("closed", kind="closed_idle", at=now)
        self._sync_search_attributes()

    # --- out of scope ----------------------------------------------------------------------

    async def _route_to_sow(self, reason: str, by: str, at: datetime) -> None:
        status = self._state()
        self._check_breach(at, at_due_counts=False)
        status.state = TicketState.ROUTED_TO_SOW
        status.out_of_scope = True
        status.next_step, status.next_step_due_at = None, None
        child_id = sow_workflow_id(status.ticket_id)
        status.sow = SowStatus(workflow_id=child_id, reason=reason)
        self._log("out_of_scope", at=at, by=by, detail=reason)
        self._record(
            "out-of-scope",
            kind="out_of_scope",
            at=at,
            by=by,
            reason=reason,
            sow_workflow_id=child_id,
        )
        self._sync_search_attributes()
        self._update_pages("resolve", by)
        plan = self._current_plan()
        handle = await workflow.start_child_workflow(
            "StatementOfWork",
            SowInput(
                ticket_id=status.ticket_id,
                customer_id=status.customer_id,
                tier=status.tier,
                severity=status.severity,
                subject=self._ticket.subject,
                reporter_email=self._ticket.reporter_email,
                reason=reason,
                terms=plan.sow,
            ),
            id=child_id,
            result_type=SowResult,
        )
        while not handle.done():
            await workflow.wait_condition(lambda: bool(self._inbox) or handle.done())
            await self._drain_inbox()
        try:
            result = await handle
        except ChildWorkflowError as err:
            result = SowResult(
                outcome=SowOutcome.EXPIRED,
                decided_by="system",
                decided_at=workflow.now(),
                reference=f"failed: {err.cause}",
            )
        now = workflow.now()
        status.sow.outcome = result.outcome
        status.sow.decided_by, status.sow.decided_at = result.decided_by, result.decided_at
        status.sow.reference = result.reference
        status.state, status.closed_at = TicketState.CLOSED, now
        self._log(
            f"sow_{result.outcome.value}", at=now, by=result.decided_by, detail=result.reference
        )
        self._record(
            "closed",
            kind=f"sow_{result.outcome.value}",
            at=now,
            by=result.decided_by,
            reference=result.reference,
        )
        self._sync_search_attributes()

    # --- plumbing --------------------------------------------------------------------------

    async def _resolve(self, severity: Any, repeats_after: datetime | None = None) -> TicketPlan:
        status = self._state()
        return await workflow.execute_activity(
            "resolve_ticket_plan",
            PlanRequest(
                ticket=self._ticket,
                severity=severity,
                opened_at=status.opened_at,
                repeats_after=repeats_after,
                pinned_version=status.policy_version,
            ),
            result_type=TicketPlan,
            start_to_close_timeout=POLICY_TIMEOUT,
            retry_policy=POLICY_RETRY,
        )

    def _apply_plan(self, plan: TicketPlan) -> None:
        status = self._state()
        previous = self._plan
        self._plan = plan
        status.severity = plan.severity
        self._note_policy_version(plan.policy_version)
        status.commercial_sla = plan.commercial_sla
        status.response_target = plan.response_target
        status.response_due_at = plan.response_due_at
        status.time_zone = plan.time_zone
        if previous is not None:
            self._log(
                "plan_resolved",
                at=workflow.now(),
                detail=f"policy {plan.policy_version}, response due {_iso(plan.response_due_at)}",
            )
        self._sync_search_attributes()

    def _note_policy_version(self, version: str) -> None:
        status = self._state()
        if status.policy_version is not None and status.policy_version != version:
            # Only the loaded policy can be resolved; the change is on the ticket's record.
            self._log(
                "policy_version_changed",
                at=workflow.now(),
                detail=f"{status.policy_version} -> {version} (re-resolved under the loaded"
                " policy)",
            )
        status.policy_version = version

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
        updates: list[SearchAttributeUpdate[Any]] = []
        for key, value in desired.items():
            if self._search.get(key.name) != value:
                self._search[key.name] = value
                updates.append(key.value_unset() if value is None else key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)

    def _record(
        self,
        name: str,
        *,
        at: datetime,
        kind: str | None = None,
        by: str | None = None,
        **detail: Any,
    ) -> None:
        """Write an SLA event (and the ticket's row) to the ledger in the background."""
        status = self._state()
        self._revision += 1
        event = SlaEvent(
            key=f"{workflow.info().workflow_id}/{name}",
            ticket_id=status.ticket_id,
            kind=kind or name,
            at=at,
            source=f"agent:{by}" if by else "workflow",
            detail={k: v for k, v in detail.items() if v is not None},
        )
        self._write_ledger(event)

    def _write_ledger(self, event: SlaEvent) -> None:
        """The event and the ticket's row, in the background: since the
        ``BATCHED_LEDGER_WRITES`` change, one activity (one billed Action) carries every
        event of a workflow activation (an acknowledgement and a resolution that arrive
        together, a step and its failure record) instead of one activity per event, and
        when the activation fires a step, its delivery carries them (``_fire``)."""
        if not self._batch_ledger_writes():
            # Tickets whose history predates the change replay their one-per-event writes.
            self._spawn(
                workflow.execute_activity(
                    "record_sla_events",
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
        return workflow.patched(BATCHED_LEDGER_WRITES)

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
        await workflow.execute_activity(
            "record_sla_events",
            SlaEvents(events=events, summary=self._outcome()),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
        )

    def _outcome(self) -> TicketOutcome:
        status = self._state()
        return TicketOutcome(
            ticket_id=status.ticket_id,
            workflow_id=workflow.info().workflow_id,
            revision=self._revision,
            customer_id=status.customer_id,
            tier=status.tier,
            severity=status.severity,
            category=status.category,
            state=status.state,
            opened_at=status.opened_at,
            response_due_at=status.response_due_at,
            acknowledged_at=status.acknowledged_at,
            acknowledged_by=status.acknowledged_by,
            response_breached=status.response_breached,
            overrun=timedelta(seconds=s) if (s := self._overrun_seconds()) else None,
            escalations_fired=len(status.escalations),
            out_of_scope=status.out_of_scope,
            sow_outcome=status.sow.outcome if status.sow else None,
            resolved_at=status.resolved_at,
            closed_at=status.closed_at,
            policy_version=status.policy_version,
        )

    def _overrun_seconds(self) -> float | None:
        status = self._state()
        if not status.response_breached or status.breached_at is None:
            return None
        end = status.acknowledged_at or workflow.now()
        return max(0.0, (end - status.breached_at).total_seconds())

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._background.append(task)
        return task

    async def _finish(self) -> None:
        # Let queued signals be recorded, and every notification / ledger write land.
        while True:
            await self._drain_inbox()
            if not self._background:
                break
            await self._await_background()
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _await_background(self) -> None:
        while self._background:
            pending, self._background = self._background, []
            await asyncio.gather(*pending)

    def _log(
        self, kind: str, *, at: datetime, by: str | None = None, detail: str | None = None
    ) -> None:
        self._state().history.append(HistoryEntry(at=at, kind=kind, by=by, detail=detail))
        workflow.logger.info(
            "ticket %s",
            kind,
            extra={"ticket_id": self._state().ticket_id, "by": by, "detail": detail},
        )

    def _next(self, counter: str) -> int:
        self._counters[counter] = self._counters.get(counter, 0) + 1
        return self._counters[counter]

    def _state(self) -> TicketStatus:
        assert self._status is not None
        return self._status

    def _current_plan(self) -> TicketPlan:
        assert self._plan is not None
        return self._plan


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _current_search_attributes() -> dict[str, Any]:
    """The search attributes this run started with (set at intake, or carried over)."""
    return {key.name: workflow.info().typed_search_attributes.get(key) for key in sa.ALL}
