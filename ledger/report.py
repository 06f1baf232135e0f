"""SLA compliance figures from the ledger's ticket rows (pure: no I/O, no clock).

``build_report(outcomes, as_of)`` groups tickets per (tier, severity), with a subtotal per
tier and an overall total, and lists every breach. Definitions (also in docs/reports.md):

- *with SLA*: the ticket has a response deadline (``response_due_at``); Community has none.
- *met*: acknowledged at or before the deadline, and no breach on record.
- *breached*: the workflow recorded a breach (``response_breached``), or the ticket was
  acknowledged after its deadline, or it is still open, unacknowledged and past its deadline
  at ``as_of`` (the workflow's breach write has not reached the ledger yet, e.g. while every
  worker is down: a compliance report never hides an overdue ticket).
- *pending*: with SLA, not acknowledged, not breached, not out of scope, ``as_of <= due``.
- *out of scope*: routed to a statement of work. Such a ticket still counts as met or
  breached if it was acknowledged or breached before it left the SLA path.
- *attainment* = met / (met + breached), as a percentage; None ("n/a") when both are zero.
- *time to acknowledge* = ``acknowledged_at - opened_at``, over the acknowledged tickets
  (any tier). Percentiles use the nearest-rank method: the p-th percentile of n sorted
  values is the value at rank ``ceil(p / 100 * n)`` (1-based), i.e. the smallest value with
  at least p % of the values at or below it. It is always one of the observed values, never
  an interpolation.
- *next reply* and *resolution* (tiers whose policy sets them): each clock is *met* when
  answered (``agent_reply``) or resolved by its deadline, *breached* when the workflow
  recorded the breach, when it was met late, or when it still runs past its deadline at
  ``as_of`` (a paused clock is not overdue), *pending* otherwise. Time to meet it runs
  from the clock's start to the instant met, the time paused left out (business: on the
  ticket's calendar, minus the business time paused). *Waiting on the customer*: each
  wait from the ledger's ``awaiting-customer-<n>`` event to its ``customer_resumed`` one
  (one still open up to the resolution or close, else up to ``as_of``), in wall time and
  on the ticket's calendar; given the waits (``customer_waits``), else the row's
  ``customer_wait`` and the business time its pausable clocks lost (``wait_of``).
- *overrun* of a breach: ``acknowledged_at - response_due_at`` when acknowledged late;
  ``as_of - response_due_at`` when still open and unacknowledged; otherwise (closed or
  routed without an acknowledgement, or a breach that stays on record after the deadline
  was moved later by a severity change) the overrun the workflow stored, counted from the
  deadline in force when the breach happened (``breached_at``).

Both are measured twice: in *business* time, on the clock the ticket's contract uses (the
open time of ``Policy.calendar_for(tier, customer_id)`` of the policy version the ticket was
opened under: business hours for Standard or a contract's calendar; every hour on a 24x7
calendar, where business time equals wall time), and in *wall* time. A ticket whose policy
version cannot be had (``policy_for_version`` gives None) is measured on the wall clock for
both, counted in ``no_policy`` and named in the report's notes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal, TypeVar

from contract.models import (
    Metric,
    Severity,
    SlaEvent,
    TargetStatus,
    TicketOutcome,
    TicketState,
    Tier,
)
from policy.calendar import BusinessCalendar
from policy.load import load_policy
from policy.schema import Policy, PolicyError

TIER_ORDER: tuple[Tier, ...] = (
    Tier.MISSION_CRITICAL,
    Tier.PREMIUM,
    Tier.STANDARD,
    Tier.COMMUNITY,
)
SEVERITY_ORDER: tuple[Severity, ...] = (
    Severity.SEV1,
    Severity.SEV2,
    Severity.SEV3,
    Severity.SEV4,
)
# Up to this many days of opened_at the chart has one point per day, beyond it per ISO week.
DAILY_BUCKETS_UP_TO = timedelta(days=31)

Scope = Literal["group", "tier", "total"]
BucketUnit = Literal["day", "week"]
# The policy a ticket was opened under, by its recorded version (None: not available).
PolicyResolver = Callable[[str | None], Policy | None]


def loaded_policy(version: str | None) -> Policy | None:
    """The default resolver: the loaded policy file (``SUPPORT_POLICY_FILE``, else the
    shipped default) for any version; None when it cannot be loaded."""
    try:
        return load_policy()
    except PolicyError:
        return None


@dataclass(frozen=True)
class TicketClock:
    """The clock a ticket's contract uses: its calendar's name and the calendar itself, or
    no calendar when no policy was available (then business time is wall time)."""

    calendar_name: str | None = None
    calendar: BusinessCalendar | None = None

    @property
    def kind(self) -> str:
        """``business hours``, ``24x7``, or ``wall (no policy)``."""
        if self.calendar is None:
            return "wall (no policy)"
        return "24x7" if self.calendar.always_open else "business hours"

    @property
    def label(self) -> str:
        """The calendar's name and, for a 24x7 one, that it is: ``us-business-hours``,
        ``always (24x7)``, ``wall (no policy)``."""
        if self.calendar is None or self.calendar_name is None:
            return self.kind
        return f"{self.calendar_name} (24x7)" if self.calendar.always_open else self.calendar_name

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time from ``start`` to ``end`` (zero when ``end`` is not later)."""
        if self.calendar is None:
            return max(end - start, timedelta(0))
        return self.calendar.open_time_between(start, end)


