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
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    if running is not None:
        clauses.append(f"ExecutionStatus {'=' if _flag(running, 'running') else '!='} 'Running'")
    return " AND ".join(clauses)


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
    then sorted. Visibility is eventually consistent: a ticket opened or changed a moment
    ago may show its previous state for a moment."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit: {limit!r} is not a number from 1 to {MAX_LIMIT}")
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
# Tickets per visibility request while the board reads every open ticket.
BOARD_READ_PAGE = 1000
# The most open tickets one board view reads (50 visibility requests at BOARD_READ_PAGE):
# far above any real queue. Tickets with a running deadline are read first, in a query of
# their own, so no number of tickets without a deadline can push one of them past it.
MAX_BOARD_TICKETS = 50_000
MAX_BOARD_PAGE_SIZE = 500


def board_queries() -> tuple[str, str]:
    """The two visibility queries of the board: tickets with a running deadline (open with
    a response deadline, or any with a target's ``SlaNextDeadline``), then every other
    running ticket in a board state (open without a deadline: Community or still planning;
    acknowledged with no target running)."""
    states = ", ".join(f"'{state.value}'" for state in BOARD_STATES)
    base = (
        f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
        f" AND {sa.TICKET_STATE.name} IN ({states})"
    )
    due = sa.RESPONSE_DUE_AT.name
    nearest = sa.SLA_NEXT_DEADLINE.name
    clocked = (
        f"{base} AND (({sa.TICKET_STATE.name} = '{TicketState.OPEN}' AND {due} IS NOT NULL)"
        f" OR {nearest} IS NOT NULL)"
    )
    others = (
        f"{base} AND ({sa.TICKET_STATE.name} != '{TicketState.OPEN}' OR {due} IS NULL)"
        f" AND {nearest} IS NULL"
    )
    return clocked, others


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
    all ``total`` open tickets. ``truncated`` when more than ``MAX_BOARD_TICKETS`` are open
    (the page then orders the ones read: every ticket whose clock runs comes first)."""

    tickets: list[TicketSummary]
    page: int
    pages: int
    per_page: int
    total: int
    truncated: bool


async def _read_all(client: Client, query: str, most: int, read_page: int) -> list[TicketSummary]:
    """Up to ``most`` tickets of ``query`` (one more tells the caller there are more), in
    visibility pages of ``read_page``."""
    found: list[TicketSummary] = []
    if most < 0:
        return found
    async for execution in client.list_workflows(query, page_size=read_page, limit=most + 1):
        found.append(summary_of(execution))
    return found


async def board_page(
    client: Client,
    page: int = 1,
    per_page: int = 50,
    *,
    read_page: int = BOARD_READ_PAGE,
    most: int = MAX_BOARD_TICKETS,
) -> BoardPage:
    """Page ``page`` (from 1; past the last page: the last) of every open or acknowledged
    running ticket, by ``board_order``. Visibility cannot sort (its SQL stores have no
    ORDER BY), so every such ticket is read, in pages of ``read_page``, and sorted here:
    the board's cost grows with the number of open tickets, not with the number opened."""
    for name, value, top in (("page", page, None), ("per_page", per_page, MAX_BOARD_PAGE_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{name}: {value!r} is not a whole number from 1")
        if top is not None and value > top:
            raise InvalidArgument(f"{name}: {value!r} is more than {top}")
    clocked_query, others_query = board_queries()
    clocked = await _read_all(client, clocked_query, most, read_page)
    others = await _read_all(client, others_query, most - len(clocked), read_page)
    found = clocked + others
    truncated = len(found) > most
    ordered = board_order(found[:most])
    pages = max(1, -(-len(ordered) // per_page))
    page = min(page, pages)
    start = (page - 1) * per_page
    return BoardPage(
        tickets=ordered[start : start + per_page],
        page=page,
        pages=pages,
        per_page=per_page,
        total=len(ordered),
        truncated=truncated,
    )


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
