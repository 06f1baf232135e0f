"""The JSON API: intake (``POST /api/tickets``, through the intake core), a ticket's
status, agent actions (the workflow's updates, through ``visibility.apply_action``) and the
list of tickets from Temporal visibility (docs/intake.md).

Every refusal is JSON ``{"error": <code>, "message": <text>}``; a 422 also carries
``"errors": [{"field": ..., "message": ...}]``. Intake authenticates an integration
token (its scope says which customers and tiers it may assert, and which tickets it
reads), agent actions an agent token (the agent's name is recorded on the ticket).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import StringConstraints, ValidationError
from temporalio.client import Client
from temporalio.service import RPCError

from contract import client as visibility
from contract import names
from contract import search_attributes as sa
from contract.models import (
    Acknowledge,
    AgentReply,
    AwaitCustomer,
    ChangeSeverity,
    MarkOutOfScope,
    Message,
    Note,
    Resolve,
    Severity,
    TicketState,
    TicketStatus,
    Tier,
    describe_validation_error,
    ticket_workflow_id,
)
from intake.core import (
    IntakeRefused,
    InvalidTicket,
    PolicyUnavailable,
    Promise,
    Scope,
    TicketConflict,
    api_source,
    intake,
    load_json,
    policy_or_refuse,
)
from policy.schema import Policy
from service.auth import Settings

bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        return JSONResponse(body, status_code=self.status)


def field_errors(problems: list[str]) -> list[dict[str, str]]:
    """``field: message`` strings (the contract's validation wording) as JSON objects."""
    out = []
    for problem in problems:
        field, sep, message = problem.partition(": ")
        out.append({"field": field, "message": message} if sep else {"field": "", "message": field})
    return out


def invalid(problems: list[str], what: str = "ticket") -> ApiError:
    return ApiError(
        422, "invalid", f"the {what} is invalid: " + "; ".join(problems), field_errors(problems)
    )


# --- who is calling ---------------------------------------------------------------------------


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


# kind -> (who is refused with 403, and why)
WRONG_KIND = {
    "intake": ("agent", "an agent token cannot open tickets; use an intake token"),
    "agent": ("intake", "an intake token cannot act on tickets; use an agent token"),
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: an agent, or an intake integration with its scope."""

    name: str
    kind: str  # "agent" | "intake"
    scope: Scope | None = None


def _authenticate(request: Request, credentials: Credentials, kind: str) -> Caller:
    """The caller behind the bearer token, if it is of ``kind`` (intake, agent or any)."""
    settings = _settings(request)
    token = _token(credentials)
    names = {"intake": settings.integration(token), "agent": settings.agent(token)}

    def caller(found_kind: str) -> Caller:
        name = names[found_kind]
        assert name is not None
        scope = settings.scope(name) if found_kind == "intake" else None
        return Caller(name=name, kind=found_kind, scope=scope)

    if kind == "any":
        if names["agent"] is not None:
            return caller("agent")
        if names["intake"] is not None:
            return caller("intake")
        raise ApiError(401, "unauthenticated", "the token is not valid")
    if names[kind] is None:
        other, why = WRONG_KIND[kind]
        if names[other] is not None:
            raise ApiError(403, "forbidden", why)
        raise ApiError(401, "unauthenticated", f"the {kind} token is not valid")
    return caller(kind)


def integration(request: Request, credentials: Credentials) -> Caller:
    """The intake integration the bearer token belongs to."""
    return _authenticate(request, credentials, "intake")


def agent(request: Request, credentials: Credentials) -> str:
    """The agent the bearer token belongs to."""
    return _authenticate(request, credentials, "agent").name


def reader(request: Request, credentials: Credentials) -> Caller:
    """Anyone with a token: agents (every ticket), integrations (their scope's tickets)."""
    return _authenticate(request, credentials, "any")


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "unauthenticated", "send the token as 'Authorization: Bearer <token>'")
    return credentials.credentials


# --- tickets ---------------------------------------------------------------------------------


def refusal(err: InvalidTicket | IntakeRefused | PolicyUnavailable | TicketConflict) -> ApiError:
    """The intake core's refusal as the API answers it."""
    if isinstance(err, InvalidTicket):
        return invalid(err.problems)
    if isinstance(err, IntakeRefused):
        if err.forbidden:
            return ApiError(403, "forbidden", str(err), field_errors(err.problems))
        return ApiError(
            422, "refused", "the ticket is refused: " + str(err), field_errors(err.problems)
        )
    if isinstance(err, PolicyUnavailable):
        return ApiError(503, "policy_unavailable", f"{err}; no ticket is opened until it loads")
    return ApiError(409, "conflict", str(err))


async def open_for(
    client: Client, data: Any, caller: Caller, task_queue: str | None = None
) -> tuple[int, Promise]:
    """Open a ticket for an integration (idempotent on ``ticket_id``): 201 when started,
    200 when the same ticket already exists, 409 when the id belongs to another ticket."""
    assert caller.scope is not None
    try:
        promise = await intake(
            client, data, api_source(caller.name, caller.scope), queue=task_queue
        )
    except (InvalidTicket, IntakeRefused, PolicyUnavailable, TicketConflict) as err:
        raise refusal(err) from None
    except RPCError as err:
        raise ApiError(503, "unavailable", f"Temporal is unavailable: {err.message}") from err
    return (201 if promise.created else 200), promise


def _policy() -> Policy:
    try:
        return policy_or_refuse()
    except PolicyUnavailable as err:
        raise refusal(err) from None


async def details_of(
    client: Client, ticket_id: str, caller: Caller | None = None
) -> visibility.TicketDetails:
    """The ticket's status and whether its workflow still runs; 404 when there is none
    (or, for an integration, when it is not one of its customers' tickets: ids outside its
    scope do not leak), 503 when it cannot answer (no worker)."""
    try:
        if caller is not None and caller.scope is not None:
            await _in_scope(client, ticket_id, caller.scope)
        details = await visibility.ticket_details(client, ticket_id)
    except visibility.InvalidArgument:
        details = None
    except visibility.TicketUnavailable as err:
        raise ApiError(503, "unavailable", str(err)) from err
    if details is None:
        raise ApiError(404, "not_found", f"no ticket {ticket_id!r}")
    return details


async def _in_scope(client: Client, ticket_id: str, scope: Scope) -> None:
    """404 unless the ticket's customer (its search attribute, no worker needed) is one
    the integration serves."""
    handle = client.get_workflow_handle(ticket_workflow_id(visibility.check_ticket_id(ticket_id)))
    try:
        customer = (await handle.describe()).typed_search_attributes.get(sa.CUSTOMER_ID)
    except RPCError:
        customer = None
    if not scope.serves(_policy(), customer):
        raise ApiError(404, "not_found", f"no ticket {ticket_id!r}")


async def status_of(client: Client, ticket_id: str) -> TicketStatus:
    return (await details_of(client, ticket_id)).status


# How long an action waits for a worker to apply it before it is queued as a signal.
ACTION_WAIT = visibility.UPDATE_WAIT
# The API's action paths -> the update (and signal) each one is.
ACTIONS = {
    "ack": names.ACKNOWLEDGE,
    "severity": names.CHANGE_SEVERITY,
    "out-of-scope": names.MARK_OUT_OF_SCOPE,
    "resolve": names.RESOLVE,
    "reply": names.AGENT_REPLY,
    "wait": names.AWAIT_CUSTOMER,
}


def received_now() -> datetime:
    """The instant an agent's action is received: stamped on acknowledge, resolve, reply
    and wait."""
    return datetime.now(UTC)


async def act(
    client: Client, ticket_id: str, action: str, payload: Message
) -> tuple[int, dict[str, Any]]:
    """Apply an agent action through the ticket's update (``visibility.apply_action``):
    200 with the status after it; 202 when no worker answered and it was queued as a
    signal; 404 unknown; 409 when the ticket refuses it (the validator's reason)."""
    update = ACTIONS[action]
    try:
        result = await visibility.apply_action(client, ticket_id, update, payload, wait=ACTION_WAIT)
    except (visibility.InvalidArgument, visibility.TicketNotFound):
        raise ApiError(404, "not_found", f"no ticket {ticket_id!r}") from None
    except (visibility.ActionRefused, visibility.TicketClosed) as err:
        raise ApiError(409, "conflict", str(err)) from err
    except RPCError as err:
        raise ApiError(503, "unavailable", f"Temporal is unavailable: {err.message}") from err
    if result.queued or result.status is None:
        at = getattr(payload, "at", None)
        when = f" at {at.isoformat()}, when it was received" if at is not None else ""
        return 202, {
            "ticket_id": ticket_id,
            "action": action,
            "queued": True,
            "message": f"no worker answered within {ACTION_WAIT.total_seconds():.0f}"
            f" s: the {update} is queued and the ticket applies it{when} once a worker is back",
        }
    return 200, result.status.model_dump(mode="json")


def _model(model: type[Message], data: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid(describe_validation_error(err, top="(body)"), what) from None


class AckBody(Message):
    note: Note | None = None


class ResolveBody(Message):
    """A resolution's, or a reply's, optional summary."""

    summary: Note | None = None


class WaitBody(Message):
    reason: Annotated[Note, StringConstraints(min_length=1)]


router = APIRouter(prefix="/api")
Body_ = Annotated[dict[str, Any], Body(default_factory=dict)]


async def json_body(request: Request) -> Any:
    """The request's JSON, read here so every way it can be wrong is a precise refusal:
    415 when it is not JSON, 422 naming what is wrong with it (413 above the size limit:
    ``service.limits``, before this is reached)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        message = "send the ticket as JSON (Content-Type: application/json)"
        raise ApiError(415, "unsupported_media_type", message)
    try:
        return load_json(await request.body(), "(body)")
    except InvalidTicket as err:
        raise invalid(err.problems) from None


TICKET_BODY = {"type": "object", "description": "the workflow contract's input (TicketInput)"}


@router.post(
    "/tickets",
    status_code=201,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": TICKET_BODY}}}
    },
)
async def post_ticket(
    request: Request, caller: Annotated[Caller, Depends(integration)]
) -> JSONResponse:
    data = await json_body(request)
    status, promise = await open_for(_client(request), data, caller, request.app.state.task_queue)
    return JSONResponse(promise.model_dump(mode="json"), status_code=status)


@router.get("/tickets/{ticket_id}")
async def get_ticket(
    request: Request, ticket_id: str, caller: Annotated[Caller, Depends(reader)]
) -> JSONResponse:
    details = await details_of(_client(request), ticket_id, caller)
    return JSONResponse(details.status.model_dump(mode="json"))


async def _act(request: Request, ticket_id: str, action: str, payload: Message) -> JSONResponse:
    """``act`` for an API route: its status code and body as the response."""
    status, body = await act(_client(request), ticket_id, action, payload)
    return JSONResponse(body, status_code=status)


@router.post("/tickets/{ticket_id}/ack")
async def post_ack(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> JSONResponse:
    at = received_now()
    body = _model(AckBody, data, "acknowledgement")
    ack = Acknowledge(agent=who, note=body.note, at=at)
    return await _act(request, ticket_id, "ack", ack)


@router.post("/tickets/{ticket_id}/severity")
async def post_severity(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> JSONResponse:
    change = _model(ChangeSeverity, {**data, "by": who}, "severity change")
    return await _act(request, ticket_id, "severity", change)


@router.post("/tickets/{ticket_id}/out-of-scope")
async def post_out_of_scope(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> JSONResponse:
    mark = _model(MarkOutOfScope, {**data, "by": who}, "out-of-scope mark")
    return await _act(request, ticket_id, "out-of-scope", mark)


@router.post("/tickets/{ticket_id}/reply")
async def post_reply(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> JSONResponse:
    """The agent answered the customer: the first response if the ticket is still open,
    and the pending next reply (docs/ticket-life.md#targets)."""
    at = received_now()
    body = _model(ResolveBody, data, "reply")
    reply = AgentReply(agent=who, summary=body.summary, at=at)
    return await _act(request, ticket_id, "reply", reply)


@router.post("/tickets/{ticket_id}/wait")
async def post_wait(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> JSONResponse:
    """The ticket waits on the customer (``reason``): its pausable clocks stop until the
    customer replies."""
    at = received_now()
    body = _model(WaitBody, data, "wait")
    wait = AwaitCustomer(by=who, reason=body.reason, at=at)
    return await _act(request, ticket_id, "wait", wait)


@router.post("/tickets/{ticket_id}/resolve")
async def post_resolve(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> JSONResponse:
    at = received_now()
    body = _model(ResolveBody, data, "resolution")
    resolve = Resolve(by=who, summary=body.summary, at=at)
    return await _act(request, ticket_id, "resolve", resolve)


def scope_clause(policy: Policy, scope: Scope) -> str | None:
    """The visibility clause that keeps an integration's list to its customers' tickets:
    its listed customers, or everyone but the contracted customers it does not list.
    Ids that cannot go into a query safely are left to the check after the query."""

    def quoted(ids: set[str] | frozenset[str]) -> str:
        safe = sorted(c for c in ids if _safe_customer(c))
        return ", ".join(f"'{visibility.check_customer(c)}'" for c in safe)

    if scope.others:
        excluded = set(policy.customers) - scope.customers
        return f"{sa.CUSTOMER_ID.name} NOT IN ({quoted(excluded)})" if quoted(excluded) else None
    return f"{sa.CUSTOMER_ID.name} IN ({quoted(scope.customers)})"


def _safe_customer(customer: str) -> bool:
    try:
        visibility.check_customer(customer)
    except visibility.InvalidArgument:
        return False
    return True


def _query_option(name: str, value: object) -> str:
    return f"{name}={value}"


@router.get("/tickets")
async def list_tickets(
    request: Request,
    caller: Annotated[Caller, Depends(reader)],
    state: Annotated[TicketState | None, Query()] = None,
    tier: Annotated[Tier | None, Query()] = None,
    severity: Annotated[Severity | None, Query()] = None,
    breached: Annotated[bool | None, Query()] = None,
    customer: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    page: Annotated[int, Query(ge=1, le=visibility.MAX_BOARD_PAGE)] = 1,
) -> JSONResponse:
    """Tickets from visibility (``visibility.read_listing``). ``state=open`` or
    ``acknowledged``: the running tickets in that state ranked by time to breach across all
    of them, page ``page`` of ``limit``, so no number of newer tickets hides an older one.
    Otherwise the newest ``limit`` tickets, sorted. ``total`` counts the matching tickets,
    ``truncated`` says that fewer are shown, and ``notice`` says so in words."""
    client = _client(request)
    filters: dict[str, Any] = {
        "state": state,
        "tier": tier,
        "severity": severity,
        "breached": breached,
        "customer": customer,
    }
    # An integration lists its own customers' tickets only: filtered in the query (ranked
    # or not), and checked again on what comes back.
    scope, policy, where = caller.scope, None, None
    if scope is not None:
        policy = _policy()
        where = scope_clause(policy, scope)
    try:
        listing = await visibility.read_listing(
            client, **filters, limit=limit, page=page, where=where
        )
    except visibility.InvalidArgument as err:
        raise invalid([str(err)], "listing") from None
    found = listing.tickets
    if scope is not None and policy is not None:
        found = [t for t in found if scope.serves(policy, t.customer_id)]
    return JSONResponse(
        {
            "tickets": [t.model_dump(mode="json") for t in found],
            "ranked": listing.ranked,
            "total": listing.total,
            "page": listing.page,
            "pages": listing.pages,
            "truncated": listing.cut,
            "notice": listing.notice(_query_option),
        }
    )