# Measured on the wall clock, no policy consulted (``judge`` without a clock).
WALL_CLOCK = TicketClock()


# Durations here; seconds in the drills' verdicts (drills.verdict).
Measure = TypeVar("Measure", timedelta, float)


def nearest_rank(values: Iterable[Measure], percent: int) -> Measure | None:
    """The ``percent``-th percentile of ``values`` by the nearest-rank method (see above);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-percent * len(ordered) // 100)  # ceil(percent * n / 100), in integers
    return ordered[max(rank, 1) - 1]


def attainment(met: int, breached: int) -> float | None:
    """Response-target attainment in percent, or None when no ticket was decided."""
    decided = met + breached
    return 100.0 * met / decided if decided else None


@dataclass(frozen=True)
class Verdict:
    """What one ticket contributes to the figures."""

    has_sla: bool
    met: bool
    breached: bool
    pending: bool
    out_of_scope: bool
    time_to_acknowledge: timedelta | None  # wall clock
    overrun: timedelta | None  # wall clock; set when breached
    # The same two on the ticket's contract clock (business time).
    business_to_acknowledge: timedelta | None = None
    business_overrun: timedelta | None = None
    # Whether no policy was available, so the business figures are wall time.
    no_policy: bool = False


def judge(ticket: TicketOutcome, as_of: datetime, clock: TicketClock = WALL_CLOCK) -> Verdict:
    due, acked = ticket.response_due_at, ticket.acknowledged_at
    to_ack = acked - ticket.opened_at if acked is not None else None
    business_to_ack = clock.between(ticket.opened_at, acked) if acked is not None else None
    no_policy = clock.calendar is None
    if due is None:
        return Verdict(
            has_sla=False,
            met=False,
            breached=False,
            pending=False,
            out_of_scope=ticket.out_of_scope,
            time_to_acknowledge=to_ack,
            overrun=None,
            business_to_acknowledge=business_to_ack,
            no_policy=no_policy,
        )
    still_open = ticket.state is TicketState.OPEN
    late_ack = acked is not None and acked > due
    overdue = acked is None and still_open and not ticket.out_of_scope and as_of > due
    breached = ticket.response_breached or late_ack or overdue
    overrun: timedelta | None = None
    business_overrun: timedelta | None = None
    if breached:
        if late_ack:
            assert acked is not None
            overrun, business_overrun = acked - due, clock.between(due, acked)
        elif acked is None and still_open:
            overrun, business_overrun = max(as_of - due, timedelta(0)), clock.between(due, as_of)
        else:
            # The workflow measured it from the deadline in force at the breach.
            overrun = ticket.overrun or timedelta(0)
            since = ticket.breached_at or due
            business_overrun = clock.between(since, since + overrun)
    return Verdict(
        has_sla=True,
        met=acked is not None and not breached,
        breached=breached,
        pending=acked is None and not breached and not ticket.out_of_scope and as_of <= due,
        out_of_scope=ticket.out_of_scope,
        time_to_acknowledge=to_ack,
        overrun=overrun,
        business_to_acknowledge=business_to_ack,
        business_overrun=business_overrun,
        no_policy=no_policy,
    )


@dataclass(frozen=True)
class Figures:
    tickets: int = 0
    with_sla: int = 0
    met: int = 0
    breached: int = 0
    pending: int = 0
    out_of_scope: int = 0
    acknowledged: int = 0
    ack_p50: timedelta | None = None
    ack_p90: timedelta | None = None
    ack_max: timedelta | None = None
    overrun_total: timedelta = timedelta(0)
    overrun_max: timedelta | None = None
    # The same, in business time (each ticket on its contract's clock).
    ack_business_p50: timedelta | None = None
    ack_business_p90: timedelta | None = None
    ack_business_max: timedelta | None = None
    overrun_business_total: timedelta = timedelta(0)
    overrun_business_max: timedelta | None = None
    # Tickets measured on the wall clock for want of their policy version.
    no_policy: int = 0

    @property
    def attainment(self) -> float | None:
        return attainment(self.met, self.breached)

    @classmethod
    def of(cls, verdicts: Sequence[Verdict]) -> Figures:
        acks = [v.time_to_acknowledge for v in verdicts if v.time_to_acknowledge is not None]
        overruns = [v.overrun for v in verdicts if v.overrun is not None]
        business_acks = [
            v.business_to_acknowledge for v in verdicts if v.business_to_acknowledge is not None
        ]
        business_overruns = [v.business_overrun for v in verdicts if v.business_overrun is not None]
        return cls(
            tickets=len(verdicts),
            with_sla=sum(v.has_sla for v in verdicts),
            met=sum(v.met for v in verdicts),
            breached=sum(v.breached for v in verdicts),
            pending=sum(v.pending for v in verdicts),
            out_of_scope=sum(v.out_of_scope for v in verdicts),
            acknowledged=len(acks),
            ack_p50=nearest_rank(acks, 50),
            ack_p90=nearest_rank(acks, 90),
            ack_max=max(acks, default=None),
            overrun_total=sum(overruns, timedelta(0)),
            overrun_max=max(overruns, default=None),
            ack_business_p50=nearest_rank(business_acks, 50),
            ack_business_p90=nearest_rank(business_acks, 90),
            ack_business_max=max(business_acks, default=None),
            overrun_business_total=sum(business_overruns, timedelta(0)),
            overrun_business_max=max(business_overruns, default=None),
            no_policy=sum(v.no_policy for v in verdicts),
        )


# The targets beyond the first response, in the order the report shows them.
TARGET_METRICS: tuple[Metric, ...] = (Metric.NEXT_REPLY, Metric.RESOLUTION)
LIVE_STATES = (TicketState.OPEN, TicketState.ACKNOWLEDGED)


@dataclass(frozen=True)
class TargetVerdict:
    """One target clock (a next reply, a resolution) of one ticket."""

    met: bool
    breached: bool
    pending: bool
    # Time from the clock's start to the target met, the time paused left out (what the
    # deadline measured): wall clock, and on the ticket's contract clock.
    elapsed: timedelta | None = None
    elapsed_business: timedelta | None = None


def judge_target(
    target: TargetStatus,
    ticket: TicketOutcome,
    as_of: datetime,
    clock: TicketClock,
    spans: Sequence[WaitSpan] | None = None,
) -> TargetVerdict:
    """``spans``: the ticket's waits on the customer (``wait_spans``). Given them, the time
    a pausable clock met was paused is measured from the waits within its run, on the
    ticket's calendar; without them, from the row (whose business time lacks a last pause
    that the clock's own meeting ended: the workflow cannot count business time)."""
    due, done = target.due_at, target.met_at
    if done is not None:
        breached = target.breached or (due is not None and done > due)
        paused, paused_business = target.paused, target.paused_business
        if spans is not None and target.pausable:
            paused = paused_business = timedelta(0)
            for start, end in spans:
                since, until = max(start, target.started_at), min(end or done, done)
                if until > since:
                    paused += until - since
                    paused_business += clock.between(since, until)
        wall = max(done - target.started_at - paused, timedelta(0))
        business = clock.between(target.started_at, done) - paused_business
        return TargetVerdict(not breached, breached, False, wall, max(business, timedelta(0)))
    running = ticket.state in LIVE_STATES and target.paused_since is None
    overdue = running and due is not None and as_of > due
    breached = target.breached or overdue
    return TargetVerdict(False, breached, not breached)


