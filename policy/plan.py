"""Per-ticket resolution: a customer's entitlement and ``resolve_plan``, a pure function from
(policy, ticket, severity, open time) to a ``TicketPlan`` with every escalation instant
computed on the ticket's clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from contract.models import (
    Channel,
    ChannelKind,
    ClockRequest,
    Metric,
    PlannedClock,
    PlannedStep,
    Recipient,
    Severity,
    SowTerms,
    StepKind,
    TicketInput,
    TicketPlan,
    Tier,
)
from policy.calendar import BusinessCalendar
from policy.schema import REPEAT_WINDOW, ClockSpec, Policy, StepSpec


def _first_repeat_after(
    calendar: BusinessCalendar,
    opened_at: datetime,
    base: timedelta,
    every: timedelta,
    after: datetime | None,
    due: Callable[[int], datetime],
) -> int:
    """The index of the first repeat due strictly after ``after`` (1 when None)."""
    if after is None:
        return 1
    elapsed = calendar.open_time_between(opened_at, after)
    n = max(1, (elapsed - base) // every)
    while n > 1 and due(n - 1) > after:
        n -= 1
    while due(n) <= after:
        n += 1
    return n


def _ladder_steps(
    ladder: list[StepSpec],
    calendar: BusinessCalendar,
    origin: datetime,
    target: timedelta | None,
    repeats_after: datetime | None,
    recipients_for: Callable[[str, list[str]], list[Recipient]],
    prefix: str = "",
    shift: timedelta = timedelta(0),
) -> tuple[list[PlannedStep], bool]:
    """A ladder's steps on ``calendar`` from ``origin`` (a share of ``target`` or an offset,
    plus ``shift``: time paused), named ``prefix`` + the step's name; repeats expanded
    ``REPEAT_WINDOW`` at a time after ``repeats_after``. Also whether more repeats follow."""
    steps: list[PlannedStep] = []
    more = False
    for step in ladder:
        base = step.at.amount(target) + shift
        name = prefix + step.name
        if step.kind is StepKind.REPEAT:
            assert step.repeat_every is not None
            every = step.repeat_every

            def due(n: int, base: timedelta = base, every: timedelta = every) -> datetime:
                return calendar.add(origin, base + every * n)

            start = _first_repeat_after(calendar, origin, base, every, repeats_after, due)
            stop = start + REPEAT_WINDOW
            if step.max_repeats is not None:
                stop = min(stop, step.max_repeats + 1)
            steps += [
                PlannedStep(
                    name=f"{name}-{n}",
                    kind=step.kind,
                    due_at=due(n),
                    recipients=recipients_for(name, step.targets),
                )
                for n in range(start, stop)
            ]
            more = more or step.max_repeats is None or stop <= step.max_repeats
        else:
            steps.append(
                PlannedStep(
                    name=name,
                    kind=step.kind,
                    due_at=calendar.add(origin, base),
                    recipients=recipients_for(name, step.targets),
                )
            )
    steps.sort(key=lambda s: s.due_at)
    return steps, more


def _plan_clock(
    spec: ClockSpec,
    request: ClockRequest,
    severity: Severity,
    calendar: BusinessCalendar,
    recipients_for: Callable[[str, list[str]], list[Recipient]],
) -> PlannedClock:
    """One target beyond the first response: its deadline ``target`` of open time after
    its start, plus every pause (a pause that just ended counted in open time, so a
    business-hours clock paused over a weekend moves by the business time it lost)."""
    paused = request.paused_business
    if request.pause_from is not None and request.pause_to is not None:
        paused += calendar.open_time_between(request.pause_from, request.pause_to)
    target = spec.target_for(severity)
    steps, more = _ladder_steps(
        spec.ladder,
        calendar,
        request.started_at,
        target,
        request.repeats_after,
        recipients_for,
        prefix=f"{request.metric.value}-{request.cycle}-",
        shift=paused,
    )
    return PlannedClock(
        metric=request.metric,
        cycle=request.cycle,
        target=target,
        pausable=spec.pausable,
        started_at=request.started_at,
        due_at=calendar.add(request.started_at, target + paused),
        steps=steps,
        more_steps=more,
        paused_business=paused,
    )


@dataclass(frozen=True)
class Entitlement:
    """The tier a customer is entitled to: a contract's tier, else what was claimed."""

    tier: Tier
    contracted: bool
    # Why: "contract <customer>" for a contracted customer, None otherwise.
    reason: str | None = None

    def refusal(self, customer_id: str, claimed: Tier | None) -> str | None:
        """Why intake refuses ``claimed`` (a tier other than the contracted one), or None."""
        if self.contracted and claimed is not None and claimed is not self.tier:
            return (
                f"tier: customer {customer_id!r} has a {self.tier.value} contract; open the"
                f" ticket at {self.tier.value} (or leave tier out), not {claimed.value}"
            )
        return None


def entitlement(policy: Policy, customer_id: str, claimed: Tier | None) -> Entitlement:
    """A customer with a contract gets its contracted tier on every path; anyone else the
    tier claimed (Community when none was claimed). Who may claim what for uncontracted
    customers is the intake path's business (integration tokens; raw starts are trusted)."""
    contract = policy.customers.get(customer_id)
    if contract is not None:
        return Entitlement(contract.tier, True, f"contract {customer_id}")
    return Entitlement(claimed or Tier.COMMUNITY, False, None)


