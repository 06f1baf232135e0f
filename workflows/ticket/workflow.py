"""``SupportTicket``: one workflow owns one ticket's SLA clock from intake to close
(docs/ticket-life.md).

Read top-down: the message handlers, ``run`` and its one loop, then what each command does.
The rules live in pure modules beside this one: ``ladder`` (pending steps, next wake, send
or supersede) and ``transitions`` (each change of the status and the events that record
it); ``emit`` writes an event to the ticket's history and the ledger and syncs the search
attributes.

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
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import (
    ApplicationError,
    ChildWorkflowError,
)
from temporalio.workflow import ChildWorkflowHandle

from workflows.inputs import decode_input
from workflows.ticket import ladder, metrics, targets, transitions
from workflows.ticket.clocks import Clocks
from workflows.ticket.events import Event, Record, iso
from workflows.ticket.ladder import MOOT_ON_ACK, TERMINAL, Progress
from workflows.ticket.outbox import current_search_attributes
from workflows.ticket.patches import (
    ACK_SUPERSEDES_DELIVERIES,
    KEEP_WAKE_TIMER,
    REPLY_NOTIFIES,
    RETRIAGE_AFTER_ACK,
    RETRIAGE_NOTIFIES,
    SLA_TARGETS,
    VERIFY_IN_PLACE,
)

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from contract import names
    from contract.models import (
        UNVERIFIED_CUSTOMER,
        Acknowledge,
        Action,
        AdoptPolicy,
        AgentReply,
        AwaitCustomer,
        ChangeSeverity,
        CustomerReply,
        EscalationRecord,
        MarkOutOfScope,
        Metric,
        PlannedStep,
        Recipient,
        RejectedSignal,
        Resolve,
        Severity,
        SowInput,
        SowOutcome,
        SowResult,
        StepKind,
        TicketCarry,
        TicketInput,
        TicketPlan,
        TicketState,
        TicketStatus,
        VerifyRequester,
        describe_validation_error,
        opened_at_problem,
        sow_workflow_id,
    )

# A ticket carried into a new run keeps its latest history entries and escalations; the
# ledger keeps every one.
CARRIED_ENTRIES = 200
# The request ids of this many latest agent actions are kept, to apply each id once.
KEPT_REQUESTS = 200
# The shortest wake-up timer (a wake already due is handled before the loop waits).
MIN_TIMER = timedelta(milliseconds=1)


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


@workflow.defn(name=names.TICKET_WORKFLOW)
class SupportTicket(Clocks):
    """The workflow: its messages, its life (``run`` and the loop) and what each command
    does. Target clocks beyond the first response are in ``Clocks`` (clocks.py), plan
    resolution in ``Planning`` (planning.py); history, ledger, search attributes and
    deliveries in ``Outbox`` (outbox.py)."""

    def __init__(self) -> None:
        super().__init__()
        self._inbox: list[_Command] = []
        self._replies: set[str] = set()
        # Customer replies on an open ticket, told with its next step.
        self._unannounced_replies: list[str] = []
        # Deliveries in flight, with their step's kind (an ack makes some moot).
        self._delivery_kinds: dict[asyncio.Task[Any], StepKind] = {}
        # The command the loop is applying (an update waiting for it is told when done).
        self._current: _Command | None = None
        # The statement of work a ticket routed out of scope waits for.
        self._sow_child: ChildWorkflowHandle[Any, SowResult] | None = None
        # The wake-up timer and its instant (ONE_ROUND_TRIP: kept across loop turns).
        self._wake_timer: asyncio.Task[None] | None = None
        self._wake_at: datetime | None = None
        # Whether this run keeps its wake-up timer across loop turns (KEEP_WAKE_TIMER).
        self._keep_timer = False
        # Request ids of the agent actions applied, oldest first (at most KEPT_REQUESTS).
        self._requests: list[str] = []

    # --- messages ----------------------------------------------------------------------

    # Signal handlers take the raw payload and validate it themselves: a malformed signal
    # from a client in any language is recorded on the ticket with what was wrong (the SDK
    # would otherwise drop it with nothing but a worker log line). Agent surfaces use the
    # updates of the same names: their validators refuse what cannot apply before anything
    # reaches the history, and they answer with the status after the action.

    @workflow.signal(name=names.ACKNOWLEDGE)
    def acknowledge(self, ack: RawValue) -> None:
        self._receive(names.ACKNOWLEDGE, Acknowledge, ack)

    @workflow.signal(name=names.CHANGE_SEVERITY)
    def change_severity(self, change: RawValue) -> None:
        self._receive(names.CHANGE_SEVERITY, ChangeSeverity, change)

    @workflow.signal(name=names.MARK_OUT_OF_SCOPE)
    def mark_out_of_scope(self, mark: RawValue) -> None:
        self._receive(names.MARK_OUT_OF_SCOPE, MarkOutOfScope, mark)

    @workflow.signal(name=names.RESOLVE)
    def resolve(self, resolve: RawValue) -> None:
        self._receive(names.RESOLVE, Resolve, resolve)

    @workflow.signal(name=names.ADOPT_POLICY)
    def adopt_policy(self, adopt: RawValue) -> None:
        self._receive(names.ADOPT_POLICY, AdoptPolicy, adopt)

    @workflow.signal(name=names.CUSTOMER_REPLY)
    def customer_reply(self, reply: RawValue) -> None:
        self._receive(names.CUSTOMER_REPLY, CustomerReply, reply)

    # Before SLA_TARGETS (and VERIFY_IN_PLACE) these signals had no handler: a run that
    # received one then replays as if it never came (it issued no command for it).

    @workflow.signal(name=names.AGENT_REPLY)
    def agent_reply(self, reply: RawValue) -> None:
        if self._patched(SLA_TARGETS):
            self._receive(names.AGENT_REPLY, AgentReply, reply)

    @workflow.signal(name=names.AWAIT_CUSTOMER)
    def await_customer(self, wait: RawValue) -> None:
        if self._patched(SLA_TARGETS):
            self._receive(names.AWAIT_CUSTOMER, AwaitCustomer, wait)

    @workflow.signal(name=names.VERIFY_REQUESTER)
    def verify_requester(self, verify: RawValue) -> None:
        if self._patched(VERIFY_IN_PLACE):
            self._receive(names.VERIFY_REQUESTER, VerifyRequester, verify)

    @workflow.update(name=names.ACKNOWLEDGE)
    async def acknowledge_update(self, ack: Acknowledge) -> TicketStatus:
        return await self._act(names.ACKNOWLEDGE, ack)

    @acknowledge_update.validator
    def _validate_acknowledge(self, ack: Acknowledge) -> None:
        self._check_action(names.ACKNOWLEDGE, ack)

    @workflow.update(name=names.CHANGE_SEVERITY)
    async def change_severity_update(self, change: ChangeSeverity) -> TicketStatus:
        return await self._act(names.CHANGE_SEVERITY, change)

    @change_severity_update.validator
    def _validate_change_severity(self, change: ChangeSeverity) -> None:
        if self._check_action(names.CHANGE_SEVERITY, change):
            return
        if self._status is not None and change.severity is self._status.severity:
            raise ValueError(
                f"cannot change_severity: ticket {self._status.ticket_id} is already"
                f" {change.severity.value}"
            )

    @workflow.update(name=names.MARK_OUT_OF_SCOPE)
    async def mark_out_of_scope_update(self, mark: MarkOutOfScope) -> TicketStatus:
        return await self._act(names.MARK_OUT_OF_SCOPE, mark)

    @mark_out_of_scope_update.validator
    def _validate_mark_out_of_scope(self, mark: MarkOutOfScope) -> None:
        self._check_action(names.MARK_OUT_OF_SCOPE, mark)

    @workflow.update(name=names.RESOLVE)
    async def resolve_update(self, resolve: Resolve) -> TicketStatus:
        return await self._act(names.RESOLVE, resolve)

    @resolve_update.validator
    def _validate_resolve(self, resolve: Resolve) -> None:
        self._check_action(names.RESOLVE, resolve)

    @workflow.update(name=names.ADOPT_POLICY)
    async def adopt_policy_update(self, adopt: AdoptPolicy) -> TicketStatus:
        return await self._act(names.ADOPT_POLICY, adopt)

    @adopt_policy_update.validator
    def _validate_adopt_policy(self, adopt: AdoptPolicy) -> None:
        if self._check_action(names.ADOPT_POLICY, adopt):
            return
        if self._status is not None and adopt.version == self._status.policy_version:
            raise ValueError(
                f"cannot adopt_policy: ticket {self._status.ticket_id} already runs under"
                f" policy {adopt.version}"
            )

    @workflow.update(name=names.AGENT_REPLY)
    async def agent_reply_update(self, reply: AgentReply) -> TicketStatus:
        return await self._act(names.AGENT_REPLY, reply)

    @agent_reply_update.validator
    def _validate_agent_reply(self, reply: AgentReply) -> None:
        self._check_action(names.AGENT_REPLY, reply)

    @workflow.update(name=names.AWAIT_CUSTOMER)
    async def await_customer_update(self, wait: AwaitCustomer) -> TicketStatus:
        return await self._act(names.AWAIT_CUSTOMER, wait)

    @await_customer_update.validator
    def _validate_await_customer(self, wait: AwaitCustomer) -> None:
        if self._check_action(names.AWAIT_CUSTOMER, wait):
            return
        refusal = self._waiting_refusal()
        if refusal:
            raise ValueError(refusal)

    @workflow.update(name=names.VERIFY_REQUESTER)
    async def verify_requester_update(self, verify: VerifyRequester) -> TicketStatus:
        return await self._act(names.VERIFY_REQUESTER, verify)

    @verify_requester_update.validator
    def _validate_verify_requester(self, verify: VerifyRequester) -> None:
        if self._check_action(names.VERIFY_REQUESTER, verify):
            return
        refusal = self._verify_refusal(verify)
        if refusal:
            raise ValueError(refusal)

    def _verify_refusal(self, verify: VerifyRequester) -> str | None:
        """Why ``verify`` cannot apply: the ticket is not an unverified requester's, or the
        address confirmed is not its requester's. None too when it is verified already."""
        status = self._status
        if status is None or status.customer_id == verify.customer_id:
            return None
        ticket_id = status.ticket_id
        if status.customer_id != UNVERIFIED_CUSTOMER:
            return (
                f"cannot verify_requester: ticket {ticket_id} is customer"
                f" {status.customer_id}'s, not an unverified requester's"
            )
        reporter = self._ticket.reporter_email
        if reporter is None or reporter.lower() != verify.address.lower():
            return (
                f"cannot verify_requester: {verify.address} is not the requester of ticket"
                f" {ticket_id}"
            )
        return None

    def _waiting_refusal(self) -> str | None:
        status = self._status
        if status is None or status.awaiting_customer_since is None:
            return None
        return (
            f"cannot await_customer: ticket {status.ticket_id} waits on the customer since"
            f" {status.awaiting_customer_since.isoformat()}"
        )

    def _check_action(self, action: str, payload: Action) -> bool:
        """Refuse an update whose action cannot apply to the ticket as it stands (a ticket
        still planning its SLA is open). True when its request id was applied already: it
        is accepted, to answer with the status without acting again."""
        if payload.request_id is not None and payload.request_id in self._requests:
            return True
        refusal = transitions.refusal(self._status, action)
        if refusal:
            raise ValueError(refusal)
        return False

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

    @workflow.query(name=names.STATUS)
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
    async def run(self, raw: RawValue) -> TicketStatus:
        # A TicketInput, decoded here: a bad one fails the start, never an open ticket.
        ticket = decode_input(raw, TicketInput, "InvalidTicket", "(ticket)")
        if ticket.continued is not None:
            self._local_first = self._takes_local_first()
            self._keep_timer = self._keeps_wake_timer()
            self._resume(ticket)
            await self._live()
            return self._state()
        now = workflow.now()
        opened_at = ticket.opened_at or now
        problem = opened_at_problem(opened_at, now)
        if problem:
            raise ApplicationError(problem, type="InvalidTicket", non_retryable=True)
        self._ticket = ticket
        self._search = current_search_attributes()
        # Before the first activity: a run that began before the change keeps server
        # activities to its end.
        self._local_first = self._takes_local_first()
        plan = await self._first_plan(opened_at)
        # Decided once per run, before its first step (with the plan, in the task where the
        # other patches are first asked): a run that began before the change keeps the old
        # commands to its end (its replay finds no marker); its next run takes the new.
        self._keep_timer = self._keeps_wake_timer()
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
        corrected: list[Event] = []
        if ticket.tier is not None and plan.tier is not ticket.tier:
            # A raw start that claimed another tier than the customer's contract.
            self._status.claimed_tier, self._status.entitlement = ticket.tier, plan.entitlement
            corrected.append(
                Event(
                    "tier_corrected",
                    opened_at,
                    detail=f"claimed {ticket.tier.value}; runs at {plan.tier.value}"
                    f" ({plan.entitlement})",
                )
            )
        self._start_clocks(plan)
        self._apply_plan(plan)
        metrics.ticket_opened(plan.tier.value, plan.severity.value)
        opened = Record(
            "opened",
            detail={
                "intake_channel": ticket.intake_channel,
                "policy_version": plan.policy_version,
                "response_due_at": iso(plan.response_due_at),
                "claimed_tier": ticket.tier.value if corrected and ticket.tier else None,
                "entitlement": self._status.entitlement,
                "integration": ticket.integration,
            },
        )
        self._emit(
            Event("opened", opened_at, detail=f"via {ticket.intake_channel}", record=opened),
            *corrected,
        )

        if plan.out_of_scope_reason:
            await self._route_to_sow(plan.out_of_scope_reason, by="policy", at=now)
        await self._live()
        return self._status

    async def _live(self) -> None:
        """The one loop: apply what arrived, fire what is due, then wait until the next
        step falls due or a message arrives. A ticket routed to a statement of work waits
        for its decision (still applying messages); a closed ticket waits for its
        notifications and ledger writes to land, and for every update handler to finish."""
        status = self._state()
        while True:
            if status.state is TicketState.ROUTED_TO_SOW:
                sow = self._sow_child
                assert sow is not None
                if sow.done():
                    await self._close_sow(sow)
                    continue
                self._disarm()
                await workflow.wait_condition(
                    lambda sow=sow: bool(self._inbox) or sow.done()  # type: ignore[misc]
                )
                await self._drain_inbox()
                continue
            await self._drain_inbox()
            if status.state is TicketState.ROUTED_TO_SOW:
                continue
            if status.state in TERMINAL:
                self._disarm()
                if not self._background:
                    break
                await self._await_background()
                continue
            now = workflow.now()
            if status.state is TicketState.OPEN:
                self._check_breach(now)
                due = [s for s in self._pending_steps() if s.due_at <= now]
                if due:
                    self._catch_up(due, now)
                    continue
                if await self._extend_ladder():
                    continue
            if await self._run_clocks(now):
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
            if self._keep_timer:
                await self._wait_for_wake(wake_at, now, history_full)
                continue
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
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _wait_for_wake(self, wake_at: datetime | None, now: datetime, full: bool) -> None:
        """Wait until a message arrives or ``wake_at`` (with a full history, also until the
        background work has landed). The running timer is kept while the next wake stays
        where it is (a step's delivery landing, a message that moves no deadline), started
        again only when the wake moves, and cancelled when there is nothing left to wake
        for: each timer started is a billed Action, and before KEEP_WAKE_TIMER every turn
        of the loop started one."""
        if wake_at is None:
            self._disarm()
        elif self._wake_timer is None or wake_at != self._wake_at:
            self._disarm()
            delay = max(wake_at - now, MIN_TIMER)
            self._wake_at, self._wake_timer = (
                wake_at,
                asyncio.ensure_future(asyncio.sleep(delay.total_seconds())),
            )
        timer = self._wake_timer
        await workflow.wait_condition(
            lambda: (
                bool(self._inbox)
                or (timer is not None and timer.done())
                or (full and all(task.done() for task in self._background))
            )
        )
        if timer is not None and timer.done():
            self._wake_timer = self._wake_at = None
            if self._idle_close_due(workflow.now()):
                self._close_idle(workflow.now())

    def _keeps_wake_timer(self) -> bool:
        """Whether this run keeps its wake-up timer (KEEP_WAKE_TIMER); a method so that the
        tests' previous release can run without it."""
        return self._patched(KEEP_WAKE_TIMER)

    def _disarm(self) -> None:
        if self._wake_timer is not None:
            if not self._wake_timer.done():
                self._wake_timer.cancel()
            self._wake_timer = self._wake_at = None

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
            self._emit(
                Event(
                    "trimmed",
                    workflow.now(),
                    detail=f"{dropped} older entries left out of this run (the ledger keeps all)",
                )
            )
        progress = self._progress
        carry = TicketCarry(
            status=status,
            plan=plan,
            fired=sorted(progress.fired),
            repeat_horizon=progress.repeat_horizon,
            repeats_sent=progress.repeats_sent,
            revision=self._revision,
            counters=self._counters,
            paged=self._paged,
            notified=sorted(self._notified),
            clocks_on=self._clocks_on,
            requests=self._requests,
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
        self._progress = Progress(set(carry.fired), carry.repeat_horizon, carry.repeats_sent)
        self._revision, self._counters = carry.revision, dict(carry.counters)
        self._paged = list(carry.paged)
        self._notified = set(carry.notified)
        self._clocks_on = carry.clocks_on
        self._requests = list(carry.requests)
        self._search = current_search_attributes()
        self._emit(
            Event(
                "continued_as_new",
                workflow.now(),
                detail=f"run {workflow.info().run_id} carries the ticket on",
            )
        )

    def _next_wake(self) -> datetime | None:
        wakes = [
            ladder.next_wake(
                self._state(), self._pending_steps(), self._idle_close_at(), self._plan_retry_at
            ),
            self._clock_wake(),
        ]
        return min((w for w in wakes if w is not None), default=None)

    def _refresh_next_step(self) -> None:
        status = self._state()
        pending = self._pending_steps() if status.state is TicketState.OPEN else []
        pending += [step for _, step in self._pending_clock_steps()]
        pending.sort(key=lambda s: s.due_at)
        status.next_step = pending[0].name if pending else None
        status.next_step_due_at = pending[0].due_at if pending else None

    # --- commands --------------------------------------------------------------------------

    async def _drain_inbox(self) -> None:
        while self._inbox:
            command = self._inbox.pop(0)
            if self._repeated(command):
                # Applied already (its update or its signal came first): an update waiting
                # for it answers with the status, a signal is dropped.
                command.done = True
                continue
            self._current = command
            routed = self._state().state is TicketState.ROUTED_TO_SOW
            try:
                command.refused = await self._apply(command)
            finally:
                self._settle(command)
            if not routed and self._state().state is TicketState.ROUTED_TO_SOW:
                # The loop waits for the statement of work (and applies the rest there).
                return

    def _repeated(self, command: _Command) -> bool:
        """Whether ``command`` is an agent action whose request id was applied already;
        else its id (if any) is kept as applied from now on."""
        request = getattr(command.payload, "request_id", None)
        if request is None:
            return False
        if request in self._requests:
            workflow.logger.info(
                "agent action applied already",
                extra={"action": command.name, "request_id": request},
            )
            return True
        self._requests = [*self._requests, request][-KEPT_REQUESTS:]
        return False

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
        payload, at = command.payload, command.at
        match payload:
            case Acknowledge():
                return self._on_acknowledge(payload, at)
            case ChangeSeverity():
                return await self._on_change_severity(payload, at)
            case MarkOutOfScope():
                if self._state().state in (TicketState.OPEN, TicketState.ACKNOWLEDGED):
                    await self._route_to_sow(payload.reason, payload.by, at)
                    return None
                return self._ignored(names.MARK_OUT_OF_SCOPE, payload.by, at)
            case Resolve():
                return self._on_resolve(payload, at)
            case AdoptPolicy():
                return await self._on_adopt_policy(payload, at)
            case CustomerReply():
                await self._on_customer_reply(payload, at)
                return None
            case AgentReply():
                return self._on_agent_reply(payload, at)
            case AwaitCustomer():
                return self._on_await_customer(payload, at)
            case VerifyRequester():
                return await self._on_verify_requester(payload, at)
            case RejectedSignal():
                self._emit(transitions.rejected(payload, at, self._next("rejected")))
                return None
        raise TypeError(f"no handler for {type(payload).__name__}")

    def _on_acknowledge(
        self, ack: Acknowledge, received: datetime, resolving: bool = False
    ) -> str | None:
        status = self._state()
        if status.state is not TicketState.OPEN:
            n = self._next("ack-repeat")
            self._emit(transitions.acknowledge_repeated(status, ack, received, n))
            why = f"ticket {status.ticket_id} is {status.state.value}"
            if status.acknowledged_at:
                why += f" (by {status.acknowledged_by} at {status.acknowledged_at.isoformat()})"
            return f"cannot acknowledge: {why}"
        at = transitions.acted_at(ack.at, received, status.opened_at)
        # An acknowledgement at the due instant itself is in time (the queued signal is
        # applied before the breach timer of the same instant).
        self._check_breach(at, at_due_counts=False)
        withdrawn = transitions.withdraw_breach(status, at)
        acknowledged = transitions.acknowledge(status, ack, at, received, bool(withdrawn))
        metrics.acknowledged(
            status.tier.value, at - status.opened_at, breached=status.response_breached
        )
        self._emit(*withdrawn, acknowledged)
        self._supersede_pending_deliveries()
        self._update_pages("acknowledge", ack.agent)
        if self._unannounced_replies and not resolving:
            # Replies that were waiting for the next step go to whoever acknowledged.
            text, self._unannounced_replies = "\n".join(self._unannounced_replies), []
            n = self._next("reply-forward")
            recipients = self._reply_recipients()
            if recipients:
                self._send(f"reply-forward-ack-{n}", "customer_reply", recipients, at, text, at)
        return None

    def _supersede_pending_deliveries(self) -> None:
        """An acknowledgement makes the warnings, breaches and repeats not yet delivered
        moot: their deliveries are cancelled (recorded as superseded when they had not been
        sent; one already being sent finishes)."""
        moot = [
            task
            for task, kind in self._delivery_kinds.items()
            if kind in MOOT_ON_ACK and not task.done()
        ]
        if moot and self._patched(ACK_SUPERSEDES_DELIVERIES):
            for task in moot:
                task.cancel()

    async def _on_change_severity(self, change: ChangeSeverity, at: datetime) -> str | None:
        status = self._state()
        n = self._next("severity")
        before = status.severity
        if status.state in TERMINAL or status.state is TicketState.ROUTED_TO_SOW:
            return self._ignored(names.CHANGE_SEVERITY, change.by, at)
        if change.severity == before:
            self._emit(Event("severity_unchanged", at, by=change.by, detail=before.value))
            return f"cannot change_severity: ticket {status.ticket_id} is already {before.value}"
        raised = ladder.rank(change.severity) < ladder.rank(before)
        # The plan whose intake step names the new severity's first responders.
        responders: TicketPlan | None = None
        if status.state is TicketState.OPEN:
            # Deadlines are recomputed from the original open time under the ticket's own
            # policy version: a re-triage does not give the support team a fresh clock. The
            # new severity and its deadline are applied together, or neither.
            plan = await self._resolve(change.severity, repeats_after=self._progress.repeat_horizon)
            if plan is None:
                return self._severity_change_failed(change, at)
            self._apply_plan(plan)
        elif any(t.met_at is None for t in targets.clocks_of(status)):
            # An answered ticket's open clocks (next reply, resolution) take the new
            # severity's targets, each from its own start, its paused time kept.
            plan = await self._resolve(change.severity, repeats_after=self._progress.repeat_horizon)
            if plan is None:
                return self._severity_change_failed(change, at)
            keep = {
                "response_due_at": status.response_due_at,
                "response_target": status.response_target,
            }
            self._apply_plan(plan.model_copy(update=keep))
        elif raised and self._patched(RETRIAGE_AFTER_ACK):
            # An acknowledged ticket without open clocks keeps its plan and deadlines; the
            # new severity's plan only says who its first responders are. When the policy
            # cannot be resolved (recorded on the ticket) the severity still changes.
            responders = await self._resolve(
                change.severity, repeats_after=self._progress.repeat_horizon
            )
        self._emit(transitions.severity_changed(status, change, before, at, n))
        if raised:
            self._tell_new_responders(before, change, at, responders or self._current_plan())
        return None

    def _severity_change_failed(self, change: ChangeSeverity, at: datetime) -> str:
        """The new severity's plan could not be resolved: the ticket keeps its severity and
        deadline (the failure is recorded) and the action is refused with why."""
        problem = self._state().policy_problem or "the policy could not be resolved"
        self._emit(Event("severity_change_failed", at, by=change.by, detail=problem))
        return f"cannot change_severity: {problem}"

    def _tell_new_responders(
        self, before: Severity, change: ChangeSeverity, at: datetime, plan: TicketPlan
    ) -> None:
        """Raising the severity tells the new severity's first responders (the intake step
        of ``plan``) who have not heard of the ticket yet, once."""
        fresh = self._fresh_first_responders(plan)
        if not fresh or not self._patched(RETRIAGE_NOTIFIES):
            return
        n = self._next("retriage")
        message = f"Severity raised {before.value} -> {change.severity.value} by {change.by}" + (
            f": {change.reason}" if change.reason else ""
        )
        self._send(f"retriage-{n}", "retriage", fresh, at, message, due_at=at)

    def _fresh_first_responders(self, plan: TicketPlan) -> list[Recipient]:
        """Who ``plan``'s intake step names that has not heard of the ticket yet."""
        intake = next((s for s in plan.steps if s.kind is StepKind.INTAKE), None)
        return [r for r in (intake.recipients if intake else []) if r.name not in self._notified]

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
            return self._ignored(names.RESOLVE, resolve.by, received)
        at = transitions.acted_at(resolve.at, received, status.opened_at)
        targets.stop_waiting(status, at)
        met = targets.met(status, {Metric.NEXT_REPLY, Metric.RESOLUTION}, at, resolve.by)
        self._emit(transitions.resolve(status, resolve, at), *met)
        self._update_pages("resolve", resolve.by)
        return None

    async def _on_adopt_policy(self, adopt: AdoptPolicy, at: datetime) -> str | None:
        """Move the ticket to another policy version: an explicit, recorded operation (its
        deadlines and ladder are recomputed under that version from the original open
        time; steps already sent stay sent, a breach stays on record)."""
        status = self._state()
        if status.state not in transitions.ACTION_STATES[names.ADOPT_POLICY]:
            return self._ignored(names.ADOPT_POLICY, adopt.by, at)
        before, due_before = status.policy_version, status.response_due_at
        if adopt.version == before:
            return f"cannot adopt_policy: ticket {status.ticket_id} already runs under {before}"
        plan = await self._resolve(
            status.severity,
            repeats_after=self._progress.repeat_horizon,
            pinned_version=adopt.version,
        )
        if plan is not None and plan.policy_version != adopt.version:
            status.policy_problem = (
                f"policy {adopt.version} is not available (resolved {plan.policy_version})"
            )
            plan = None
        if plan is None:
            problem = status.policy_problem or f"policy {adopt.version} could not be resolved"
            self._emit(Event("policy_adoption_failed", at, by=adopt.by, detail=problem))
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
        self._emit(transitions.policy_adopted(status, adopt, before, due_before, at, n))
        return None

    async def _on_customer_reply(self, reply: CustomerReply, at: datetime) -> None:
        # Keyed by the message's reference: the same reply delivered twice is one event.
        digest = hashlib.sha256(reply.reference.encode()).hexdigest()[:16]
        if digest in self._replies:
            return
        self._replies.add(digest)
        self._emit(transitions.customer_replied(reply, digest, at))
        self._tell_of_reply(reply, digest, at)
        if self._clocks_on or self._state().awaiting_customer_since is not None:
            received = transitions.acted_at(reply.received_at, at, self._state().opened_at)
            await self._customer_answered(received)

    def _on_agent_reply(self, reply: AgentReply, received: datetime) -> str | None:
        """A public answer to the customer: the first response if the ticket is still open
        (it acknowledges it), and the next reply the customer waits for."""
        status = self._state()
        if status.state not in targets.LIVE:
            return self._ignored(names.AGENT_REPLY, reply.agent, received)
        if not self._patched(SLA_TARGETS):
            return self._before_targets(names.AGENT_REPLY, reply.agent, received)
        at = transitions.acted_at(reply.at, received, status.opened_at)
        if status.state is TicketState.OPEN:
            ack = Acknowledge(agent=reply.agent, note="answered the customer", at=reply.at)
            self._on_acknowledge(ack, received)
        n = self._next("agent-reply")
        met = targets.met(status, {Metric.NEXT_REPLY}, at, reply.agent)
        self._emit(transitions.agent_replied(reply, at, n), *met)
        return None

    def _on_await_customer(self, wait: AwaitCustomer, at: datetime) -> str | None:
        """The ticket waits on the customer: its pausable clocks stop until the customer
        replies (the first response never pauses)."""
        status = self._state()
        if status.state not in targets.LIVE:
            return self._ignored(names.AWAIT_CUSTOMER, wait.by, at)
        if not self._patched(SLA_TARGETS):
            return self._before_targets(names.AWAIT_CUSTOMER, wait.by, at)
        refusal = self._waiting_refusal()
        if refusal:
            return refusal
        at = transitions.acted_at(wait.at, at, status.opened_at)
        self._emit(targets.pause(status, wait.by, wait.reason, at, self._next("await")))
        return None

    async def _on_verify_requester(self, verify: VerifyRequester, received: datetime) -> str | None:
        """The requester of a Community ticket confirmed their address: the ticket becomes
        the contracted customer's, planned again under the policy in force from when it
        opened (a deadline already past is breached at once, its steps caught up); the
        contract's first responders are told. Applied once: a repeat changes nothing."""
        status = self._state()
        if status.state not in transitions.ACTION_STATES[names.VERIFY_REQUESTER]:
            return self._ignored(names.VERIFY_REQUESTER, verify.by, received)
        if status.customer_id == verify.customer_id:
            return None
        refusal = self._verify_refusal(verify)
        if refusal:
            self._emit(Event("requester_not_verified", received, by=verify.by, detail=refusal))
            return refusal
        at = transitions.acted_at(verify.at, received, status.opened_at)
        ticket, before = self._ticket, status.tier
        self._ticket = ticket.model_copy(update={"customer_id": verify.customer_id, "tier": None})
        plan = await self._resolve(
            status.severity, repeats_after=self._progress.repeat_horizon, entitle=True
        )
        problem = None
        if plan is None:
            problem = status.policy_problem or "the policy could not be resolved"
        elif plan.entitlement is None:
            problem = (
                f"customer {verify.customer_id!r} has no support contract under policy"
                f" {plan.policy_version}"
            )
        if plan is None or problem is not None:
            self._ticket = ticket
            self._emit(Event("requester_not_verified", received, by=verify.by, detail=problem))
            return f"cannot verify_requester: {problem}"
        self._apply_plan(plan, adopted=True)
        if not self._clocks_on:
            self._start_clocks(plan)
        if status.awaiting_customer_since is not None:
            # Waiting on the customer already: the new pausable clocks start paused.
            for target in targets.clocks_of(status):
                if target.pausable and target.met_at is None and target.paused_since is None:
                    target.paused_since = status.awaiting_customer_since
        status.entitlement = plan.entitlement
        self._emit(*transitions.requester_verified(status, verify, before, at))
        fresh = self._fresh_first_responders(plan)
        if fresh:
            message = (
                f"{verify.address} confirmed: the ticket is under the contract of"
                f" {verify.customer_id} now, opened {status.opened_at.isoformat()}"
            )
            self._send("verified-notice", "verified", fresh, at, message, due_at=at)
        return None

    def _tell_of_reply(self, reply: CustomerReply, digest: str, at: datetime) -> None:
        """A reply reaches people: on an acknowledged ticket, whoever acknowledged it (a
        responder the policy knows by that name, else the ticket's first responders); on an
        open ticket it rides with the next step."""
        status = self._state()
        if status.state not in (TicketState.OPEN, TicketState.ACKNOWLEDGED):
            return
        if not self._patched(REPLY_NOTIFIES):
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

    def _before_targets(self, what: str, by: str, at: datetime) -> str:
        """A ticket whose run began before SLA_TARGETS keeps the old branch to its end: the
        action is recorded as ignored, as then, and the refusal says why."""
        self._ignored(what, by, at)
        return (
            f"cannot {what}: ticket {self._state().ticket_id} began before agent replies and"
            " waits on the customer existed (this run keeps the first response only);"
            " acknowledge or resolve it instead"
        )

    def _ignored(self, what: str, by: str, at: datetime) -> str:
        event, why = transitions.ignored(self._state(), what, by, at, self._next("ignored"))
        self._emit(event)
        return why

    # --- steps and the clock ---------------------------------------------------------------

    def _check_breach(self, now: datetime, at_due_counts: bool = True) -> None:
        status = self._state()
        missed = transitions.breach(status, now, at_due_counts)
        if missed:
            metrics.sla_breached(status.tier.value, status.severity.value)
            self._emit(*missed)

    def _catch_up(self, due: list[PlannedStep], now: datetime) -> None:
        """Fire the steps that are due; those ``ladder.triage`` supersedes are recorded, not
        sent."""
        for step, superseded in ladder.triage(due, self._state().response_breached):
            if not superseded:
                self._fire(step, now)
                continue
            self._progress.done(step)
            self._emit(transitions.superseded(step, now))

    def _fire(self, step: PlannedStep, now: datetime) -> None:
        status = self._state()
        self._progress.done(step)
        name = self._progress.sent_name(step)
        record = EscalationRecord(
            step=name,
            kind=step.kind,
            due_at=step.due_at,
            fired_at=now,
            targets=[r.name for r in step.recipients],
        )
        status.escalations.append(record)
        metrics.escalation_fired(status.tier.value, status.severity.value, step.kind.value)
        kind = ladder.SENT[step.kind]
        # The step's ledger event goes with its delivery (one activity for both).
        self._emit(Event(kind, now, detail=f"step {name} to {', '.join(record.targets)}"))
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

    def _idle_close_at(self) -> datetime | None:
        return ladder.idle_close_at(self._state(), self._current_plan())

    def _idle_close_due(self, now: datetime) -> bool:
        idle_at = self._idle_close_at()
        return idle_at is not None and now >= idle_at

    def _close_idle(self, now: datetime) -> None:
        # A wait on the customer ends with the ticket: it counts up to the close.
        targets.stop_waiting(self._state(), now)
        self._emit(transitions.close_idle(self._state(), now))

    # --- out of scope ----------------------------------------------------------------------

    async def _route_to_sow(self, reason: str, by: str, at: datetime) -> None:
        status = self._state()
        self._check_breach(at, at_due_counts=False)
        # Support's part ends here: so does a wait on the customer.
        targets.stop_waiting(status, at)
        child_id = sow_workflow_id(status.ticket_id)
        self._emit(transitions.route_to_sow(status, reason, by, at, child_id))
        self._update_pages("resolve", by)
        # An update that marked the ticket out of scope answers now, not when the
        # statement of work is decided (days later).
        self._settle()
        plan = self._current_plan()
        handle = await workflow.start_child_workflow(
            names.SOW_WORKFLOW,
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
        self._sow_child = handle

    async def _close_sow(self, handle: ChildWorkflowHandle[Any, SowResult]) -> None:
        """The statement of work is decided (or its workflow failed): the ticket closes."""
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
        self._emit(*transitions.sow_decided(self._state(), result, workflow.now()))
