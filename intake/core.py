"""The one intake core: every path that opens a ticket calls it (the HTTP API, the contact
form, the support mailbox, ``starter.py open`` and ``batch``), so a rule added here holds
on all of them (docs/intake.md).

``prepare`` is pure: it validates the input (the contract's types and the intake rules),
stamps the open time, checks what the path may assert (the customer's contract, the
integration's scope, the contract's agreed intake channels) and resolves the ticket's
plan **once**. ``start`` starts the workflow with search attributes from that plan, or
finds the ticket already there (idempotent on ``ticket_id``), and returns the promise:
the tier, severity, response target and deadline owed. ``intake`` is both in one call.

A requester at a contract's email domain gets the contract's tier only once verified
(``open_unverified``, ``confirm_requester``): until the address is confirmed by the link
mailed to it, the ticket runs as Community and its description says why; confirming
moves the same ticket to the contract (the ``verify_requester`` update), its clock from
the original submission (docs/intake.md#verified-requesters).

Refusals are exceptions that name the field: ``InvalidTicket`` (the input is not a
ticket), ``IntakeRefused`` (a ticket this path may not open), ``PolicyUnavailable`` (no
policy to promise anything from), ``TicketConflict`` (the id belongs to another ticket).
Nothing is started when one is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from contract import names
from contract import search_attributes as sa
from contract.models import (
    MAX_DESCRIPTION,
    UNVERIFIED_CUSTOMER,
    Severity,
    TicketInput,
    TicketPlan,
    TicketState,
    TicketStatus,
    Tier,
    VerifyRequester,
    describe_validation_error,
    intake_problems,
    opened_at_problem,
    ticket_workflow_id,
)
from intake.guards import IntakeGuards
from policy.load import load_policy
from policy.plan import Entitlement, entitlement, resolve_plan
from policy.schema import Policy, PolicyError
from runtime.connection import task_queue

WORKFLOW_TYPE = names.TICKET_WORKFLOW
# Lowest first: an integration may assert a tier up to its scope's ``max_tier``.
TIER_ORDER = (Tier.COMMUNITY, Tier.STANDARD, Tier.PREMIUM, Tier.MISSION_CRITICAL)
# How long a repeated intake waits for the existing ticket's status before it answers from
# the ticket's search attributes instead (no worker, or the ticket still planning).
EXISTING_STATUS_WAIT = timedelta(seconds=3)


# --- refusals --------------------------------------------------------------------------------


class InvalidTicket(ValueError):
    """Input that cannot become a ticket; ``problems`` name each field and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class IntakeRefused(Exception):
    """A valid ticket this path may not open; ``problems`` are ``field: message``.
    ``forbidden`` when the integration may not open tickets for this customer at all
    (HTTP 403); otherwise what it asserts is refused (HTTP 422). ``agreed_channels`` are
    the contract's intake channels when the ticket came through another one."""

    def __init__(
        self,
        problems: list[str],
        *,
        forbidden: bool = False,
        agreed_channels: tuple[str, ...] = (),
    ) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.forbidden = forbidden
        self.agreed_channels = agreed_channels


class PolicyUnavailable(Exception):
    """The policy file cannot be loaded: no promise can be made, so no ticket is opened.
    The message names the file and the problem."""


class TicketConflict(Exception):
    """The ``ticket_id`` already belongs to a different ticket (another customer, or another
    claimed tier for a customer without a contract)."""

    def __init__(self, ticket_id: str) -> None:
        super().__init__(f"ticket_id {ticket_id!r} already belongs to another ticket")
        self.ticket_id = ticket_id


