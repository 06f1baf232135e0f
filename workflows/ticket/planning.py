"""The ticket's plan: resolved through the policy activity, pinned to its version, applied
whole (tier, severity, deadline and clock together), and extended as repeats run out."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
)

from workflows.activity_options import (
    POLICY_RETRY,
    POLICY_RETRY_AFTER,
    POLICY_SCHEDULE_TIMEOUT,
    POLICY_TIMEOUT,
)
from workflows.ticket import targets
from workflows.ticket.events import Event, Record, iso
from workflows.ticket.ladder import Progress

with workflow.unsafe.imports_passed_through():
    from activities.policy import PolicyActivities
    from contract.models import (
        ClockRequest,
        PlannedStep,
        PlanRequest,
        Severity,
        StepKind,
        TicketPlan,
        Tier,
    )

from workflows.ticket.outbox import Outbox


class Planning(Outbox):
    """Plan resolution for the ticket workflow (the activity call, its failures, applying
    a plan)."""

    def __init__(self) -> None:
        super().__init__()
        # How far up the ladder the ticket is (steps sent or superseded).
        self._progress = Progress()
        # Why the first plan could not be resolved yet (shown by the status query).
        self._planning_problem: str | None = None
        # When to try again to extend the ladder after the policy could not be resolved.
        self._plan_retry_at: datetime | None = None

    def _pending_steps(self) -> list[PlannedStep]:
        return self._progress.pending(self._current_plan())

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

    async def _extend_ladder(self) -> bool:
        """All expanded repeat steps are done but the ladder goes on: fetch the repeats
        due after the last one sent. True when that added steps to wait for."""
        plan = self._current_plan()
        if self._pending_steps() or not plan.more_steps:
            return False
        if self._plan_retry_at is not None and workflow.now() < self._plan_retry_at:
            return False
        after = self._progress.repeat_horizon or max(
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

    async def _resolve(
        self,
        severity: Severity | None,
        repeats_after: datetime | None = None,
        *,
        opened_at: datetime | None = None,
        pinned_version: str | None = None,
        tier: Tier | None = None,
        clocks: list[ClockRequest] | None = None,
        entitle: bool = False,
    ) -> TicketPlan | None:
        """The ticket's plan at ``severity``, under its pinned policy version (or
        ``pinned_version`` when adopting another), from its original open time. None when
        the policy cannot be resolved: the failure is recorded on the ticket and logged at
        error level, and the caller keeps the last good plan. A ticket with target clocks
        has them all planned again (``clocks``, default: each open one from its own start,
        its paused time kept). ``entitle``: as at intake, under the policy in force and at
        the tier the ticket's customer is entitled to (a requester just verified)."""
        status = self._status
        if clocks is None and self._clocks_on and status is not None:
            clocks = targets.requests(status, workflow.now())
        request = PlanRequest(
            ticket=self._ticket,
            severity=severity,
            opened_at=opened_at or self._state().opened_at,
            repeats_after=repeats_after,
            pinned_version=None
            if entitle
            else pinned_version or (status.policy_version if status else None),
            tier=None if entitle else tier or (status.tier if status else None),
            clocks=clocks,
        )
        try:
            plan: TicketPlan = await self._run_activity(
                PolicyActivities.resolve_ticket_plan,
                request,
                start_to_close_timeout=POLICY_TIMEOUT,
                schedule_to_close_timeout=POLICY_SCHEDULE_TIMEOUT,
                retry_policy=POLICY_RETRY,
            )
            return plan
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
        self._emit(
            Event(
                "policy_unavailable",
                workflow.now(),
                detail=f"{problem}; the ticket keeps its plan under policy {status.policy_version}",
                record=Record(
                    f"policy-unavailable-{n}",
                    kind="policy_unavailable",
                    detail={"problem": problem},
                ),
            )
        )
        return None

    def _apply_plan(self, plan: TicketPlan, adopted: bool = False) -> None:
        """The plan's tier, severity, deadline and clock become the ticket's, together."""
        status = self._state()
        events: list[Event] = []
        now = workflow.now()
        if status.policy_version not in (None, plan.policy_version) and not adopted:
            # Only an explicit adoption moves a ticket to another version; anything else
            # is a fault worth seeing on the ticket's record.
            events.append(
                Event(
                    "policy_version_changed",
                    now,
                    detail=f"{status.policy_version} -> {plan.policy_version} (resolved under"
                    " another version than the ticket's)",
                )
            )
        if self._plan is not None:
            events.append(
                Event(
                    "plan_resolved",
                    now,
                    detail=f"policy {plan.policy_version}, response due"
                    f" {iso(plan.response_due_at)}",
                )
            )
        self._plan = plan
        status.tier, status.severity = plan.tier, plan.severity
        status.policy_version = plan.policy_version
        status.commercial_sla = plan.commercial_sla
        status.response_target = plan.response_target
        status.response_due_at = plan.response_due_at
        status.time_zone = plan.time_zone
        status.policy_problem = None
        if self._clocks_on:
            targets.merge(status, plan.clocks)
        self._emit(*events)
