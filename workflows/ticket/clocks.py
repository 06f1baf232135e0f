"""The ticket's targets beyond the first response, in the workflow: starting the clocks,
firing their ladders, re-planning them when a pause ends or a new next-reply clock starts,
and the nearest wake. The rules are the pure ``targets`` module's; the plan (deadlines on
the ticket's calendar) comes from the policy activity (docs/ticket-life.md#targets).

Only tickets on the ``SLA_TARGETS`` branch keep clocks: a ticket that started before the
change, or under a policy without these targets, behaves as before."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

from workflows.activity_options import POLICY_RETRY_AFTER
from workflows.ticket import ladder, targets, transitions
from workflows.ticket.events import Event
from workflows.ticket.patches import RESUME_AWAITS_PLAN, SLA_TARGETS
from workflows.ticket.planning import Planning

with workflow.unsafe.imports_passed_through():
    from contract.models import (
        ClockRequest,
        EscalationRecord,
        Metric,
        PlannedClock,
        PlannedStep,
        TargetStatus,
        TicketPlan,
        TicketStatus,
    )


class Clocks(Planning):
    """Target clocks for the ticket workflow (docs/ticket-life.md#targets)."""

    def _start_clocks(self, plan: TicketPlan) -> None:
        """A new ticket whose tier has more targets keeps their clocks."""
        if (plan.clocks or plan.next_reply_target) and self._patched(SLA_TARGETS):
            self._clocks_on = True
            targets.merge(self._state(), plan.clocks)

    def _clock_plans(self) -> list[PlannedClock]:
        return self._current_plan().clocks if self._clocks_on else []

    def _pending_clock_steps(self) -> list[tuple[PlannedClock, PlannedStep]]:
        return targets.pending_steps(self._state(), self._clock_plans(), self._progress.fired)

    def _clock_wake(self) -> datetime | None:
        """The next instant a clock needs the ticket: its next step or its deadline."""
        if not self._clocks_on:
            return None
        status = self._state()
        candidates = [s.due_at for _, s in self._pending_clock_steps()[:1]]
        if self._plan_retry_at is not None and targets.unplanned(status):
            candidates.append(self._plan_retry_at)
        candidates += [
            t.due_at for t in targets.running(status) if not t.breached and t.due_at is not None
        ]
        return min(candidates) if candidates else None

    async def _run_clocks(self, now: datetime) -> bool:
        """Record the clocks' breaches and fire their due steps; True when something was
        fired or the ladder extended (the loop goes round again)."""
        if not self._clocks_on:
            return False
        status = self._state()
        if targets.unplanned(status) and (
            self._plan_retry_at is None or now >= self._plan_retry_at
        ):
            # Clocks held for a plan the policy could not give: try again.
            planned = await self._plan_clocks(targets.requests(status, now))
            if planned is not None:
                self._take_clocks(planned)
                targets.settle_unplanned(status)
                self._emit(Event("clocks_planned", now, detail=_deadlines(status)))
                return True
        missed = targets.missed(status, now)
        if missed:
            self._emit(*missed)
        due = [(c, s) for c, s in self._pending_clock_steps() if s.due_at <= now]
        if due:
            for clock in {(c.metric, c.cycle): c for c, _ in due}.values():
                target = targets.find(status, clock.metric, clock.cycle)
                steps = [s for c, s in due if c is clock]
                for step, superseded in ladder.triage(steps, bool(target and target.breached)):
                    self._fire_clock_step(clock, step, now, superseded)
            return True
        return await self._extend_clocks()

    def _fire_clock_step(
        self, clock: PlannedClock, step: PlannedStep, now: datetime, superseded: bool
    ) -> None:
        self._progress.fired.add(step.name)
        metric = clock.metric.value
        if superseded:
            self._emit(transitions.superseded(step, now))
            return
        status = self._state()
        record = EscalationRecord(
            step=step.name,
            kind=step.kind,
            due_at=step.due_at,
            fired_at=now,
            targets=[r.name for r in step.recipients],
        )
        status.escalations.append(record)
        kind = f"{metric}_{ladder.SENT[step.kind]}"
        self._emit(Event(kind, now, detail=f"step {step.name} to {', '.join(record.targets)}"))
        self._paged += [r for r in step.recipients if r.pages() and r not in self._paged]
        label = targets.label(clock.metric).capitalize()
        self._start_delivery(
            name=step.name,
            kind=step.kind.value,
            due_at=step.due_at,
            recipients=step.recipients,
            message=f"{label} due {clock.due_at.isoformat()} (target {clock.target})",
            event_kind=kind,
            at=now,
            source="timer",
            detail={
                "step": step.name,
                "metric": metric,
                "cycle": clock.cycle,
                "due_at": step.due_at.isoformat(),
                "targets": record.targets,
            },
            record=record,
            metric=clock.metric,
        )

    async def _extend_clocks(self) -> bool:
        """A running clock whose expanded repeats are all sent but whose ladder goes on:
        plan its next repeats. True when that added steps."""
        status = self._state()
        pending = {(c.metric, c.cycle) for c, _ in self._pending_clock_steps()}
        live = {(t.metric, t.cycle) for t in targets.running(status)}
        for clock in self._clock_plans():
            key = (clock.metric, clock.cycle)
            if key in live and key not in pending and clock.more_steps:
                if self._plan_retry_at is not None and workflow.now() < self._plan_retry_at:
                    return False
                last = max(s.due_at for s in clock.steps) if clock.steps else None
                requests = [
                    r.model_copy(update={"repeats_after": last})
                    if (r.metric, r.cycle) == key
                    else r
                    for r in targets.requests(status, workflow.now())
                ]
                return await self._replan_clocks(requests)
        return False

    async def _replan_clocks(self, requests: list[ClockRequest]) -> bool:
        """Plan ``requests`` (the ticket's open clocks with the next repeats of one) and
        take their deadlines and ladders; the first response's plan stays as it is. False
        when the policy could not be resolved (recorded; the clocks keep their plan)."""
        planned = await self._plan_clocks(requests)
        if planned is None:
            return False
        self._take_clocks(planned)
        self._emit()
        return bool(self._pending_clock_steps())

    async def _plan_clocks(self, requests: list[ClockRequest]) -> list[PlannedClock] | None:
        """The plan activity's clocks for ``requests`` (nothing of the ticket changes)."""
        plan = await self._resolve(
            self._state().severity, repeats_after=self._progress.repeat_horizon, clocks=requests
        )
        if plan is None:
            self._plan_retry_at = workflow.now() + POLICY_RETRY_AFTER
            return None
        self._plan_retry_at = None
        self._current_plan().next_reply_target = plan.next_reply_target
        return plan.clocks

    def _take_clocks(self, planned: list[PlannedClock]) -> None:
        current = self._current_plan()
        keys = {(c.metric, c.cycle) for c in planned}
        current.clocks = [c for c in current.clocks if (c.metric, c.cycle) not in keys]
        current.clocks += planned
        targets.merge(self._state(), planned)

    async def _customer_answered(self, at: datetime) -> None:
        """A customer reply: a wait on the customer ends (its paused clocks run again, their
        deadlines moved by the time paused) and, on an answered ticket whose tier has a
        next-reply target, the next reply's clock starts (unless one is still open). The
        new deadlines are planned first and applied with the resume, so no status shows
        one without the other."""
        if not self._patched(SLA_TARGETS):
            return
        status = self._state()
        waiting = status.awaiting_customer_since is not None
        live = self._clocks_on and status.state in targets.LIVE
        ended = targets.paused(status) if live else {}
        cycle = targets.next_reply_cycle(status) if live else None
        starts = (
            cycle is not None
            and self._current_plan().next_reply_target is not None
            and status.acknowledged_at is not None
        )
        planned: list[PlannedClock] = []
        if ended or starts:
            requests = targets.requests(status, at, ended)
            if starts and cycle is not None:
                new = ClockRequest(metric=Metric.NEXT_REPLY, cycle=cycle, started_at=at)
                requests.append(new)
            found = await self._plan_clocks(requests)
            if found is None and self._patched(RESUME_AWAITS_PLAN):
                # No plan (recorded): the paused clocks stay stopped and the new next reply
                # waits for its deadline, until a plan comes (_run_clocks retries).
                targets.hold(status, ended, at)
                target = self._current_plan().next_reply_target
                if starts and cycle is not None and target is not None:
                    status.targets.append(
                        TargetStatus(
                            metric=Metric.NEXT_REPLY,
                            cycle=cycle,
                            target=target,
                            started_at=at,
                            pausable=True,
                        )
                    )
            planned = found or []
        events: list[Event] = []
        if waiting:
            events.append(targets.resume(status, at, self._next("resumed")))
        self._take_clocks(planned)
        if starts and cycle is not None and targets.find(status, Metric.NEXT_REPLY, cycle):
            due = _due(status, cycle)
            events.append(Event("next_reply_started", at, detail=f"next reply {cycle} due {due}"))
        self._emit(*events)


def _deadlines(status: TicketStatus) -> str:
    """The open clocks' deadlines, for the record."""
    return ", ".join(
        f"{targets.label(t.metric)} {t.cycle} due {t.due_at.isoformat()}"
        for t in targets.clocks_of(status)
        if t.met_at is None and t.due_at is not None
    )


def _due(status: TicketStatus, cycle: int) -> str:
    target = targets.find(status, Metric.NEXT_REPLY, cycle)
    return target.due_at.isoformat() if target and target.due_at else "not planned"