# --- who asks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What an intake integration (an API token) may assert and read.

    ``customers``: the customers it serves by name. A customer with a contract can only be
    served by an integration that lists it. ``others``: it also serves every customer
    *without* a contract. ``max_tier``: the highest tier it may claim for a customer
    without a contract (a contracted customer always gets its contract's tier). The
    default scope is any customer without a contract, at Community only."""

    customers: frozenset[str] = frozenset()
    others: bool = True
    max_tier: Tier = Tier.COMMUNITY

    def describe(self) -> str:
        names = sorted(self.customers)
        if self.others:
            names.append("any customer without a contract")
        return ", ".join(names) or "no customer"

    def serves(self, policy: Policy, customer_id: str | None) -> bool:
        """Whether tickets of ``customer_id`` are this integration's to open and read."""
        if customer_id is None:
            return False
        if customer_id in self.customers:
            return True
        return self.others and customer_id not in policy.customers


DEFAULT_SCOPE = Scope()


@dataclass(frozen=True)
class Source:
    """An intake path. ``channel``: the intake channel the path stands for, set on every
    ticket it opens (the form: ``web_form``, the mailbox: ``email``); None takes the
    ticket's own (API, CLI). ``integration``: the API token's integration, recorded on the
    ticket. ``scope``: what that integration may assert; None for the paths trusted with
    the tier they claim for a customer without a contract (the CLI, which needs Temporal
    access anyway; the form and the mailbox claim no tier)."""

    name: str
    channel: str | None = None
    integration: str | None = None
    scope: Scope | None = None


CLI = Source("cli")
WEB_FORM = Source("web_form", channel="web_form")
MAILBOX = Source("mailbox", channel="email")


def api_source(integration: str, scope: Scope) -> Source:
    return Source("api", integration=integration, scope=scope)


# --- reading input ----------------------------------------------------------------------------


def parse_ticket(data: Any, now: datetime | None = None) -> TicketInput:
    """Validate raw input (a dict from JSON, flags or a form, or a TicketInput) into a ticket
    under every intake rule, or raise InvalidTicket naming each bad field."""
    if isinstance(data, TicketInput):
        data = data.model_dump(exclude_none=True)
    if not isinstance(data, dict):
        raise InvalidTicket([f"(ticket): expected a JSON object, got {type(data).__name__}"])
    internal = [
        f"{name}: {why}"
        for name, why in (
            ("continued", "internal field, not accepted at intake"),
            ("integration", "recorded by intake from the integration's token, not accepted"),
        )
        if name in data
    ]
    if internal:
        raise InvalidTicket(internal)
    try:
        ticket = TicketInput.model_validate(data)
    except ValidationError as err:
        raise InvalidTicket(describe_validation_error(err)) from None
    problems = intake_problems(ticket)
    if ticket.opened_at is not None:
        problem = opened_at_problem(ticket.opened_at, now or datetime.now(UTC))
        if problem:
            problems.append(problem)
    if problems:
        raise InvalidTicket(problems)
    return ticket


def stamped(ticket: TicketInput, now: datetime | None = None) -> TicketInput:
    """The ticket opened now (to the second) unless it says when it was opened."""
    if ticket.opened_at is not None:
        return ticket
    at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return ticket.model_copy(update={"opened_at": at})


def load_json(raw: bytes, where: str) -> Any:
    """``raw`` (UTF-8 JSON) parsed, or InvalidTicket saying what is wrong with ``where``
    (``(body)``, ``(file)``, ``(line)``)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"not valid UTF-8 at byte {err.start}"
    except json.JSONDecodeError as err:
        problem = f"not valid JSON: {err.msg} at character {err.pos}"
    except RecursionError:
        problem = "not valid JSON: nested too deeply"
    except ValueError:  # the only other: an integer beyond Python's digit limit
        problem = f"not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
    raise InvalidTicket([f"{where}: {problem}"])


# --- entitlement ------------------------------------------------------------------------------


def policy_or_refuse(policy: Policy | None = None) -> Policy:
    """``policy``, else the policy file loaded now; PolicyUnavailable when it cannot be."""
    if policy is not None:
        return policy
    try:
        return load_policy()
    except PolicyError as err:
        raise PolicyUnavailable(f"the support policy is unavailable: {err}") from err


def entitle(policy: Policy, ticket: TicketInput, source: Source) -> Entitlement:
    """The tier the ticket is entitled to on this path, or IntakeRefused saying why not.

    A contract's tier wins everywhere; a claim of another tier is refused. An
    integration opens tickets only for the customers its scope serves, and claims at most
    its ``max_tier`` for a customer without a contract. A contract's ``intake_channels``
    (when it lists any) are the only channels its tickets may come through."""
    customer_id, claimed = ticket.customer_id, ticket.tier
    contract = policy.customers.get(customer_id)
    entitled = entitlement(policy, customer_id, claimed)
    scope = source.scope
    if scope is not None and not scope.serves(policy, customer_id):
        who = f"integration {source.integration!r}"
        if contract is not None:
            why = (
                f"customer {customer_id!r} has a support contract and {who} is not registered"
                " for it"
            )
        else:
            why = f"{who} does not open tickets for customer {customer_id!r}"
        raise IntakeRefused([f"customer_id: {why} (it serves: {scope.describe()})"], forbidden=True)
    problems: list[str] = []
    refusal = entitled.refusal(customer_id, claimed)
    if refusal:
        problems.append(refusal)
    elif (
        scope is not None
        and not entitled.contracted
        and claimed is not None
        and TIER_ORDER.index(claimed) > TIER_ORDER.index(scope.max_tier)
    ):
        problems.append(
            f"tier: integration {source.integration!r} may assert at most"
            f" {scope.max_tier.value} for a customer without a contract, not {claimed.value}"
        )
    agreed = tuple(contract.intake_channels) if contract is not None else ()
    if agreed and ticket.intake_channel not in agreed:
        problems.append(
            f"intake_channel: customer {customer_id!r} has agreed to open tickets through"
            f" {', '.join(agreed)}, not {ticket.intake_channel}"
        )
    if problems:
        raise IntakeRefused(
            problems, agreed_channels=agreed if ticket.intake_channel not in agreed else ()
        )
    return entitled


# --- the promise ------------------------------------------------------------------------------


class Promise(BaseModel):
    """What intake answers: the ticket and the response it is owed. ``response_target`` and
    ``response_due_at`` are None when the ticket has no SLA clock (Community, out of
    scope). ``entitlement`` says why the tier is not the one claimed (e.g. ``contract
    example-bank`` when the tier was left out); None when it is as claimed."""

    ticket_id: str
    workflow_id: str
    created: bool
    state: str
    tier: Tier
    severity: Severity
    response_target: timedelta | None
    response_due_at: datetime | None
    entitlement: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A ticket ready to start: ``ticket`` as the workflow gets it (stamped, with the
    entitled tier, the severity and the integration filled in) and the one ``plan`` its
    promise and start-time search attributes come from."""

    ticket: TicketInput
    plan: TicketPlan
    entitled: Entitlement
    source: Source = field(default=CLI)

    def promise(self, created: bool = True) -> Promise:
        plan = self.plan
        return Promise(
            ticket_id=self.ticket.ticket_id,
            workflow_id=self.ticket.workflow_id,
            created=created,
            state=TicketState.OPEN.value,
            tier=plan.tier,
            severity=plan.severity,
            response_target=plan.response_target,
            response_due_at=plan.response_due_at,
            entitlement=plan.entitlement,
        )


def prepare(
    data: Any, source: Source, *, policy: Policy | None = None, now: datetime | None = None
) -> Prepared:
    """Validate, entitle and plan a ticket (nothing is started; see ``start``).

    Raises InvalidTicket, PolicyUnavailable or IntakeRefused. Without ``opened_at`` the
    ticket opens at ``now`` (default: the current time), to the second."""
    ticket = parse_ticket(data, now)
    if source.channel is not None:
        ticket = ticket.model_copy(update={"intake_channel": source.channel})
    ticket = stamped(ticket, now)
    assert ticket.opened_at is not None
    policy = policy_or_refuse(policy)
    entitled = entitle(policy, ticket, source)
    # The one plan: the promise, the search attributes set at start and the input the
    # workflow plans from (tier and severity filled in) all come from it.
    plan = resolve_plan(policy, ticket, None, ticket.opened_at)
    ticket = ticket.model_copy(
        update={"tier": plan.tier, "severity": plan.severity, "integration": source.integration}
    )
    return Prepared(ticket, plan, entitled, source)


def plan_search_attributes(ticket: TicketInput, plan: TicketPlan) -> TypedSearchAttributes:
    """The search attributes a ticket starts with, from its plan: attributes set at start
    are free, while each later upsert is a billed Action."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.SUPPORT_TIER, plan.tier.value),
        SearchAttributePair(sa.SUPPORT_SEVERITY, plan.severity.value),
        SearchAttributePair(sa.TICKET_STATE, TicketState.OPEN.value),
        SearchAttributePair(sa.CUSTOMER_ID, ticket.customer_id),
    ]
    if plan.commercial_sla and plan.response_due_at is not None:
        pairs += [
            SearchAttributePair(sa.RESPONSE_DUE_AT, plan.response_due_at),
            SearchAttributePair(sa.SLA_BREACHED, False),
        ]
    return TypedSearchAttributes(pairs)


async def start(client: Client, prepared: Prepared, queue: str | None = None) -> Promise:
    """Start the prepared ticket, or find it already there: the same ticket again answers
    its promise with ``created`` False; another ticket on the same id is TicketConflict."""
    ticket = prepared.ticket
    try:
        await _start(client, ticket, queue, plan_search_attributes(ticket, prepared.plan))
    except WorkflowAlreadyStartedError:
        return await _existing(client, prepared)
    return prepared.promise(created=True)


async def intake(
    client: Client,
    data: Any,
    source: Source,
    *,
    queue: str | None = None,
    policy: Policy | None = None,
    now: datetime | None = None,
) -> Promise:
    """``prepare`` then ``start``: open a ticket from ``data`` on the path ``source``."""
    return await start(client, prepare(data, source, policy=policy, now=now), queue)


async def _start(
    client: Client, ticket: TicketInput, queue: str | None, attributes: TypedSearchAttributes
) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        WORKFLOW_TYPE,
        ticket,
        id=ticket.workflow_id,
        task_queue=queue or task_queue(),
        # Never a second workflow for a ticket id, even after the first closed.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        search_attributes=attributes,
    )


async def started_input(client: Client, workflow_id: str, run_id: str) -> TicketInput | None:
    """The input the run was started with (its first history event), or None."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events(page_size=1):
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        try:
            [found] = await client.data_converter.decode(list(payloads), [TicketInput])
        except Exception:  # not a ticket this contract can read
            return None
        return found if isinstance(found, TicketInput) else None
    return None


async def _existing(client: Client, prepared: Prepared) -> Promise:
    """The promise of the ticket already started under this id, if it is the same ticket:
    the same customer, and for a customer without a contract the same tier (a contracted
    customer's tier is the contract's, whatever it was when the ticket opened)."""
    ticket, plan = prepared.ticket, prepared.plan
    handle = client.get_workflow_handle(ticket.workflow_id, result_type=TicketStatus)
    description = await handle.describe()
    attributes = description.typed_search_attributes
    started = await started_input(client, ticket.workflow_id, description.run_id)
    tier = attributes.get(sa.SUPPORT_TIER) or (
        (started.tier or Tier.COMMUNITY).value if started else None
    )
    if (
        started is None
        or started.customer_id != ticket.customer_id
        or (not prepared.entitled.contracted and tier != plan.tier.value)
    ):
        raise TicketConflict(ticket.ticket_id)
    status = await _status(handle, description.status)
    if status is not None:
        return _promise_of(status, ticket.workflow_id)
    # No status now (no worker, still planning): what the ticket shows ops.
    execution = description.status or WorkflowExecutionStatus.RUNNING
    state = attributes.get(sa.TICKET_STATE) or execution.name.lower()
    severity = attributes.get(sa.SUPPORT_SEVERITY) or plan.severity.value
    due = attributes.get(sa.RESPONSE_DUE_AT)
    same = (tier, severity) == (plan.tier.value, plan.severity.value)
    return Promise(
        ticket_id=ticket.ticket_id,
        workflow_id=ticket.workflow_id,
        created=False,
        state=state,
        tier=Tier(tier) if tier else plan.tier,
        severity=Severity(severity),
        response_target=plan.response_target if same and due is not None else None,
        response_due_at=due,
        entitlement=plan.entitlement if same else None,
    )


def _promise_of(status: TicketStatus, workflow_id: str) -> Promise:
    """What an existing ticket is owed, from its status."""
    return Promise(
        ticket_id=status.ticket_id,
        workflow_id=workflow_id,
        created=False,
        state=status.state.value,
        tier=status.tier,
        severity=status.severity,
        response_target=status.response_target,
        response_due_at=status.response_due_at,
        entitlement=status.entitlement,
    )


async def _status(
    handle: WorkflowHandle[Any, TicketStatus], execution: WorkflowExecutionStatus | None
) -> TicketStatus | None:
    try:
        if execution is WorkflowExecutionStatus.COMPLETED:
            return await handle.result(follow_runs=False)
        return await handle.query(
            names.STATUS, result_type=TicketStatus, rpc_timeout=EXISTING_STATUS_WAIT
        )
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None


# --- unverified requesters ------------------------------------------------------------------

# The customer of a ticket whose requester has no (verified) contract.
COMMUNITY = UNVERIFIED_CUSTOMER
# How long a confirmation waits for the ticket to take its contract.
VERIFY_WAIT = timedelta(seconds=10)


def unverified_reason(customer_id: str, address: str, how: str) -> str:
    """Why a ticket runs as Community: written into its description and the database."""
    return (
        f"{address} is at an email domain of the support contract of {customer_id!r}, but"
        f" the address is not verified ({how}); the ticket runs as Community until the"
        " requester confirms by the link mailed to that address"
    )


def community_ticket(data: dict[str, Any], reason: str) -> dict[str, Any]:
    """The Community ticket of an unverified requester: customer ``community``, no tier
    claimed, and the reason first in its description (its record says why)."""
    note = f"[Community until confirmed: {reason}]"
    text = str(data.get("description") or "")
    description = f"{note}\n\n{text}" if text else note
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 22] + "\n\n[message truncated]"
    ticket = {**data, "customer_id": COMMUNITY, "description": description}
    ticket.pop("tier", None)
    return ticket