@dataclass(frozen=True)
class TargetFigures:
    """One target of one tier (``tier`` None: all tiers): its clocks (a next reply per
    answered customer reply, one resolution per ticket) met, breached or pending, and the
    time to meet them (p50/p90, business and wall, the time paused left out). A total
    without clocks is the report's "no data" row for that target."""

    tier: Tier | None
    metric: Metric
    clocks: int = 0
    met: int = 0
    breached: int = 0
    pending: int = 0
    p50: timedelta | None = None
    p90: timedelta | None = None
    business_p50: timedelta | None = None
    business_p90: timedelta | None = None

    @property
    def attainment(self) -> float | None:
        return attainment(self.met, self.breached)

    @classmethod
    def of(
        cls, tier: Tier | None, metric: Metric, verdicts: Sequence[TargetVerdict]
    ) -> TargetFigures:
        wall = [v.elapsed for v in verdicts if v.elapsed is not None]
        business = [v.elapsed_business for v in verdicts if v.elapsed_business is not None]
        return cls(
            tier=tier,
            metric=metric,
            clocks=len(verdicts),
            met=sum(v.met for v in verdicts),
            breached=sum(v.breached for v in verdicts),
            pending=sum(v.pending for v in verdicts),
            p50=nearest_rank(wall, 50),
            p90=nearest_rank(wall, 90),
            business_p50=nearest_rank(business, 50),
            business_p90=nearest_rank(business, 90),
        )


