"""Tickets as ops see them: lists from Temporal visibility (the contract's search
attributes), one ticket's ``status``, and the agents' ``acknowledge`` / ``resolve`` signals.

Used by the ops CLI and the HTTP API alike, so nothing here prints or parses flags. Every
value that goes into a visibility query is checked first (enum members, booleans, a
customer id of safe characters): a filter can narrow a list, never rewrite the query.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from contract import names
from contract import search_attributes as sa
from contract.models import (
    TICKET_ID_PATTERN,
    TICKET_WORKFLOW_PREFIX,
    Action,
    Severity,
    TicketState,
    TicketStatus,
    Tier,
    ticket_workflow_id,
)

WORKFLOW_TYPE = names.TICKET_WORKFLOW
# Letters, digits and . _ : @ + - in words separated by single spaces: no quote, backslash
# or control character can reach the query. Ids outside this set cannot be filtered on.
CUSTOMER_FILTER_PATTERN = r"^[A-Za-z0-9._:@+-]+( [A-Za-z0-9._:@+-]+)*$"
MAX_CUSTOMER = 128
MAX_LIMIT = 10_000
# A running ticket answers ``status`` within milliseconds while a worker runs; without one
# the query would wait for a worker indefinitely.
QUERY_TIMEOUT = timedelta(seconds=10)

E = TypeVar("E", bound=StrEnum)


class InvalidArgument(ValueError):
    """A filter value or ticket id that cannot be used; the message names it."""


class TicketError(Exception):
    """A ticket operation that cannot be done; the message says why, in one line."""


class TicketNotFound(TicketError):
    def __init__(self, ticket_id: str) -> None:
        super().__init__(f"no ticket {ticket_id} (no workflow {ticket_workflow_id(ticket_id)})")
        self.ticket_id = ticket_id


class TicketClosed(TicketError):
    def __init__(self, ticket_id: str, state: str | None, execution: str, action: str) -> None:
        shown = f"{state}; " if state else ""
        super().__init__(
            f"ticket {ticket_id} is closed ({shown}workflow {execution}): {action} not sent"
        )
        self.ticket_id = ticket_id
        self.state = state


class TicketUnavailable(TicketError):
    """The ticket exists but its status cannot be read now (no worker, still starting)."""


class TicketSummary(BaseModel):
    """One ticket as visibility knows it. The search attributes may be missing on a
    workflow that failed at start (invalid input): those fields are then None."""

    ticket_id: str
    workflow_id: str
    customer_id: str | None = None
    tier: Tier | None = None
    severity: Severity | None = None
    state: TicketState | None = None
    response_due_at: datetime | None = None
    # None when the tier has no commercial SLA (Community) or before the plan is applied.
    breached: bool | None = None
    # A ticket with next-reply or resolution targets: its nearest running deadline and
    # that target (docs/ticket-life.md#targets); None on other tickets.
    next_deadline: datetime | None = None
    next_metric: str | None = None
    # The workflow's start time. A ticket opened retroactively (intake's ``opened_at``) was
    # opened earlier: its ``status`` has the ticket's own open time.
    opened_at: datetime
    closed: bool
    execution_status: str

    @property
    def clock_running(self) -> bool:
        """Unacknowledged, with a response deadline, on a running workflow."""
        return (
            not self.closed and self.state is TicketState.OPEN and self.response_due_at is not None
        )

    @property
    def deadline(self) -> tuple[datetime, str] | None:
        """The nearest deadline that runs, with its target: ``next_deadline`` on a ticket
        with more targets, else the response deadline while the ticket is open."""
        if self.closed:
            return None
        if self.next_deadline is not None:
            return self.next_deadline, self.next_metric or "first_response"
        if self.state is TicketState.OPEN and self.response_due_at is not None:
            return self.response_due_at, "first_response"
        return None

    def time_to_breach(self, now: datetime) -> timedelta | None:
        """Time left until the response deadline (negative once past), while the clock runs."""
        if not self.clock_running or self.response_due_at is None:
            return None
        return self.response_due_at - now


# --- queries ------------------------------------------------------------------------------


def _check_count(field: str, value: object, most: int) -> None:
    """Refuse ``value`` unless it is a whole number from 1 to ``most`` (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidArgument(f"{field}: {value!r} is not a number from 1 to {most}")


def _member(enum: type[E], value: E | str, field: str) -> E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InvalidArgument(f"{field}: {value!r} is not one of {allowed}") from None


def _flag(value: bool, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field}: {value!r} is not true or false")
    return value


def check_customer(customer: str) -> str:
    if (
        not isinstance(customer, str)
        or len(customer) > MAX_CUSTOMER
        or not re.fullmatch(CUSTOMER_FILTER_PATTERN, customer)
    ):
        raise InvalidArgument(
            f"customer: {customer!r} is not a customer id (letters, digits, . _ : @ + -"
            f" and single inner spaces, at most {MAX_CUSTOMER} characters)"
        )
    return customer


def check_ticket_id(ticket_id: str) -> str:
    if not isinstance(ticket_id, str) or not re.fullmatch(TICKET_ID_PATTERN, ticket_id):
        raise InvalidArgument(
            f"ticket id: {ticket_id!r} is not a ticket id ([A-Za-z0-9._-], 1 to 64 characters)"
        )
    return ticket_id


def build_query(
    *,
    state: TicketState | str | None = None,
    tier: Tier | str | None = None,
    severity: Severity | str | None = None,
    breached: bool | None = None,
    customer: str | None = None,
    running: bool | None = None,
) -> str:
    """The visibility query for tickets matching every given filter (None: any).

    ``running`` True keeps running workflows only, False closed ones only. Raises
    ``InvalidArgument`` for a value that is not a member of its enum, a non-boolean
    ``breached`` / ``running`` or a customer id outside the safe pattern."""
    clauses = [
        f"WorkflowType = '{WORKFLOW_TYPE}'",
        # A ticket that continued as new is listed once, by its latest run.
        "ExecutionStatus != 'ContinuedAsNew'",
    ]
    if state is not None:
        clauses.append(f"{sa.TICKET_STATE.name} = '{_member(TicketState, state, 'state')}'")
    clauses += _attribute_clauses(tier, severity, breached, customer)
    if running is not None:
        clauses.append(f"ExecutionStatus {'=' if _flag(running, 'running') else '!='} 'Running'")
    return " AND ".join(clauses)


def _attribute_clauses(
    tier: Tier | str | None,
    severity: Severity | str | None,
    breached: bool | None,
    customer: str | None,
) -> list[str]:
    """The clauses of the filters on the ticket's other search attributes, each checked."""
    clauses = []
    if tier is not None:
        clauses.append(f"{sa.SUPPORT_TIER.name} = '{_member(Tier, tier, 'tier')}'")
    if severity is not None:
        clauses.append(f"{sa.SUPPORT_SEVERITY.name} = '{_member(Severity, severity, 'severity')}'")
    if breached is not None:
        clauses.append(
            f"{sa.SLA_BREACHED.name} = {'true' if _flag(breached, 'breached') else 'false'}"
        )
    if customer is not None:
        clauses.append(f"{sa.CUSTOMER_ID.name} = '{check_customer(customer)}'")
    return clauses


def _enum_or_none(enum: type[E], value: Any) -> E | None:
    # A value set by some other client that is not in the contract is shown as unknown.
    try:
        return enum(value) if value is not None else None
    except ValueError:
        return None


def summary_of(execution: WorkflowExecution) -> TicketSummary:
    attributes = execution.typed_search_attributes
    status = execution.status or WorkflowExecutionStatus.RUNNING
    return TicketSummary(
        ticket_id=execution.id.removeprefix(TICKET_WORKFLOW_PREFIX),
        workflow_id=execution.id,
        customer_id=attributes.get(sa.CUSTOMER_ID),
        tier=_enum_or_none(Tier, attributes.get(sa.SUPPORT_TIER)),
        severity=_enum_or_none(Severity, attributes.get(sa.SUPPORT_SEVERITY)),
        state=_enum_or_none(TicketState, attributes.get(sa.TICKET_STATE)),
        response_due_at=attributes.get(sa.RESPONSE_DUE_AT),
        breached=attributes.get(sa.SLA_BREACHED),
        next_deadline=attributes.get(sa.SLA_NEXT_DEADLINE),
        next_metric=attributes.get(sa.SLA_NEXT_METRIC),
        opened_at=execution.start_time,
        closed=status is not WorkflowExecutionStatus.RUNNING,
        execution_status=status.name.lower(),
    )


def by_time_to_breach(tickets: list[TicketSummary]) -> list[TicketSummary]:
    """Tickets with a deadline that runs first (the first response while open, or the
    nearest next reply or resolution: ``TicketSummary.deadline``), soonest (or longest
    overdue) first; then the other running tickets, then closed ones, newest first."""

    def key(ticket: TicketSummary) -> tuple[int, float, str]:
        if ticket.deadline is not None:
            return (0, ticket.deadline[0].timestamp(), ticket.ticket_id)
        return (1 if not ticket.closed else 2, -ticket.opened_at.timestamp(), ticket.ticket_id)

    return sorted(tickets, key=key)


async def list_tickets(
    client: Client,
    *,
    state: TicketState | str | None = None,
    tier: Tier | str | None = None,
    severity: Severity | str | None = None,
    breached: bool | None = None,
    customer: str | None = None,
    running: bool | None = None,
    limit: int = 500,
) -> list[TicketSummary]:
    """Tickets matching the filters (see ``build_query``), sorted by time to breach.

    At most ``limit`` executions are read, newest first as visibility returns them, and
    then sorted: a flood of newer tickets pushes older ones out (``read_listing`` ranks
    open tickets across all of them, and says when a listing is cut). Visibility is
    eventually consistent: a ticket opened or changed a moment ago may show its previous
    state for a moment."""
    _check_count("limit", limit, MAX_LIMIT)
    query = build_query(
        state=state,
        tier=tier,
        severity=severity,
        breached=breached,
        customer=customer,
        running=running,
    )
    found = [summary_of(execution) async for execution in client.list_workflows(query, limit=limit)]
    return by_time_to_breach(found)


# --- the agent board ----------------------------------------------------------------------

# The states the board shows: every ticket an agent still has to act on.
BOARD_STATES = (TicketState.OPEN, TicketState.ACKNOWLEDGED)
MAX_BOARD_PAGE_SIZE = 500
# The highest page number the board takes (a page past the last shows the last).
MAX_BOARD_PAGE = 1_000_000
# Tickets per visibility request while the board reads.
BOARD_READ_PAGE = 1000
# A board (or one group of it) of at most this many tickets is read whole, in one
# request, and sorted here; a larger one is read a window at a time (``board_page``).
BOARD_READ_WHOLE = 1000
# The search for a window's bounds starts at now and steps away from it: this far, then
# BOARD_GROWTH times as far each step.
BOARD_FIRST_STEP = timedelta(minutes=1)
BOARD_GROWTH = 8
# Keys closer than this are not told apart: the tickets of one such instant are read
# together (SQLite visibility keeps a custom Datetime to the millisecond: there, those of
# one millisecond).
BOARD_RESOLUTION = timedelta(microseconds=1)
# Counts one bound may take before it settles for the bracket it has (and reads more).
BOARD_MAX_COUNTS = 64
START_TIME = "StartTime"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# The instants a visibility query can name (years 1 to 9999), in microseconds.
_EARLIEST = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) // _US
_LATEST = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH) // _US


