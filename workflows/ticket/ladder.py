"""The escalation ladder, as pure functions of the plan and the ticket's progress through
it: which steps are pending, when the ticket next wakes, and, when several steps fall due
at once, which are sent and which are superseded. Unit-tested without a server
(tests/unit/test_ladder.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from contract.models import PlannedStep, Severity, StepKind, TicketPlan, TicketState, TicketStatus

TERMINAL = (TicketState.RESOLVED, TicketState.CLOSED)
# Steps an acknowledgement makes moot (intake notifications still go out).
MOOT_ON_ACK = (StepKind.WARNING, StepKind.BREACH, StepKind.REPEAT)
# The history's word for a step of each kind once it is sent.
SENT: Mapping[StepKind, str] = MappingProxyType(
    {
        StepKind.INTAKE: "notified",
        StepKind.WARNING: "warned",
        StepKind.BREACH: "breached",
        StepKind.REPEAT: "escalated",
    }
)


@dataclass
class Progress:
    """How far the ticket is up its ladder. Non-repeat steps fire once per ticket, by name.
    Repeats are counted by instant: every repeat due at or before ``repeat_horizon`` has
    been sent or superseded, whatever severity's cadence planned it."""

    fired: set[str] = field(default_factory=set)
    repeat_horizon: datetime | None = None
    repeats_sent: int = 0

    def pending(self, plan: TicketPlan) -> list[PlannedStep]:
        horizon = self.repeat_horizon
        steps = [
            s
            for s in plan.steps
            if (s.kind is StepKind.REPEAT and (horizon is None or s.due_at > horizon))
            or (s.kind is not StepKind.REPEAT and s.name not in self.fired)
        ]
        return sorted(steps, key=lambda s: s.due_at)

    def done(self, step: PlannedStep) -> None:
        if step.kind is StepKind.REPEAT:
            self.repeat_horizon = max(step.due_at, self.repeat_horizon or step.due_at)
        else:
            self.fired.add(step.name)

    def sent_name(self, step: PlannedStep) -> str:
        """The name a step is sent under. Repeats are numbered as sent, so the name (and
        the idempotency key) stays unique when a severity change switches cadence."""
        if step.kind is not StepKind.REPEAT:
            return step.name
        self.repeats_sent += 1
        return f"{step.name.rsplit('-', 1)[0]}-{self.repeats_sent}"


def triage(due: list[PlannedStep], breach_recorded: bool) -> list[tuple[PlannedStep, bool]]:
    """Each due step with whether it is superseded (recorded, not sent). Normally one step
    falls due at its instant; when several are overdue at once (a severity raised past its
    new deadline, a worker that was down), warnings after the breach and all but the latest
    repeat are superseded, so nobody gets a burst of stale pages."""
    breach_in_batch = any(s.kind is StepKind.BREACH for s in due)
    repeats = [s for s in due if s.kind is StepKind.REPEAT]
    return [
        (
            step,
            (step.kind is StepKind.WARNING and breach_recorded)
            or (step.kind is StepKind.REPEAT and (breach_in_batch or step is not repeats[-1])),
        )
        for step in due
    ]


def idle_close_at(status: TicketStatus, plan: TicketPlan) -> datetime | None:
    """When a ticket whose tier closes idle tickets closes, from its last activity."""
    if plan.idle_close_after is None or status.state in TERMINAL:
        return None
    last = status.history[-1].at if status.history else status.opened_at
    return max(last, status.opened_at) + plan.idle_close_after


def next_wake(
    status: TicketStatus,
    pending: list[PlannedStep],
    idle_at: datetime | None,
    plan_retry_at: datetime | None,
) -> datetime | None:
    """The earliest of: the next pending step, the response deadline not yet recorded as
    missed, the idle close, and the next try at a policy that could not be resolved."""
    candidates: list[datetime] = []
    if status.state is TicketState.OPEN:
        if pending:
            candidates.append(pending[0].due_at)
        if status.response_due_at and not status.response_breached:
            candidates.append(status.response_due_at)
    if idle_at:
        candidates.append(idle_at)
    if plan_retry_at is not None and status.state is TicketState.OPEN:
        candidates.append(plan_retry_at)
    return min(candidates) if candidates else None


def rank(severity: Severity) -> int:
    """sev1 = 1 (highest) ... sev4 = 4."""
    return int(severity.value.removeprefix("sev"))