@dataclass(frozen=True)
class WaitFigures:
    """Time a tier's tickets (``tier`` None: all tiers) spent waiting on the customer,
    per ticket that waited: wall clock (``customer_wait``) and on the contract's clock (as
    the ticket's pausable clocks counted it)."""

    tier: Tier | None
    tickets: int
    total: timedelta
    business_total: timedelta
    p50: timedelta | None
    business_p50: timedelta | None

    @classmethod
    def of(cls, tier: Tier | None, waited: Sequence[tuple[timedelta, timedelta]]) -> WaitFigures:
        return cls(
            tier=tier,
            tickets=len(waited),
            total=sum((wall for wall, _ in waited), timedelta(0)),
            business_total=sum((business for _, business in waited), timedelta(0)),
            p50=nearest_rank([wall for wall, _ in waited], 50),
            business_p50=nearest_rank([business for _, business in waited], 50),
        )


# One wait on the customer: from the ticket's ``awaiting-customer-<n>`` ledger event to its
# ``customer_resumed`` one; the end is None while no resume is on record (still waiting,
# or the wait ended with the ticket: resolved or closed). workflows/ticket/targets.py.
WaitSpan = tuple[datetime, datetime | None]
WAIT_BEGINS = "awaiting-customer-"
WAIT_ENDS = "customer_resumed"


def wait_spans(events: Iterable[SlaEvent]) -> list[WaitSpan]:
    """A ticket's waits on the customer from its ledger events (any order), oldest first."""
    spans: list[WaitSpan] = []
    for event in sorted(events, key=lambda e: e.at):
        open_wait = bool(spans) and spans[-1][1] is None
        if event.kind.startswith(WAIT_BEGINS) and not open_wait:
            spans.append((event.at, None))
        elif event.kind == WAIT_ENDS and open_wait:
            spans[-1] = (spans[-1][0], event.at)
    return spans


