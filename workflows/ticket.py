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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)
from temporalio.workflow import ActivityCancellationType

from workflows import sla_metrics
from workflows.activity_options import (
    DELIVERY_RETRY,
    DELIVERY_TIMEOUT,
    LEDGER_RETRY,
    LEDGER_TIMEOUT,
    POLICY_RETRY,
    POLICY_RETRY_AFTER,
    POLICY_SCHEDULE_TIMEOUT,
    POLICY_TIMEOUT,
    delivery_deadline,
)

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from contract import search_attributes as sa
    from contract.models import (
        Acknowledge,
        AdoptPolicy,
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
        Severity,
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
        Tier,
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
# An acknowledgement cancels the warnings, breaches and repeats not yet delivered.
ACK_SUPERSEDES_DELIVERIES = "ack-supersedes-pending-deliveries"
# Raising the severity tells the new severity's first responders who have not heard yet.
RETRIAGE_NOTIFIES = "retriage-notifies-new-responders"
# A customer reply on an acknowledged ticket is sent to whoever acknowledged it.
REPLY_NOTIFIES = "customer-reply-notifies"

# The agent actions and the states each may apply in (updates are refused otherwise).
ACTION_STATES: Mapping[str, tuple[TicketState, ...]] = MappingProxyType(
    {
        "acknowledge": (TicketState.OPEN,),
        "change_severity": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "mark_out_of_scope": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "resolve": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
        "adopt_policy": (TicketState.OPEN, TicketState.ACKNOWLEDGED),
    }
)
# Steps an acknowledgement makes moot (intake notifications still go out).
MOOT_ON_ACK = (StepKind.WARNING, StepKind.BREACH, StepKind.REPEAT)


@dataclass
class _Command:
    name: str
    payload: BaseModel
    at: datetime
    # Set once the loop has applied it: an update waits for this, and fails with
    # ``refused`` when the command turned out not to apply (e.g. a second ack queued in
    # the same instant as the first).
    done: bool = False
    refused: str | None = None


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
        # Why the first plan could not be resolved yet (shown by the status query).
        self._planning_problem: str | None = None
        # When to try again to extend the ladder after the policy could not be resolved.
        self._plan_retry_at: datetime | None = None
        # Everyone a step has been sent to (re-triage tells only those who have not heard).
        self._notified: set[str] = set()
        # Customer replies on an open ticket, told with its next step.
        self._unannounced_replies: list[str] = []
        # Deliveries in flight, with their step's kind (an ack makes some moot).
        self._delivery_kinds: dict[asyncio.Task[Any], StepKind] = {}
        # The command the loop is applying (an update waiting for it is told when done).
        self._current: _Command | None = None

    # --- messages ----------------------------------------------------------------------

    # Signal handlers take the raw payload and validate it themselves: a malformed signal
    # from a client in any language is recorded on the ticket with what was wrong (the SDK
    # would otherwise drop it with nothing but a worker log line). Agent surfaces use the
    # updates of the same names: their validators refuse what cannot apply before anything
    # reaches the history, and they answer with the status after the action.

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

    @workflow.signal(name="adopt_policy")
    def adopt_policy(self, adopt: RawValue) -> None:
        self._receive("adopt_policy", AdoptPolicy, adopt)

    @workflow.signal(name="customer_reply")
    def customer_reply(self, reply: RawValue) -> None:
        self._receive("customer_reply", CustomerReply, reply)

    @workflow.update(name="acknowledge")
    async def acknowledge_update(self, ack: Acknowledge) -> TicketStatus:
        return await self._act("acknowledge", ack)

    @acknowledge_update.validator
    def _validate_acknowledge(self, ack: Acknowledge) -> None:
        self._check_action("acknowledge")

    @workflow.update(name="change_severity")
    async def change_severity_update(self, change: ChangeSeverity) -> TicketStatus:
        return await self._act("change_severity", change)

    @change_severity_update.validator
    def _validate_change_severity(self, change: ChangeSeverity) -> None:
        self._check_action("change_severity")
        if self._status is not None and change.severity is self._status.severity:
            raise ValueError(
                f"cannot change_severity: ticket {self._status.ticket_id} is already"
                f" {change.severity.value}"
            )

    @workflow.update(name="mark_out_of_scope")
    async def mark_out_of_scope_update(self, mark: MarkOutOfScope) -> TicketStatus:
        return await self._act("mark_out_of_scope", mark)

    @mark_out_of_scope_update.validator
    def _validate_mark_out_of_scope(self, mark: MarkOutOfScope) -> None:
        self._check_action("mark_out_of_scope")

    @workflow.update(name="resolve")
    async def resolve_update(self, resolve: Resolve) -> TicketStatus:
        return await self._act("resolve", resolve)

    @resolve_update.validator
    def _validate_resolve(self, resolve: Resolve) -> None:
        self._check_action("resolve")

    @workflow.update(name="adopt_policy")
    async def adopt_policy_update(self, adopt: AdoptPolicy) -> TicketStatus:
        return await self._act("adopt_policy", adopt)

    @adopt_policy_update.validator
    def _validate_adopt_policy(self, adopt: AdoptPolicy) -> None:
        self._check_action("adopt_policy")
        if self._status is not None and adopt.version == self._status.policy_version:
            raise ValueError(
                f"cannot adopt_policy: ticket {self._status.ticket_id} already runs under"
                f" policy {adopt.version}"
            )

    def _check_action(self, action: str) -> None:
        """Refuse an update whose action cannot apply to the ticket as it stands (a ticket
        still planning its SLA is open)."""
        status = self._status
        if status is None or status.state in ACTION_STATES[action]:
            return
        detail = f"ticket {status.ticket_id} is {status.state.value}"
        if status.state is TicketState.ACKNOWLEDGED and status.acknowledged_at:
            detail += f" (by {status.acknowledged_by} at {status.acknowledged_at.isoformat()})"
        raise ValueError(f"cannot {action}: {detail}")

    async def _act(self, name: str, payload: BaseModel) -> TicketStatus:
        """Queue an update's command for the loop, wait until it is applied, and answer
        with the status after it (or fail with why it did not apply)."""
        command = _Command(name, payload, workflow.now())
        self._inbox.append(command)
        await workflow.wait_condition(lambda: command.done)
        if command.refused:
            raise ApplicationError(command.refused, type="ActionRefused", non_retryable=True)
        return self._state().model_copy(deep=True)

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
        # The status exists once the SLA plan is applied, so its first answer already has
        # the deadline (never a "no SLA" null that only means "not planned yet").
        if self._status is None:
            problem = f": {self._planning_problem}" if self._planning_problem else ""
            raise RuntimeError(
                f"the ticket is still planning its SLA{problem}; query again in a moment"
            )
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
        self._search = _current_search_attributes()
        plan = await self._first_plan(opened_at)
        self._status = TicketStatus(
            ticket_id=ticket.ticket_id,
            customer_id=ticket.customer_id,
            tier=plan.tier,
            severity=plan.severity,
            category=ticket.category,
            state=TicketState.OPEN,
            opened_at=opened_at,
            integration=ticket.integration,
        )
        self._log("opened", at=opened_at, detail=f"via {ticket.intake_channel}")
        if ticket.tier is not None and plan.tier is not ticket.tier:
            # A raw start that claimed another tier than the customer's contract.
            self._status.claimed_tier, self._status.entitlement = ticket.tier, plan.entitlement
            self._log(
                "tier_corrected",
                at=opened_at,
                detail=f"claimed {ticket.tier.value}; runs at {plan.tier.value}"
                f" ({plan.entitlement})",
            )
        self._apply_plan(plan)
        sla_metrics.ticket_opened(plan.tier.value, plan.severity.value)
        self._record(
            "opened",
            at=opened_at,
            intake_channel=ticket.intake_channel,
            policy_version=plan.policy_version,
            response_due_at=_iso(plan.response_due_at),
            claimed_tier=self._status.claimed_tier.value if self._status.claimed_tier else None,
            entitlement=self._status.entitlement,
            integration=ticket.integration,
        )

        if plan.out_of_scope_reason:
            await self._route_to_sow(plan.out_of_scope_reason, by="policy", at=now)
        else:
            await self._sla_loop()
        await self._finish()
        return self._status

    async def _first_plan(self, opened_at: datetime) -> TicketPlan:
        """The ticket's plan under the policy loaded now. Without one there is no promise to
        keep: the ticket retries (a raw start while the policy file is broken; intake paths
        refuse new tickets then) and says why to anyone who asks for its status."""
        delay = POLICY_RETRY_AFTER
        while True:
            plan = await self._resolve(None, opened_at=opened_at, pinned_version=None, tier=None)
            if plan is not None:
                self._planning_problem = None
                return plan
            await workflow.sleep(delay)
            delay = min(delay * 2, POLICY_RETRY_AFTER * 16)

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
            notified=sorted(self._notified),
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
        self._notified = set(carry.notified)
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
        if self._plan_retry_at is not None and status.state is TicketState.OPEN:
            candidates.append(self._plan_retry_at)
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
        if self._plan_retry_at is not None and workflow.now() < self._plan_retry_at:
            return False
        after = self._repeat_horizon or max(
            (s.due_at for s in plan.steps if s.kind is StepKind.REPEAT), default=None
        )
        more = await self._resolve(self._state().severity, repeats_after=after)
        if more is None:
            # The policy could not be resolved (recorded): try again a little later.
            self._plan_retry_at = workflow.now() + POLICY_RETRY_AFTER
            return False
        self._plan_retry_at = None
        self._state().policy_problem = None
        repeats = [s for s in more.steps if s.kind is StepKind.REPEAT]
        # Done repeats are dropped, so a ladder that runs for days stays small.
        plan.steps = [s for s in plan.steps if s.kind is not StepKind.REPEAT] + repeats
        plan.more_steps = more.more_steps and bool(repeats)
        return bool(self._pending_steps())

    # --- commands --------------------------------------------------------------------------

    async def _drain_inbox(self) -> None:
        while self._inbox:
            command = self._inbox.pop(0)
            self._current = command
            try:
                command.refused = await self._apply(command)
            finally:
                self._settle(command)

    def _settle(self, command: _Command | None = None) -> None:
        """Tell an update waiting for ``command`` (default: the one being applied) that the
        ticket's status now reflects it."""
        command = command or self._current
        if command is not None:
            command.done = True
        if command is self._current:
            self._current = None

    async def _apply(self, command: _Command) -> str | None:
        """Apply one command; None when it applied, else why it did not."""
        payload = command.payload
        if isinstance(payload, Acknowledge):
            return self._on_acknowledge(payload, command.at)
        if isinstance(payload, ChangeSeverity):
            return await self._on_change_severity(payload, command.at)
        if isinstance(payload, MarkOutOfScope):
            if self._state().state in (TicketState.OPEN, TicketState.ACKNOWLEDGED):
                await self._route_to_sow(payload.reason, payload.by, command.at)
                return None
            return self._ignored("mark_out_of_scope", payload.by, command.at)
        if isinstance(payload, Resolve):
            return self._on_resolve(payload, command.at)
        if isinstance(payload, AdoptPolicy):
            return await self._on_adopt_policy(payload, command.at)
        if isinstance(payload, CustomerReply):
            self._on_customer_reply(payload, command.at)
            return None
        assert isinstance(payload, RejectedSignal)
        self._on_rejected(payload, command.at)
        return None

    def _acted_at(self, stamped: datetime | None, received: datetime) -> datetime:
        """When an agent's action counts: the instant the surface stamped, but never later
        than the ticket's own clock and never before the ticket opened."""
        if stamped is None:
            return received
        return max(min(stamped, received), self._state().opened_at)

    def _on_acknowledge(
        self, ack: Acknowledge, received: datetime, resolving: bool = False
    ) -> str | None:
        status = self._state()
        at = self._acted_at(ack.at, received)
        if status.state is not TicketState.OPEN:
            n = self._next("ack-repeat")
            self._log(
                "acknowledge_repeated",
                at=received,
                by=ack.agent,
                detail=f"ticket already {status.state.value}; nothing changed",
            )
            self._record(
                f"acknowledge-repeated-{n}",
                kind="acknowledge_repeated",
                at=received,
                by=ack.agent,
                state=status.state.value,
            )
            why = f"ticket {status.ticket_id} is {status.state.value}"
            if status.acknowledged_at:
                why += f" (by {status.acknowledged_by} at {status.acknowledged_at.isoformat()})"
            return f"cannot acknowledge: {why}"
        # An acknowledgement at the due instant itself is in time (the queued signal is
        # applied before the breach timer of the same instant).
        self._check_breach(at, at_due_counts=False)
        withdrawn = self._withdraw_breach_before(at)
        status.state = TicketState.ACKNOWLEDGED
        status.acknowledged_at, status.acknowledged_by = at, ack.agent
        status.acknowledged_received_at = received
        sla_metrics.acknowledged(
            status.tier.value, at - status.opened_at, breached=status.response_breached
        )
        verdict = "breached" if status.response_breached else "met"
        detail: str | None = f"response target {verdict}" if status.commercial_sla else ack.note
        if at != received:
            detail = f"{detail or 'acknowledged'}; acted at {at.isoformat()}, processed at" + (
                f" {received.isoformat()}"
            )
        self._log("acknowledged", at=at, by=ack.agent, detail=detail)
        self._record(
            "acknowledged",
            at=at,
            by=ack.agent,
            note=ack.note,
            response_breached=status.response_breached,
            overrun_seconds=self._overrun_seconds(),
            received_at=_iso(received) if at != received else None,
            breach_withdrawn=withdrawn or None,
        )
        self._sync_search_attributes()
        self._supersede_pending_deliveries(at)
        self._update_pages("acknowledge", ack.agent)
        if self._unannounced_replies and not resolving:
            # Replies that were waiting for the next step go to whoever acknowledged.
            text, self._unannounced_replies = "\n".join(self._unannounced_replies), []
            n = self._next("reply-forward")
            recipients = self._reply_recipients()
            if recipients:
                self._send(f"reply-forward-ack-{n}", "customer_reply", recipients, at, text, at)
        return None

    def _withdraw_breach_before(self, at: datetime) -> bool:
        """An acknowledgement stamped before the deadline that was processed after the
        breach was recorded (the surface's message waited out an outage): the response was
        in time, so the breach is withdrawn and the record says so."""
        status = self._state()
        if not status.response_breached or status.breached_at is None or at > status.breached_at:
            return False
        status.response_breached, status.breached_at = False, None
        self._log(
            "breach_withdrawn",
            at=at,
            detail="acknowledged before the deadline; the breach was recorded before the"
            " acknowledgement was processed",
        )
        return True

    def _supersede_pending_deliveries(self, at: datetime) -> None:
        """An acknowledgement makes the warnings, breaches and repeats not yet delivered
        moot: their deliveries are cancelled (recorded as superseded when they had not been
        sent; one already being sent finishes)."""
        moot = [
            task
            for task, kind in self._delivery_kinds.items()
            if kind in MOOT_ON_ACK and not task.done()
        ]
        if moot and workflow.patched(ACK_SUPERSEDES_DELIVERIES):
            for task in moot:
                task.cancel()

    async def _on_change_severity(self, change: ChangeSeverity, at: datetime) -> str | None:
        status = self._state()
        n = self._next("severity")
        before = status.severity
        if status.state in TERMINAL or status.state is TicketState.ROUTED_TO_SOW:
            return self._ignored("change_severity", change.by, at)
        if change.severity == before:
            self._log("severity_unchanged", at=at, by=change.by, detail=before.value)
            return f"cannot change_severity: ticket {status.ticket_id} is already {before.value}"
        if status.state is TicketState.OPEN:
            # Deadlines are recomputed from the original open time under the ticket's own
            # policy version: a re-triage does not give the support team a fresh clock. The
            # new severity and its deadline are applied together, or neither.
            plan = await self._resolve(change.severity, repeats_after=self._repeat_horizon)
            if plan is None:
                problem = status.policy_problem or "the policy could not be resolved"
                self._log("severity_change_failed", at=at, by=change.by, detail=problem)
                return f"cannot change_severity: {problem}"
            self._apply_plan(plan)
        status.severity = change.severity
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
        if _rank(change.severity) < _rank(before):
            self._tell_new_responders(before, change, at)
        return None

    def _tell_new_responders(self, before: Severity, change: ChangeSeverity, at: datetime) -> None:
        """Raising the severity tells the new severity's first responders (its intake step)
        who have not heard of the ticket yet, once."""
        intake = next((s for s in self._current_plan().steps if s.kind is StepKind.INTAKE), None)
        if intake is None:
            return
        fresh = [r for r in intake.recipients if r.name not in self._notified]
        if not fresh or not workflow.patched(RETRIAGE_NOTIFIES):
            return
        n = self._next("retriage")
        message = f"Severity raised {before.value} -> {change.severity.value} by {change.by}" + (
            f": {change.reason}" if change.reason else ""
        )
        self._send(f"retriage-{n}", "retriage", fresh, at, message, due_at=at)

    def _on_resolve(self, resolve: Resolve, received: datetime) -> str | None:
        status = self._state()
        if status.state is TicketState.OPEN:
            # Resolving is also the first response: record it as the acknowledgement.
            self._on_acknowledge(
                Acknowledge(agent=resolve.by, note="resolved", at=resolve.at),
                received,
                resolving=True,
            )
        if status.state is not TicketState.ACKNOWLEDGED:
            return self._ignored("resolve", resolve.by, received)
        at = self._acted_at(resolve.at, received)
        status.state = TicketState.RESOLVED
        status.resolved_at, status.resolved_by = at, resolve.by
        status.next_step, status.next_step_due_at = None, None
        self._log("resolved", at=at, by=resolve.by, detail=resolve.summary)
        self._record("resolved", at=at, by=resolve.by, summary=resolve.summary)
        self._sync_search_attributes()
        self._update_pages("resolve", resolve.by)
        return None

    async def _on_adopt_policy(self, adopt: AdoptPolicy, at: datetime) -> str | None:
        """Move the ticket to another policy version: an explicit, recorded operation (its
        deadlines and ladder are recomputed under that version from the original open
        time; steps already sent stay sent, a breach stays on record)."""
        status = self._state()
        if status.state not in ACTION_STATES["adopt_policy"]:
            return self._ignored("adopt_policy", adopt.by, at)
        before, due_before = status.policy_version, status.response_due_at
        if adopt.version == before:
            return f"cannot adopt_policy: ticket {status.ticket_id} already runs under {before}"
        plan = await self._resolve(
            status.severity, repeats_after=self._repeat_horizon, pinned_version=adopt.version
        )
        if plan is not None and plan.policy_version != adopt.version:
            status.policy_problem = (
                f"policy {adopt.version} is not available (resolved {plan.policy_version})"
            )
            plan = None
        if plan is None:
            problem = status.policy_problem or f"policy {adopt.version} could not be resolved"
            self._log("policy_adoption_failed", at=at, by=adopt.by, detail=problem)
            return f"cannot adopt_policy: {problem}"
        if status.state is not TicketState.OPEN:
            # Only the version moves: an acknowledged ticket's deadline is history.
            plan = plan.model_copy(
                update={
                    "response_due_at": status.response_due_at,
                    "response_target": status.response_target,
                }
            )
        self._apply_plan(plan, adopted=True)
        n = self._next("adopt")
        self._log(
            "policy_adopted",
            at=at,
            by=adopt.by,
            detail=f"{before} -> {plan.policy_version}; response due"
            f" {_iso(due_before)} -> {_iso(status.response_due_at)}"
            + (f": {adopt.reason}" if adopt.reason else ""),
        )
        self._record(
            f"policy-adopted-{n}",
            kind="policy_adopted",
            at=at,
            by=adopt.by,
            before=before,
            after=plan.policy_version,
            reason=adopt.reason,
            response_due_at_before=_iso(due_before),
            response_due_at=_iso(status.response_due_at),
        )
        return None

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
        self._tell_of_reply(reply, digest, at)

    def _tell_of_reply(self, reply: CustomerReply, digest: str, at: datetime) -> None:
        """A reply reaches people: on an acknowledged ticket, whoever acknowledged it (a
        responder the policy knows by that name, else the ticket's first responders); on an
        open ticket it rides with the next step."""
        status = self._state()
        if status.state not in (TicketState.OPEN, TicketState.ACKNOWLEDGED):
            return
        if not workflow.patched(REPLY_NOTIFIES):
            return
        text = f"Customer replied via {reply.via} at {reply.received_at.isoformat()}" + (
            f": {reply.subject}" if reply.subject else ""
        )
        if status.state is TicketState.OPEN and self._pending_steps():
            self._unannounced_replies.append(text)
            return
        # Acknowledged, or open with no step left to ride with (e.g. Community): now.
        recipients = self._reply_recipients()
        if recipients:
            self._send(f"reply-forward-{digest}", "customer_reply", recipients, at, text, at)

    def _reply_recipients(self) -> list[Recipient]:
        """Whoever acknowledged the ticket, when a step reached them by that name; else the
        first responders (the intake step's responders)."""
        status = self._state()
        steps = self._current_plan().steps
        known = {r.name: r for s in steps for r in s.recipients if r.role == "responder"}
        if status.acknowledged_by in known:
            return [known[status.acknowledged_by]]
        intake = next((s for s in steps if s.kind is StepKind.INTAKE), None)
        return [r for r in (intake.recipients if intake else []) if r.role == "responder"]

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

    def _ignored(self, what: str, by: str, at: datetime) -> str:
        state = self._state().state.value
        n = self._next("ignored")
        self._log(f"{what}_ignored", at=at, by=by, detail=f"ticket is {state}")
        self._record(f"ignored-{n}", kind=f"{what}_ignored", at=at, by=by, state=state)
        return f"cannot {what}: ticket {self._state().ticket_id} is {state}"

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
        self._paged += [r for r in step.recipients if r.pages() and r not in self._paged]
        task = self._start_delivery(
            name=name,
            kind=step.kind.value,
            due_at=step.due_at,
            recipients=step.recipients,
            # Customer replies received since the last step ride with this one.
            message="\n".join(self._unannounced_replies) or None,
            event_kind=kind,
            at=now,
            source="timer",
            detail={"step": name, "due_at": step.due_at.isoformat(), "targets": record.targets},
            record=record,
        )
        self._unannounced_replies = []
        self._delivery_kinds = {t: k for t, k in self._delivery_kinds.items() if not t.done()}
        self._delivery_kinds[task] = step.kind

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
        self._log(event_kind, at=at, detail=f"{message} (to {', '.join(targets)})")
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
            result = await workflow.execute_activity(
                "deliver_step",
                request,
                result_type=StepDeliveryResult,
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

    def _superseded_by_ack(self, request: StepDelivery, record: EscalationRecord) -> None:
        """A delivery the acknowledgement cancelled before it was sent: recorded as
        superseded on the ticket and in the ledger (with the events it carried)."""
        now = workflow.now()
        record.superseded_at = now
        self._log(
            "step_superseded",
            at=now,
            detail=f"step {record.step} (due {record.due_at.isoformat()}) not sent: the ticket"
            " was acknowledged before it was delivered",
        )
        for earlier in request.earlier_events:
            self._write_ledger(earlier)
        if request.event is not None:
            event = request.event
            self._write_ledger(
                event.model_copy(update={"detail": {**event.detail, "delivered": []}})
            )
        self._record(
            f"superseded/{record.due_at.isoformat()}/{record.step}",
            kind="step_superseded",
            at=now,
            step=record.step,
            due_at=record.due_at.isoformat(),
            reason="acknowledged",
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
        # An update that marked the ticket out of scope answers now, not when the
        # statement of work is decided (days later).
        self._settle()
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
            # The child itself failed: that is neither a decision nor a time-out.
            result = SowResult(
                outcome=SowOutcome.FAILED,
                decided_by="system",
                decided_at=workflow.now(),
                reference=f"failed: {err.cause}",
            )
        for failure in result.failed_notifications:
            self._log("sow_notification_failed", at=workflow.now(), detail=failure)
        if result.failed_notifications:
            self._record(
                "sow/notification-failed",
                kind="sow_notification_failed",
                at=workflow.now(),
                failed=result.failed_notifications,
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

    async def _resolve(
        self,
        severity: Severity | None,
        repeats_after: datetime | None = None,
        *,
        opened_at: datetime | None = None,
        pinned_version: str | None = None,
        tier: Tier | None = None,
    ) -> TicketPlan | None:
        """The ticket's plan at ``severity``, under its pinned policy version (or
        ``pinned_version`` when adopting another), from its original open time. None when
        the policy cannot be resolved: the failure is recorded on the ticket and logged at
        error level, and the caller keeps the last good plan."""
        status = self._status
        request = PlanRequest(
            ticket=self._ticket,
            severity=severity,
            opened_at=opened_at or self._state().opened_at,
            repeats_after=repeats_after,
            pinned_version=pinned_version or (status.policy_version if status else None),
            tier=tier or (status.tier if status else None),
        )
        try:
            return await workflow.execute_activity(
                "resolve_ticket_plan",
                request,
                result_type=TicketPlan,
                start_to_close_timeout=POLICY_TIMEOUT,
                schedule_to_close_timeout=POLICY_SCHEDULE_TIMEOUT,
                retry_policy=POLICY_RETRY,
            )
        except ActivityError as err:
            cause = err.cause
            problem = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        workflow.logger.error(
            "ticket policy could not be resolved",
            extra={"ticket_id": self._ticket.ticket_id, "problem": problem},
        )
        if status is None:
            self._planning_problem = problem
            return None
        status.policy_problem = problem
        n = self._next("policy-problem")
        now = workflow.now()
        self._log(
            "policy_unavailable",
            at=now,
            detail=f"{problem}; the ticket keeps its plan under policy {status.policy_version}",
        )
        self._record(f"policy-unavailable-{n}", kind="policy_unavailable", at=now, problem=problem)
        return None

    def _apply_plan(self, plan: TicketPlan, adopted: bool = False) -> None:
        status = self._state()
        previous = self._plan
        self._plan = plan
        status.tier = plan.tier
        status.severity = plan.severity
        self._note_policy_version(plan.policy_version, adopted)
        status.commercial_sla = plan.commercial_sla
        status.response_target = plan.response_target
        status.response_due_at = plan.response_due_at
        status.time_zone = plan.time_zone
        status.policy_problem = None
        if previous is not None:
            self._log(
                "plan_resolved",
                at=workflow.now(),
                detail=f"policy {plan.policy_version}, response due {_iso(plan.response_due_at)}",
            )
        self._sync_search_attributes()

    def _note_policy_version(self, version: str, adopted: bool = False) -> None:
        status = self._state()
        if status.policy_version is not None and status.policy_version != version and not adopted:
            # Only an explicit adoption moves a ticket to another version; anything else
            # is a fault worth seeing on the ticket's record.
            self._log(
                "policy_version_changed",
                at=workflow.now(),
                detail=f"{status.policy_version} -> {version} (resolved under another version"
                " than the ticket's)",
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
            breached_at=status.breached_at,
            commercial_sla=status.commercial_sla,
            claimed_tier=status.claimed_tier,
            integration=status.integration,
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


def _rank(severity: Severity) -> int:
    """sev1 = 1 (highest) ... sev4 = 4."""
    return int(severity.value.removeprefix("sev"))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _current_search_attributes() -> dict[str, Any]:
    """The search attributes this run started with (set at intake, or carried over)."""
    return {key.name: workflow.info().typed_search_attributes.get(key) for key in sa.ALL}