@dataclass(frozen=True)
class Held:
    """A ticket opened as Community until its requester confirms: ``promise`` is the
    Community ticket's, ``contracted`` what it becomes once confirmed, ``token`` the
    confirmation link's token (None when this ticket had one already: nothing to send)."""

    promise: Promise
    contracted: Prepared
    token: str | None
    reason: str


async def open_unverified(
    client: Client,
    guards: IntakeGuards,
    data: dict[str, Any],
    source: Source,
    *,
    customer_id: str,
    address: str,
    reason: str,
    policy: Policy,
    now: datetime | None = None,
    queue: str | None = None,
) -> Held:
    """Open ``data`` for an unverified requester at ``customer_id``'s domain: every rule of
    the contract is checked first (its agreed intake channels: IntakeRefused as for a
    verified requester), then the ticket opens as Community and the contracted ticket is
    kept, with the submission time, until the requester confirms."""
    contracted = prepare({**data, "customer_id": customer_id}, source, policy=policy, now=now)
    submitted = contracted.ticket.opened_at
    assert submitted is not None
    community = community_ticket({**data, "opened_at": submitted}, reason)
    promise = await intake(client, community, source, queue=queue, policy=policy, now=now)
    later = contracted.ticket.model_dump(
        mode="json", exclude_none=True, exclude={"tier", "integration", "continued"}
    )
    later["ticket_id"] = promise.ticket_id
    token = await guards.request_confirmation(
        promise.ticket_id,
        customer_id,
        address,
        submitted,
        later,
        reason,
        (now or datetime.now(UTC)).astimezone(UTC),
    )
    return Held(promise, contracted, token, reason)