def wait_of(
    ticket: TicketOutcome,
    as_of: datetime,
    clock: TicketClock = WALL_CLOCK,
    spans: Sequence[WaitSpan] | None = None,
) -> tuple[timedelta, timedelta]:
    """A ticket's wait on the customer up to ``as_of``: wall, and business on the ticket's
    clock. From its ``spans`` when given: each on the calendar, a wait without a resume on
    record counted up to the ticket's resolution or close, else up to ``as_of``. Without
    them (the ledger's events not read) only the row is known: ``customer_wait`` and the
    most business time any pausable clock lost, which is nothing for a ticket without a
    pausable clock and misses a wait that ended at the resolution."""
    if spans is None:
        business = max((t.paused_business for t in ticket.targets), default=timedelta(0))
        return ticket.customer_wait, business
    ended = ticket.resolved_at or ticket.closed_at
    stop = min(ended, as_of) if ended is not None else as_of
    wall = business = timedelta(0)
    for start, end in spans:
        until = min(end, as_of) if end is not None else stop
        if until > start:
            wall += until - start
            business += clock.between(start, until)
    return wall, business


@dataclass(frozen=True)
class Row:
    """One line of the report: a (tier, severity) group, a tier's subtotal or the total."""

    scope: Scope
    tier: Tier | None
    severity: Severity | None
    figures: Figures


@dataclass(frozen=True)
class Breach:
    ticket_id: str
    customer_id: str
    tier: Tier
    severity: Severity
    state: TicketState
    response_due_at: datetime
    acknowledged_at: datetime | None
    overrun: timedelta  # wall clock
    # Whether the ledger row carries the breach flag; False for a breach found only here
    # (acknowledged late, or open past its deadline at as_of, without the flag).
    recorded: bool
    # The overrun on the contract's clock, and that clock (see TicketClock).
    overrun_business: timedelta = timedelta(0)
    clock: TicketClock = WALL_CLOCK


@dataclass(frozen=True)
class SeriesPoint:
    bucket: date  # the day, or the Monday of the ISO week
    label: str
    met: int
    breached: int

    @property
    def attainment(self) -> float | None:
        return attainment(self.met, self.breached)


@dataclass(frozen=True)
class Series:
    """Attainment per tier per bucket of ``opened_at`` (every bucket of the range, so the
    chart's time axis has no holes; a bucket without decided tickets has no attainment)."""

    unit: BucketUnit
    buckets: list[tuple[date, str]]
    tiers: dict[Tier, list[SeriesPoint]]


@dataclass(frozen=True)
class Filters:
    opened_from: datetime | None = None
    opened_to: datetime | None = None  # exclusive
    customer_id: str | None = None
    tier: Tier | None = None


@dataclass(frozen=True)
class Report:
    as_of: datetime
    filters: Filters
    rows: list[Row]
    breaches: list[Breach]
    series: Series
    # Raw times to acknowledge per tier (wall clock), for the distribution chart.
    ack_times: dict[Tier, list[timedelta]] = field(default_factory=dict)
    # The same in business time.
    ack_times_business: dict[Tier, list[timedelta]] = field(default_factory=dict)
    # What the reader should know about the figures (tickets measured without a policy).
    notes: list[str] = field(default_factory=list)
    # The targets beyond the first response, per tier and metric (tiers with such clocks
    # only) then a total per metric, their times to meet (business) for the chart, and the
    # waits on the customer (per tier that waited, then a total).
    targets: list[TargetFigures] = field(default_factory=list)
    target_times_business: dict[Metric, dict[Tier, list[timedelta]]] = field(default_factory=dict)
    waits: list[WaitFigures] = field(default_factory=list)

    @property
    def total(self) -> Figures:
        return self.rows[-1].figures

    @property
    def has_targets(self) -> bool:
        """Whether any ticket in the report has a next-reply or resolution clock."""
        return any(t.clocks for t in self.targets)

    @property
    def waited(self) -> bool:
        """Whether any ticket in the report waited on the customer."""
        return any(w.tickets for w in self.waits)

    def group(self, tier: Tier, severity: Severity) -> Figures | None:
        return next(
            (
                r.figures
                for r in self.rows
                if r.scope == "group" and (r.tier, r.severity) == (tier, severity)
            ),
            None,
        )

    def subtotal(self, tier: Tier) -> Figures | None:
        return next((r.figures for r in self.rows if r.scope == "tier" and r.tier == tier), None)