def _instant(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


@dataclass(frozen=True)
class BoardKind:
    """Board tickets of one kind: the visibility clause that selects them and the
    Datetime attribute that orders them on the board."""

    where: str
    key: str

    def clause(self, after: int | None = None, upto: int | None = None) -> str:
        """This kind's tickets whose key is after ``after`` and at or before ``upto``
        (microseconds since the epoch; None: unbounded)."""
        parts = [self.where]
        if after is not None:
            parts.append(f"{self.key} > '{_instant(after)}'")
        if upto is not None:
            parts.append(f"{self.key} <= '{_instant(upto)}'")
        return "(" + " AND ".join(parts) + ")"


def board_base(where: str | None = None) -> str:
    """Every ticket the board shows: running, in a board state (by ``TicketState``), and
    matching ``where`` when given (a clause of ``board_filter``, or one the caller built
    from checked values only: it goes into the query as it is)."""
    states = ", ".join(f"'{state.value}'" for state in BOARD_STATES)
    base = (
        f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
        f" AND {sa.TICKET_STATE.name} IN ({states})"
    )
    return f"{base} AND ({where})" if where else base


def board_filter(
    *,
    state: TicketState | str | None = None,
    tier: Tier | str | None = None,
    severity: Severity | str | None = None,
    breached: bool | None = None,
    customer: str | None = None,
) -> str | None:
    """The clause that narrows the board to tickets matching every given filter (None:
    no filter), each value checked as ``build_query`` checks it. ``state`` must be one of
    ``BOARD_STATES``: a ticket in another state is never on the board."""
    clauses = []
    if state is not None:
        member = _member(TicketState, state, "state")
        if member not in BOARD_STATES:
            shown = " or ".join(s.value for s in BOARD_STATES)
            raise InvalidArgument(f"state: {member.value!r} is not on the board ({shown})")
        clauses.append(f"{sa.TICKET_STATE.name} = '{member}'")
    # The listing's own clauses: equalities, which the board's ranges combine with.
    clauses += _attribute_clauses(tier, severity, breached, customer)
    return " AND ".join(clauses) or None


def board_groups() -> tuple[tuple[BoardKind, ...], ...]:
    """The board's tickets in ``board_order``'s groups, in that order, each of kinds whose
    key orders the group: a deadline that runs (``SlaNextDeadline`` where set, else the open
    ticket's ``ResponseDueAt``); open without one, by ``StartTime``; acknowledged with a
    ``ResponseDueAt``, by it; acknowledged without, by ``StartTime``. Every board ticket is
    of exactly one kind."""
    state, due, nearest = sa.TICKET_STATE.name, sa.RESPONSE_DUE_AT.name, sa.SLA_NEXT_DEADLINE.name
    is_open = f"{nearest} IS NULL AND {state} = '{TicketState.OPEN}'"
    acked = f"{nearest} IS NULL AND {state} = '{TicketState.ACKNOWLEDGED}'"
    return (
        (
            BoardKind(f"{nearest} IS NOT NULL", nearest),
            BoardKind(f"{is_open} AND {due} IS NOT NULL", due),
        ),
        (BoardKind(f"{is_open} AND {due} IS NULL", START_TIME),),
        (BoardKind(f"{acked} AND {due} IS NOT NULL", due),),
        (BoardKind(f"{acked} AND {due} IS NULL", START_TIME),),
    )


def board_group_query(
    kinds: tuple[BoardKind, ...],
    after: int | None = None,
    upto: int | None = None,
    where: str | None = None,
) -> str:
    """The board's tickets of ``kinds`` (matching ``where``: ``board_base``) whose key is
    after ``after``, at or before ``upto``."""
    return f"{board_base(where)} AND ({' OR '.join(k.clause(after, upto) for k in kinds)})"


def board_queries() -> tuple[str, str]:
    """The board's tickets whose deadline runs, and the others."""
    clocked, *others = board_groups()
    return board_group_query(clocked), board_group_query(
        tuple(k for group in others for k in group)
    )


def board_order(tickets: list[TicketSummary]) -> list[TicketSummary]:
    """The board's order: tickets with a deadline that runs (the response while open; the
    nearest of a ticket's targets), soonest (or longest overdue) first; then open tickets
    without a deadline, oldest first; then acknowledged ones by deadline, oldest first."""

    def key(ticket: TicketSummary) -> tuple[int, float, float, str]:
        due = ticket.response_due_at.timestamp() if ticket.response_due_at else float("inf")
        opened = ticket.opened_at.timestamp()
        if ticket.deadline is not None:
            return (0, ticket.deadline[0].timestamp(), opened, ticket.ticket_id)
        if ticket.state is TicketState.OPEN:
            return (1, opened, 0.0, ticket.ticket_id)
        return (2, due, opened, ticket.ticket_id)

    return sorted(tickets, key=key)


@dataclass
class BoardPage:
    """One page of the board: ``tickets`` are the page's rows, in ``board_order`` across
    all ``total`` open tickets. To find them ``read`` tickets were read from visibility and
    ``counts`` counts made: bounded by the page size (or ``BOARD_READ_WHOLE``), whatever
    ``total`` is."""

    tickets: list[TicketSummary]
    page: int
    pages: int
    per_page: int
    total: int
    read: int
    counts: int


async def _read(client: Client, query: str) -> list[TicketSummary]:
    return [
        summary_of(execution)
        async for execution in client.list_workflows(query, page_size=BOARD_READ_PAGE)
    ]


class _Ranked:
    """One group of the board in visibility: how many of its ``total`` tickets have their
    key at or before an instant (each count remembered), and the tickets between two."""

    def __init__(
        self, client: Client, kinds: tuple[BoardKind, ...], total: int, where: str | None = None
    ) -> None:
        self.client = client
        self.kinds = kinds
        self.total = total
        self.where = where
        self.counted: dict[int, int] = {}
        self.read = 0

    async def upto(self, us: int) -> int:
        if us not in self.counted:
            query = board_group_query(self.kinds, upto=us, where=self.where)
            self.counted[us] = (await self.client.count_workflows(query)).count
        return self.counted[us]

    async def bound(self, rank: int, *, start: bool, now: int, slack: int) -> int | None:
        """An instant that cuts the group at ``rank`` give or take ``slack`` tickets: for
        the start of a window, one with at most ``rank`` tickets at or before it (at least
        ``rank - slack``); for its end, one with at least ``rank`` (at most ``rank +
        slack``). None: before every ticket (a start) or after every one (an end). Where
        more than ``slack`` tickets share one instant (``BOARD_RESOLUTION``) it cuts beside
        them, and the window holds them all.

        Visibility counts but cannot sort, so the instant is searched: from now, in steps
        growing ``BOARD_GROWTH`` times until the rank is bracketed, then interpolating on
        the counts and halving the bracket in turn."""
        if (start and rank <= 0) or (not start and rank >= self.total):
            return None
        # An instant is below the cut when fewer than ``threshold`` tickets are at or before it.
        threshold = rank + 1 if start else rank
        aim = rank - slack // 2 if start else rank + slack // 2
        step = BOARD_FIRST_STEP // _US
        resolution = max(1, BOARD_RESOLUTION // _US)
        halve = False
        low: int | None = None
        high: int | None = None
        for _ in range(BOARD_MAX_COUNTS):
            low = max((us for us, n in self.counted.items() if n < threshold), default=None)
            high = min((us for us, n in self.counted.items() if n >= threshold), default=None)
            at_low = 0 if low is None else self.counted[low]
            at_high = self.total if high is None else self.counted[high]
            if start and rank - at_low <= slack:
                return low
            if not start and at_high - rank <= slack:
                return high
            if low is None and high is None:
                probe = now
            elif high is None:
                assert low is not None
                if low >= _LATEST:
                    break
                probe = (
                    now if low < now else min(_LATEST, now + max(step, BOARD_GROWTH * (low - now)))
                )
            elif low is None:
                if high <= _EARLIEST:
                    break
                probe = (
                    now
                    if high > now
                    else max(_EARLIEST, now - max(step, BOARD_GROWTH * (now - high)))
                )
            elif high - low <= resolution:
                break
            elif halve:
                probe = (low + high) // 2
            else:
                # Where the counts put the cut, kept off the bracket's ends.
                share = (aim - at_low) / (at_high - at_low)
                margin = max(1, (high - low) // 16)
                probe = min(max(low + int((high - low) * share), low + margin), high - margin)
            if low is not None and high is not None:
                halve = not halve
            await self.upto(probe)
        # Settled (more than ``slack`` tickets in one instant, or out of counts): the side of
        # the bracket that keeps every ticket of the page in the window.
        return low if start else high

    async def rows(
        self, first: int, last: int, *, now: int, slack: int, whole: int
    ) -> list[TicketSummary]:
        """The group's tickets at ranks ``first`` to ``last`` (excluded) in ``board_order``:
        the whole group when it has at most ``whole`` tickets, else the window between two
        searched instants; read, sorted, and cut by the count at the window's start."""
        after = upto = None
        if self.total > whole:
            after = await self.bound(first, start=True, now=now, slack=slack)
            upto = await self.bound(last, start=False, now=now, slack=slack)
        before = 0 if after is None else self.counted[after]
        query = board_group_query(self.kinds, after, upto, self.where)
        found = board_order(await _read(self.client, query))
        self.read = len(found)
        return found[max(0, first - before) : max(0, last - before)]


async def board_page(
    client: Client,
    page: int = 1,
    per_page: int = 50,
    *,
    whole: int = BOARD_READ_WHOLE,
    slack: int | None = None,
    where: str | None = None,
) -> BoardPage:
    """Page ``page`` (from 1; past the last page: the last) of every open or acknowledged
    running ticket (matching ``where``: ``board_base``), by ``board_order``.

    A board of at most ``whole`` tickets is read in one request and sorted here. A larger
    one cannot be (visibility's SQL stores refuse ORDER BY, and reading every ticket grows
    with a flood), but visibility can count and filter on a range of a Datetime attribute:
    each of ``board_groups`` up to the page's end is counted, and in a group the page
    reaches, the instants where the page starts and ends in the group's order are searched
    with counts (``_Ranked.bound``); only the tickets between them are read and sorted. So a
    page reads its own rows and up to ``slack`` (default ``per_page``) more on each side,
    and no number of newer tickets moves an older or more urgent one off the first page."""
    _check_board_numbers(page, per_page, whole, slack)
    total = (await client.count_workflows(board_base(where))).count
    pages = max(1, -(-total // per_page))
    page = min(page, pages)
    first, last = (page - 1) * per_page, min(page * per_page, total)
    rows, read, counts = await _board_rows(
        client, first, last, total, where, whole, per_page if slack is None else slack
    )
    return BoardPage(rows, page, pages, per_page, total, read, counts)


def _check_board_numbers(page: int, per_page: int, whole: int, slack: int | None) -> None:
    for name, value, least, top in (
        ("page", page, 1, MAX_BOARD_PAGE),
        ("per_page", per_page, 1, MAX_BOARD_PAGE_SIZE),
        ("whole", whole, 0, None),
        ("slack", per_page if slack is None else slack, 0, None),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgument(f"{name}: {value!r} is not a whole number from {least}")
        if top is not None and value > top:
            raise InvalidArgument(f"{name}: {value!r} is more than {top}")


async def _board_rows(
    client: Client,
    first: int,
    last: int,
    total: int,
    where: str | None,
    whole: int,
    slack: int,
) -> tuple[list[TicketSummary], int, int]:
    """The board's tickets at ranks ``first`` to ``last`` (excluded) of its ``total`` (one
    count made already), with how many tickets were read and counts made."""
    if total <= whole:
        found = board_order(await _read(client, board_base(where)))
        return found[first:last], len(found), 1
    now = (datetime.now(UTC) - _EPOCH) // _US
    rows: list[TicketSummary] = []
    read, counts, offset = 0, 1, 0
    for kinds in board_groups():
        if offset >= last:
            break
        count = (await client.count_workflows(board_group_query(kinds, where=where))).count
        group = _Ranked(client, kinds, count, where)
        low, high = max(first - offset, 0), min(last - offset, group.total)
        if low < high:
            rows += await group.rows(low, high, now=now, slack=slack, whole=whole)
        read += group.read
        counts += 1 + len(group.counted)
        offset += group.total
    return rows, read, counts


# --- listings: the open tickets ranked, however many newer ones there are ----------------


def _cli_option(name: str, value: object) -> str:
    return f"--{name} {value}"


@dataclass
class Listing:
    """Tickets as ``list``, ``watch`` and ``GET /api/tickets`` show them, and how they were
    read (``read_listing``).

    ``ranked``: every matching running ticket in ``states`` (open, acknowledged: the
    board's) is ranked in ``board_order``, as the board reads it (``board_page``), and
    ``tickets`` are ranks ``first + 1`` onwards, page ``page`` of ``pages`` of ``limit``:
    no number of newer tickets moves an older or more urgent one off the first page.
    Otherwise the newest ``limit`` matching tickets were read, then sorted
    (``by_time_to_breach``); ``unranked`` is the state a view of what needs attention
    (``watch``) was asked for that the board does not hold. ``total``: how many tickets
    match (when the newest were read: counted only when more than ``limit`` do)."""

    tickets: list[TicketSummary]
    ranked: bool
    total: int
    limit: int
    first: int = 0
    page: int = 1
    pages: int = 1
    states: tuple[TicketState, ...] = BOARD_STATES
    unranked: TicketState | None = None

    @property
    def cut(self) -> bool:
        """Fewer tickets are shown than match."""
        return len(self.tickets) < self.total

    @property
    def what(self) -> str:
        """The tickets a ranked listing holds: ``open or acknowledged tickets``."""
        return " or ".join(state.value for state in self.states) + " tickets"

    def notice(
        self, option: Callable[[str, object], str] = _cli_option, *, paged: bool = True
    ) -> str | None:
        """What the reader must be told: that the listing is cut (and how to see the rest:
        the next page, or without ``paged`` a higher limit), or why it is not ranked. None
        when it shows every matching ticket. ``option(name, value)`` spells a choice as the
        surface does (``--page 2``, ``page=2``)."""
        shown = len(self.tickets)
        if self.ranked:
            if not self.cut:
                return None
            text = (
                f"showing {self.first + 1} to {self.first + shown} of {self.total}"
                f" {self.what}, most urgent first"
            )
            if self.first + shown < self.total:
                more = min(self.total, MAX_LIMIT)
                text += (
                    f"; the next ones: {option('page', self.page + 1)}"
                    if paged
                    else f"; {option('limit', more)} shows more"
                )
            return text
        notes = []
        if self.unranked is not None:
            notes.append(
                f"{option('state', self.unranked.value)} is not on the board (open or"
                f" acknowledged tickets only): the newest {self.limit} matching tickets are"
                " read, then sorted, not ranked across all of them"
            )
        if self.cut:
            older = (
                f"showing the newest {shown} of {self.total} matching tickets, then sorted:"
                " older ones are left out"
            )
            if self.unranked is None:
                older += f" ({option('state', 'open')} ranks every open ticket)"
            notes.append(older)
        return "; ".join(notes) or None


async def read_listing(
    client: Client,
    *,
    state: TicketState | str | None = None,
    tier: Tier | str | None = None,
    severity: Severity | str | None = None,
    breached: bool | None = None,
    customer: str | None = None,
    running: bool | None = None,
    limit: int = 500,
    page: int = 1,
    attention: bool = False,
    where: str | None = None,
) -> Listing:
    """The tickets matching the filters (``build_query``), at most ``limit`` of them.

    Open tickets are ranked across all of them: with ``state`` open or acknowledged, and
    for a view of what needs attention (``attention``, ``watch``) without a state, the
    board's running tickets that match are read as the board reads them (``board_page``,
    a window at a time past ``BOARD_READ_WHOLE``) and page ``page`` of ``limit`` is
    returned. Any other listing (every state, or a closed one) reads the newest ``limit``
    executions, as visibility returns them, and sorts them: the ``Listing`` says when more
    match. ``where``: a clause the caller built from checked values only (an integration's
    customers), added to either query."""
    _check_count("limit", limit, MAX_LIMIT)
    _check_count("page", page, MAX_BOARD_PAGE)
    wanted = None if state is None else _member(TicketState, state, "state")
    on_board = wanted in BOARD_STATES if wanted is not None else attention
    ranked = on_board and running is not False
    if page > 1 and not ranked:
        raise InvalidArgument(
            "page: only open or acknowledged tickets are paged (ranked across all of them);"
            " other listings read the newest tickets"
        )
    if ranked:
        clauses = [
            board_filter(
                state=wanted, tier=tier, severity=severity, breached=breached, customer=customer
            ),
            f"({where})" if where else None,
        ]
        clause = " AND ".join(c for c in clauses if c) or None
        total = (await client.count_workflows(board_base(clause))).count
        pages = max(1, -(-total // limit))
        page = min(page, pages)
        first, last = (page - 1) * limit, min(page * limit, total)
        slack = min(limit, MAX_BOARD_PAGE_SIZE)
        rows, _, _ = await _board_rows(client, first, last, total, clause, BOARD_READ_WHOLE, slack)
        states = BOARD_STATES if wanted is None else (wanted,)
        return Listing(rows, True, total, limit, first, page, pages, states)
    query = build_query(
        state=wanted,
        tier=tier,
        severity=severity,
        breached=breached,
        customer=customer,
        running=running,
    )
    if where:
        query += f" AND ({where})"
    found = [summary_of(e) async for e in client.list_workflows(query, limit=limit + 1)]
    total = len(found)
    if total > limit:
        found = found[:limit]
        total = max(total, (await client.count_workflows(query)).count)
    unranked = wanted if attention and not on_board else None
    return Listing(by_time_to_breach(found), False, total, limit, unranked=unranked)


@dataclass(frozen=True)
class Waiting:
    """A ticket that waits on the customer: since when, and what the customer owes."""

    since: datetime
    reason: str | None


# How long the board waits for its rows' statuses: rows not read by then show no wait.
BOARD_STATUS_TIMEOUT = timedelta(seconds=3)


async def waits_on_customer(client: Client, tickets: list[TicketSummary]) -> dict[str, Waiting]:
    """Which of ``tickets`` (one board page: at most ``MAX_BOARD_PAGE_SIZE``) wait on the
    customer, by ticket id. No search attribute says so (a paused clock only drops out of
    ``SlaNextDeadline``, which a ticket without pausable targets never sets), so each
    running ticket's ``status`` is queried, all at once, for ``BOARD_STATUS_TIMEOUT``; a ticket
    whose status cannot be read in time (no worker) is left out, and the board then offers
    its actions as it would without the wait (the workflow still refuses a second wait)."""

    async def read(ticket: TicketSummary) -> tuple[str, TicketStatus]:
        handle = client.get_workflow_handle(ticket.workflow_id)
        status = await handle.query(
            names.STATUS, result_type=TicketStatus, rpc_timeout=BOARD_STATUS_TIMEOUT
        )
        return ticket.ticket_id, status

    reads = [asyncio.ensure_future(read(t)) for t in tickets if not t.closed]
    if not reads:
        return {}
    done, late = await asyncio.wait(reads, timeout=BOARD_STATUS_TIMEOUT.total_seconds())
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    found: dict[str, Waiting] = {}
    for task in done:
        failed = task.exception()
        if isinstance(failed, RPCError | WorkflowQueryFailedError | WorkflowQueryRejectedError):
            continue
        if failed is not None:
            raise failed
        ticket_id, status = task.result()
        if status.awaiting_customer_since is not None:
            found[ticket_id] = Waiting(
                status.awaiting_customer_since, status.awaiting_customer_reason
            )
    return found


# --- one ticket ---------------------------------------------------------------------------


def _workflow_missing(err: RPCError) -> bool:
    """NOT_FOUND for the workflow itself (a missing namespace is also NOT_FOUND)."""
    if err.status is not RPCStatusCode.NOT_FOUND:
        return False
    details = err.grpc_status.details
    return not any(d.type_url.endswith("NamespaceNotFoundFailure") for d in details)


class TicketDetails(BaseModel):
    """A ticket's ``status`` and the state of its workflow (``running``, ``completed``,
    ``terminated``, ...): a terminated ticket's status still says what it was doing."""

    status: TicketStatus
    execution_status: str

    @property
    def closed(self) -> bool:
        return self.execution_status != "running"


# A ticket answers ``status`` only once its SLA plan is applied (a second or so after
# intake): a reader right after intake waits this long for it.
PLANNING_WAIT = timedelta(seconds=5)


async def _planned_status(handle: WorkflowHandle[Any, TicketStatus]) -> TicketStatus:
    """The ``status`` query, waiting up to ``PLANNING_WAIT`` while the ticket is still
    planning its SLA (it refuses the query until its status has its deadline)."""
    deadline = asyncio.get_running_loop().time() + PLANNING_WAIT.total_seconds()
    while True:
        try:
            return await handle.query(
                names.STATUS, result_type=TicketStatus, rpc_timeout=QUERY_TIMEOUT
            )
        except WorkflowQueryFailedError as err:
            if "still planning" not in str(err) or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.2)


async def ticket_status(client: Client, ticket_id: str) -> TicketStatus | None:
    """The ticket's ``status``, or None when there is no such ticket (see ``ticket_details``)."""
    details = await ticket_details(client, ticket_id)
    return None if details is None else details.status


async def ticket_details(client: Client, ticket_id: str) -> TicketDetails | None:
    """The ticket's ``status`` and workflow state, or None when there is no such ticket.

    A running ticket answers the query; a completed one is read from its result (the same
    object in its final state, no worker needed); a terminated or failed one is queried,
    which a worker answers by replaying its history. TicketUnavailable when it cannot
    answer (no worker within ``QUERY_TIMEOUT``, still starting)."""
    handle = client.get_workflow_handle(
        ticket_workflow_id(check_ticket_id(ticket_id)), result_type=TicketStatus
    )
    try:
        description = await handle.describe()
    except RPCError as err:
        if _workflow_missing(err):
            return None
        raise
    execution = description.status or WorkflowExecutionStatus.RUNNING
    if execution is WorkflowExecutionStatus.COMPLETED:
        result = await handle.result(follow_runs=False)
        return TicketDetails(status=result, execution_status=execution.name.lower())
    which = f"ticket {ticket_id}" + (
        ""
        if execution is WorkflowExecutionStatus.RUNNING
        else f" (workflow {execution.name.lower()})"
    )
    try:
        status = await _planned_status(handle)
    except RPCError as err:
        if err.status is RPCStatusCode.DEADLINE_EXCEEDED or "Timeout" in err.message:
            raise TicketUnavailable(
                f"{which} did not answer the status query within"
                f" {QUERY_TIMEOUT.total_seconds():.0f} s: is a worker running?"
            ) from err
        raise TicketUnavailable(f"{which}: status not available: {err.message}") from err
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        # e.g. a ticket still starting, or one that failed before it had a status
        raise TicketUnavailable(f"{which}: status not available: {err}") from err
    return TicketDetails(status=status, execution_status=execution.name.lower())


# The agent actions, by the name of their update (and of the signal raw clients send).
ACTIONS = names.ACTIONS
# How long an action waits for a worker to apply it before it is queued as a signal.
UPDATE_WAIT = timedelta(seconds=10)


class ActionRefused(TicketError):
    """The ticket's validator refused the action: it cannot apply (the message says why)."""


@dataclass
class ActionResult:
    """What became of an agent action: ``status`` is the ticket after it; ``queued`` when no
    worker answered in time and it was sent as a signal instead (the ticket applies it, at
    the instant stamped in the payload, when a worker is back)."""

    ticket_id: str
    action: str
    status: TicketStatus | None
    queued: bool = False


async def apply_action(
    client: Client,
    ticket_id: str,
    action: str,
    payload: BaseModel,
    *,
    wait: timedelta = UPDATE_WAIT,
) -> ActionResult:
    """Apply an agent action to a ticket through its Update (the one way every surface
    acts: API, board, signed links, ops CLI). The workflow's validator refuses what cannot
    apply (``ActionRefused``, nothing reaches the history) and the result is the status
    after the action. When no worker answers within ``wait`` the same payload is sent as
    the signal of the same name, which Temporal keeps until a worker applies it: payloads
    carry the instant the agent acted (``at``), so an outage never turns an in-time ack
    into a breach. TicketNotFound / TicketClosed when there is no running ticket."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    workflow_id = ticket_workflow_id(check_ticket_id(ticket_id))
    handle = client.get_workflow_handle(workflow_id)
    # One id for the update and, if it finds no worker, the signal: the ticket applies it
    # once, whichever arrives first (Action.request_id). A payload that names one keeps it
    # (a link's nonce, a retried request), so a repeat is answered without acting again.
    if isinstance(payload, Action):
        request_id = payload.request_id or uuid.uuid4().hex
        payload = payload.model_copy(update={"request_id": request_id})
    else:
        request_id = uuid.uuid4().hex
    try:
        status = await handle.execute_update(
            action, payload, id=request_id, result_type=TicketStatus, rpc_timeout=wait
        )
        return ActionResult(ticket_id, action, status)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = getattr(cause, "message", None) or str(cause or err)
        raise ActionRefused(message) from err
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        pass  # no worker took it in time: queue it as a signal below
    except RPCError as err:
        if err.status is RPCStatusCode.DEADLINE_EXCEEDED:
            pass
        elif _workflow_missing(err) or "already completed" in err.message:
            raise await _not_running(client, ticket_id, action) from err
        else:
            raise
    try:
        await handle.signal(action, payload)
    except RPCError as err:
        if _workflow_missing(err):
            raise await _not_running(client, ticket_id, action) from err
        raise
    return ActionResult(ticket_id, action, None, queued=True)


async def _not_running(client: Client, ticket_id: str, action: str) -> TicketError:
    handle = client.get_workflow_handle(ticket_workflow_id(ticket_id))
    try:
        description = await handle.describe()
    except RPCError as err:
        if _workflow_missing(err):
            return TicketNotFound(ticket_id)
        raise
    state = description.typed_search_attributes.get(sa.TICKET_STATE)
    execution = (description.status or WorkflowExecutionStatus.COMPLETED).name.lower()
    return TicketClosed(ticket_id, state, execution, action)