@dataclass(frozen=True)
class Confirmed:
    """What a confirmation did. ``outcome``: ``verified`` (the ticket runs under the
    contract now: ``promise`` says what it is owed), ``already`` (confirmed before),
    ``expired``, ``unknown`` (no such link), ``closed`` (the ticket was resolved or closed
    before: nothing to move) or ``refused`` (the contract no longer takes the ticket;
    ``detail`` says why)."""

    outcome: str
    ticket_id: str | None = None
    promise: Promise | None = None
    detail: str = ""


def verify_request_id(token: str) -> str:
    """The one request id of a confirmation link's ``verify_requester``: a second click
    while the first is still queued is applied once."""
    return "verify:" + hashlib.sha256(token.encode()).hexdigest()[:32]


async def confirm_requester(
    client: Client,
    guards: IntakeGuards,
    token: str,
    *,
    policy: Policy | None = None,
    now: datetime | None = None,
) -> Confirmed:
    """The requester opened the confirmation link: the Community ticket takes the contract
    (``verify_requester``), its deadlines planned again from the submission, and the link
    is marked used. Safe to repeat: a link is marked only once the ticket took it.
    RPCError / TimeoutError when Temporal cannot be reached (nothing is marked)."""
    at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    found = await guards.confirmation(token)
    if found is None:
        return Confirmed("unknown")
    if found.moved_to is not None or found.confirmed_at is not None:
        return Confirmed("already", found.moved_to or found.ticket_id)
    if at > found.expires_at:
        return Confirmed("expired", found.ticket_id)
    policy = policy_or_refuse(policy)
    if found.customer_id not in policy.customers:
        return Confirmed(
            "refused",
            found.ticket_id,
            detail=f"customer {found.customer_id!r} no longer has a support contract",
        )
    source = MAILBOX if found.ticket.get("intake_channel") == "email" else WEB_FORM
    try:
        # The contract's rules as they stand now (its agreed intake channels).
        prepare(found.ticket, source, policy=policy, now=at)
    except (InvalidTicket, IntakeRefused) as err:
        return Confirmed("refused", found.ticket_id, detail="; ".join(err.problems))
    workflow_id = ticket_workflow_id(found.ticket_id)
    handle = client.get_workflow_handle(workflow_id, result_type=TicketStatus)
    description = await handle.describe()
    status = await _status(handle, description.status)
    if status is None or status.state not in (TicketState.OPEN, TicketState.ACKNOWLEDGED):
        await guards.confirmed(token, at, None)
        return Confirmed("closed", found.ticket_id)
    verify = VerifyRequester(
        customer_id=found.customer_id,
        address=found.address,
        at=at,
        request_id=verify_request_id(token),
    )
    try:
        async with asyncio.timeout(VERIFY_WAIT.total_seconds()):
            status = await handle.execute_update(
                names.VERIFY_REQUESTER, verify, result_type=TicketStatus
            )
    except WorkflowUpdateFailedError as err:
        detail = str(err.cause.message if isinstance(err.cause, ApplicationError) else err.cause)
        if await _closed_meanwhile(handle):
            await guards.confirmed(token, at, None)
            return Confirmed("closed", found.ticket_id)
        return Confirmed("refused", found.ticket_id, detail=detail)
    await guards.confirmed(token, at, found.ticket_id)
    return Confirmed("verified", found.ticket_id, _promise_of(status, workflow_id))