class Clocks:
    """Each ticket's contract clock, from the policy version it was opened under (each
    version resolved once, each calendar built once per tier and customer)."""

    def __init__(self, policy_for_version: PolicyResolver) -> None:
        self._resolve = policy_for_version
        self._policies: dict[str | None, Policy | None] = {}
        self._clocks: dict[tuple[str | None, Tier, str], TicketClock] = {}
        # version -> tickets measured on the wall clock for want of it
        self.missing: dict[str | None, int] = defaultdict(int)

    def policy(self, version: str | None) -> Policy | None:
        if version not in self._policies:
            try:
                self._policies[version] = self._resolve(version)
            except PolicyError:
                self._policies[version] = None
        return self._policies[version]

    def of(self, ticket: TicketOutcome) -> TicketClock:
        key = (ticket.policy_version, ticket.tier, ticket.customer_id)
        clock = self._clocks.get(key)
        if clock is None:
            policy = self.policy(ticket.policy_version)
            clock = WALL_CLOCK
            if policy is not None and ticket.tier in policy.tiers:
                name, calendar = policy.calendar_for(ticket.tier, ticket.customer_id)
                clock = TicketClock(name, calendar)
            self._clocks[key] = clock
        if clock.calendar is None:
            self.missing[ticket.policy_version] += 1
        return clock

    def notes(self) -> list[str]:
        notes = []
        for version, count in sorted(self.missing.items(), key=lambda item: item[0] or ""):
            which = f"no policy for version {version!r}" if version else "no policy version"
            tickets = f"{count} ticket{'s' if count != 1 else ''}"
            notes.append(f"{which} ({tickets}): their business time is wall-clock time")
        return notes