# The intake channels anyone can write to without proving an address: the contact form
# (a typed address) and the support mailbox (a From anyone can write). A ticket from one
# of them runs under a contract only once its requester is verified (a confirmation link,
# or a trusted DMARC pass); before that it runs as Community (docs/intake.md).
PUBLIC_CHANNELS = frozenset({"web_form", "email"})


def reporter_verified(policy: Policy, ticket: TicketInput) -> bool:
    """Whether the ticket's ``reporter_email`` is known to be its requester's: always but
    for a public channel's ticket outside a contract, whose address is only a claim. The
    system mails such an address nothing about the ticket (docs/security.md)."""
    return ticket.intake_channel not in PUBLIC_CHANNELS or ticket.customer_id in policy.customers


def resolve_plan(
    policy: Policy,
    ticket: TicketInput,
    severity: Severity | None,
    opened_at: datetime,
    repeats_after: datetime | None = None,
    tier: Tier | None = None,
    clocks: list[ClockRequest] | None = None,
) -> TicketPlan:
    """Every deadline of one ticket at one severity, computed from its original open time.

    The tier is ``tier`` when given (the one the ticket already runs at), else the
    customer's entitlement; the severity ``severity``, else the ticket's, else the policy's
    ``default_severity``. A ticket whose category is out of scope has no SLA clock: no
    response target, no deadline, no ladder (it goes to a statement of work).

    Repeat steps are expanded ``REPEAT_WINDOW`` at a time: the first window, or, given
    ``repeats_after``, the repeats falling due after that instant (the last repeat the
    ticket already sent, whatever severity it was at then). ``more_steps`` tells the
    workflow to ask for the next window once these have fired.

    ``clocks``: the targets beyond the first response to plan (each from its own start,
    its paused time added); None plans those that start with the ticket (resolution).
    """
    entitled = entitlement(policy, ticket.customer_id, ticket.tier)
    tier_name = tier or entitled.tier
    severity = severity or ticket.severity or policy.default_severity
    spec = policy.tiers[tier_name]
    target, ladder = spec.rule_for(severity)
    calendar_name, calendar = policy.calendar_for(tier_name, ticket.customer_id)
    customer = policy.customers.get(ticket.customer_id)
    reason = policy.out_of_scope_categories.get(ticket.category)
    # Out of scope at intake: no clock at all, so never breached (not even retroactively).
    commercial = spec.commercial_sla and target is not None and reason is None

    def contacts_at(*step_names: str) -> list[Recipient]:
        """The contract's contacts whose ``at_steps`` name any of ``step_names``."""
        contacts = customer.contacts if customer else []
        return [policy.contact(c) for c in contacts if set(step_names) & set(c.at_steps)]

    def recipients_for(step_name: str, names: list[str]) -> list[Recipient]:
        return policy.recipients(names) + contacts_at(step_name)

    def clock_recipients(request: ClockRequest) -> Callable[[str, list[str]], list[Recipient]]:
        """A target clock's step ``<metric>-<cycle>-<step>`` goes to the contacts naming it
        or its step of every cycle, ``<metric>-<step>``."""
        metric, prefix = request.metric.value, f"{request.metric.value}-{request.cycle}-"

        def of(step_name: str, names: list[str]) -> list[Recipient]:
            every_cycle = f"{metric}-{step_name.removeprefix(prefix)}"
            return policy.recipients(names) + contacts_at(step_name, every_cycle)

        return of

    steps, more = _ladder_steps(
        [s for s in ladder if commercial or s.kind is StepKind.INTAKE] if reason is None else [],
        calendar,
        opened_at,
        target,
        repeats_after,
        recipients_for,
    )

    sow = policy.statement_of_work
    sow_recipients = policy.recipients([t for t in sow.targets if t != "reporter"])
    # An unverified address is told nothing: the statement-of-work mail repeats the
    # ticket's subject, which would make the system a reflector (docs/security.md).
    if "reporter" in sow.targets and ticket.reporter_email and reporter_verified(policy, ticket):
        sow_recipients.append(
            # The recipient's name carries no personal data; the address is the ticket's.
            Recipient(
                name="reporter",
                role="customer",
                channels=[
                    Channel(type=ChannelKind.EMAIL, to=[ticket.reporter_email]),
                    Channel(type=ChannelKind.LOG),
                ],
            )
        )
    planned_clocks = [
        _plan_clock(metric_spec, request, severity, calendar, clock_recipients(request))
        for request in (
            clocks
            if clocks is not None
            else [ClockRequest(metric=Metric.RESOLUTION, started_at=opened_at)]
        )
        if commercial and (metric_spec := spec.clock(request.metric.value)) is not None
    ]
    return TicketPlan(
        policy_version=policy.version,
        tier=tier_name,
        severity=severity,
        entitlement=entitled.reason if tier_name is not ticket.tier else None,
        commercial_sla=commercial,
        calendar=calendar_name,
        time_zone=calendar.time_zone,
        response_target=target if commercial else None,
        response_due_at=calendar.add(opened_at, target) if commercial and target else None,
        steps=steps,
        more_steps=commercial and more,
        clocks=planned_clocks,
        next_reply_target=(
            spec.next_reply.target_for(severity) if commercial and spec.next_reply else None
        ),
        out_of_scope_reason=(
            f"category '{ticket.category}': {reason}" if reason is not None else None
        ),
        idle_close_after=spec.idle_close_after,
        history_limit=policy.limits.continue_as_new_after_events,
        failover_after=policy.delivery.failover_after,
        sow=SowTerms(
            recipients=sow_recipients,
            remind_after=sow.remind_after,
            expire_after=sow.expire_after,
            failover_after=policy.delivery.failover_after,
        ),
    )