async def _closed_meanwhile(handle: WorkflowHandle[Any, TicketStatus]) -> bool:
    description = await handle.describe()
    status = await _status(handle, description.status)
    return status is None or status.state not in (TicketState.OPEN, TicketState.ACKNOWLEDGED)


# --- the raw start (tests, drills, benchmarks) ------------------------------------------------


@dataclass
class IntakeResult:
    ticket_id: str
    workflow_id: str
    run_id: str | None
    created: bool
    status: str

    def line(self) -> str:
        if self.created:
            return f"opened ticket {self.ticket_id} (workflow {self.workflow_id})"
        return (
            f"ticket {self.ticket_id} already exists (workflow {self.workflow_id},"
            f" {self.status}); nothing new was started"
        )


def intake_search_attributes(ticket: TicketInput) -> TypedSearchAttributes:
    """The search attributes a raw start of ``ticket`` can set: from its plan when the
    policy loads and the ticket says when it opened, else what the ticket itself says (the
    workflow upserts the rest)."""
    if ticket.opened_at is not None:
        try:
            return plan_search_attributes(
                ticket, resolve_plan(load_policy(), ticket, None, ticket.opened_at)
            )
        except PolicyError:
            pass
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.TICKET_STATE, TicketState.OPEN.value),
        SearchAttributePair(sa.CUSTOMER_ID, ticket.customer_id),
    ]
    if ticket.tier is not None:
        pairs.append(SearchAttributePair(sa.SUPPORT_TIER, ticket.tier.value))
    if ticket.severity is not None:
        pairs.append(SearchAttributePair(sa.SUPPORT_SEVERITY, ticket.severity.value))
    return TypedSearchAttributes(pairs)


async def open_ticket(
    client: Client, ticket: TicketInput, queue: str | None = None
) -> IntakeResult:
    """Start ``ticket`` as it is, as a raw client would (no intake rules, no entitlement
    check: the workflow applies the contract), or report the one already there. For
    tests, drills and benchmarks; intake paths use ``intake``."""
    try:
        handle = await _start(client, ticket, queue, intake_search_attributes(ticket))
        return IntakeResult(
            ticket.ticket_id, ticket.workflow_id, handle.first_execution_run_id, True, "open"
        )
    except WorkflowAlreadyStartedError:
        description = await client.get_workflow_handle(ticket.workflow_id).describe()
        state = "running"
        if description.status and description.status is not WorkflowExecutionStatus.RUNNING:
            state = description.status.name.lower()
        return IntakeResult(ticket.ticket_id, ticket.workflow_id, description.run_id, False, state)