def build_report(
    outcomes: Iterable[TicketOutcome],
    as_of: datetime,
    filters: Filters | None = None,
    policy_for_version: PolicyResolver = loaded_policy,
    customer_waits: Mapping[str, Sequence[WaitSpan]] | None = None,
) -> Report:
    """The report for ``outcomes`` (already filtered by the store) as of ``as_of``; each
    ticket's business time on the calendar of ``policy_for_version(its policy_version)``.
    ``customer_waits``: each ticket's waits on the customer by ticket id (``wait_spans`` of
    its ledger events); a ticket not in it is measured by its row alone (``wait_of``)."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    as_of = as_of.astimezone(UTC)
    filters = filters or Filters()
    tickets = list(outcomes)
    clocks = Clocks(policy_for_version)
    ticket_clocks = {id(t): clocks.of(t) for t in tickets}
    judged = [(t, judge(t, as_of, ticket_clocks[id(t)])) for t in tickets]
    by_group: dict[tuple[Tier, Severity], list[Verdict]] = defaultdict(list)
    for t, v in judged:
        by_group[(t.tier, t.severity)].append(v)

    rows: list[Row] = []
    for tier in TIER_ORDER:
        tier_verdicts: list[Verdict] = []
        for severity in SEVERITY_ORDER:
            verdicts = by_group.get((tier, severity))
            if verdicts:
                rows.append(Row("group", tier, severity, Figures.of(verdicts)))
                tier_verdicts += verdicts
        if tier_verdicts:
            rows.append(Row("tier", tier, None, Figures.of(tier_verdicts)))
    rows.append(Row("total", None, None, Figures.of([v for _, v in judged])))

    breaches = sorted(
        (
            Breach(
                ticket_id=t.ticket_id,
                customer_id=t.customer_id,
                tier=t.tier,
                severity=t.severity,
                state=t.state,
                response_due_at=t.response_due_at,
                acknowledged_at=t.acknowledged_at,
                overrun=v.overrun or timedelta(0),
                recorded=t.response_breached,
                overrun_business=v.business_overrun or timedelta(0),
                clock=ticket_clocks[id(t)],
            )
            for t, v in judged
            if v.breached and t.response_due_at is not None
        ),
        key=lambda b: (b.response_due_at, b.ticket_id),
    )

    def per_tier(measure: Callable[[Verdict], timedelta | None]) -> dict[Tier, list[timedelta]]:
        """Each tier's acknowledgement times (``measure`` of its verdicts), sorted; tiers
        without one are left out."""
        found: dict[Tier, list[timedelta]] = {}
        for tier in TIER_ORDER:
            times = sorted(d for t, v in judged if t.tier is tier and (d := measure(v)) is not None)
            if times:
                found[tier] = times
        return found

    ack_times = per_tier(lambda v: v.time_to_acknowledge)
    ack_times_business = per_tier(lambda v: v.business_to_acknowledge)
    spans_of = customer_waits or {}
    target_verdicts: dict[tuple[Tier, Metric], list[TargetVerdict]] = defaultdict(list)
    for t in tickets:
        spans = spans_of.get(t.ticket_id)
        for target in t.targets:
            if target.metric in TARGET_METRICS:
                verdict = judge_target(target, t, as_of, ticket_clocks[id(t)], spans)
                target_verdicts[(t.tier, target.metric)].append(verdict)
    # Per target: each tier with such clocks, then the total, always (no clocks: no data).
    targets = [
        TargetFigures.of(tier, metric, verdicts)
        for metric in TARGET_METRICS
        for tier, verdicts in [
            *((tier, target_verdicts[(tier, metric)]) for tier in TIER_ORDER),
            (None, [v for tier in TIER_ORDER for v in target_verdicts[(tier, metric)]]),
        ]
        if verdicts or tier is None
    ]
    target_times_business = {
        metric: {
            tier: sorted(
                v.elapsed_business
                for v in target_verdicts[(tier, metric)]
                if v.elapsed_business is not None
            )
            for tier in TIER_ORDER
            if any(v.elapsed_business is not None for v in target_verdicts.get((tier, metric), []))
        }
        for metric in TARGET_METRICS
    }
    waits_of = [
        (t, wait_of(t, as_of, ticket_clocks[id(t)], spans_of.get(t.ticket_id))) for t in tickets
    ]
    waited = {
        tier: [wait for t, wait in waits_of if t.tier is tier and wait[0]] for tier in TIER_ORDER
    }
    waits = [WaitFigures.of(tier, waited[tier]) for tier in TIER_ORDER if waited[tier]] + [
        WaitFigures.of(None, [w for tier in TIER_ORDER for w in waited[tier]])
    ]
    return Report(
        as_of=as_of,
        filters=filters,
        rows=rows,
        breaches=breaches,
        series=build_series(judged, filters),
        ack_times=ack_times,
        ack_times_business=ack_times_business,
        notes=clocks.notes(),
        targets=targets,
        target_times_business=target_times_business,
        waits=waits,
    )


def build_series(judged: Sequence[tuple[TicketOutcome, Verdict]], filters: Filters) -> Series:
    opened = [t.opened_at for t, _ in judged]
    start = filters.opened_from or min(opened, default=None)
    # The range's last instant: --to is exclusive; without it, the newest ticket.
    end = (
        filters.opened_to - timedelta(microseconds=1)
        if filters.opened_to is not None
        else max(opened, default=None)
    )
    if start is None or end is None or end < start:
        return Series("day", [], {})
    unit: BucketUnit = "day" if end - start <= DAILY_BUCKETS_UP_TO else "week"
    step = timedelta(days=1 if unit == "day" else 7)
    buckets: list[tuple[date, str]] = []
    current, last = bucket_of(start, unit), bucket_of(end, unit)
    while current <= last:
        buckets.append((current, bucket_label(current, unit)))
        current += step
    counts: dict[tuple[Tier, date], list[int]] = defaultdict(lambda: [0, 0])
    decided_tiers: set[Tier] = set()
    for t, v in judged:
        if v.met or v.breached:
            decided_tiers.add(t.tier)
            counts[(t.tier, bucket_of(t.opened_at, unit))][0 if v.met else 1] += 1
    tiers = {
        tier: [SeriesPoint(day, label, *counts.get((tier, day), (0, 0))) for day, label in buckets]
        for tier in TIER_ORDER
        if tier in decided_tiers
    }
    return Series(unit, buckets, tiers)


def bucket_of(instant: datetime, unit: BucketUnit) -> date:
    day = instant.astimezone(UTC).date()
    return day if unit == "day" else day - timedelta(days=day.weekday())


def bucket_label(bucket: date, unit: BucketUnit) -> str:
    if unit == "day":
        return bucket.isoformat()
    year, week, _ = bucket.isocalendar()
    return f"{year}-W{week:02d}"
