"""The JSON API: intake (``POST /api/tickets``), a ticket's status, agent actions (the
workflow's signals) and the list of tickets from Temporal visibility.

Every refusal is JSON ``{"error": <code>, "message": <text>}``; a 422 also carries
``"errors": [{"field": ..., "message": ...}]``. Intake authenticates an integration
token, agent actions an agent token (the agent's name is recorded on the ticket).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from temporalio.client import Client

from service.auth import Settings
from starter import InvalidTicket, load_json, open_ticket, parse_ticket, stamped
from support import visibility
from support.models import (
    Acknowledge,
    ChangeSeverity,
    MarkOutOfScope,
    Message,
    Note,
    Resolve,
    Severity,
    TicketInput,
    TicketState,
    TicketStatus,
    Tier,
    describe_validation_error,
    ticket_workflow_id,
)
from support.policy import PolicyError, load_policy, resolve_plan

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


def _authenticate(request: Request, credentials: Credentials, kind: str) -> str:
    """The name behind the bearer token, if it is of ``kind`` (intake, agent or any)."""
    settings = _settings(request)
    token = _token(credentials)
    names = {"intake": settings.integration(token), "agent": settings.agent(token)}
    if kind == "any":
        name = names["agent"] or names["intake"]
        if name is None:
            raise ApiError(401, "unauthenticated", "the token is not valid")
        return name
    name = names[kind]
    if name is None:
        other, why = WRONG_KIND[kind]
        if names[other] is not None:
            raise ApiError(403, "forbidden", why)
        raise ApiError(401, "unauthenticated", f"the {kind} token is not valid")
    return name


def integration(request: Request, credentials: Credentials) -> str:
    """The intake integration the bearer token belongs to."""
    return _authenticate(request, credentials, "intake")


def agent(request: Request, credentials: Credentials) -> str:
    """The agent the bearer token belongs to."""
    return _authenticate(request, credentials, "agent")


def reader(request: Request, credentials: Credentials) -> str:
    """Anyone with a token: agents, and integrations reading their tickets' status."""
    return _authenticate(request, credentials, "any")


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "unauthenticated", "send the token as 'Authorization: Bearer <token>'")
    return credentials.credentials


# --- tickets ---------------------------------------------------------------------------------


class IntakeResponse(BaseModel):
    ticket_id: str
    workflow_id: str
    created: bool
    state: str
    tier: Tier
    severity: Severity
    response_target: timedelta | None
    response_due_at: datetime | None


def promise(ticket: TicketInput) -> tuple[timedelta | None, datetime | None]:
    """The response target and deadline the policy promises this ticket."""
    assert ticket.opened_at is not None
    plan = resolve_plan(load_policy(), ticket, ticket.severity, ticket.opened_at)
    return plan.response_target, plan.response_due_at


async def intake(
    client: Client, data: Any, task_queue: str | None = None
) -> tuple[int, IntakeResponse]:
    """Validate and open a ticket (idempotent on ``ticket_id``): 201 when started, 200 when
    the same ticket already exists, 409 when the id belongs to a different ticket."""
    try:
        ticket = parse_ticket(data)
    except InvalidTicket as err:
        raise invalid(err.problems) from None
    ticket = stamped(ticket)
    try:
        target, due = promise(ticket)
    except PolicyError as err:
        raise ApiError(503, "policy_unavailable", str(err)) from err
    result = await open_ticket(client, ticket, task_queue)
    if not result.created:
        existing = await status_of(client, ticket.ticket_id)
        if existing.customer_id != ticket.customer_id or existing.tier is not ticket.tier:
            raise ApiError(
                409,
                "conflict",
                f"ticket_id {ticket.ticket_id!r} already belongs to another ticket",
            )
        if existing.policy_version is None:
            # A retry right after the first request: the ticket has not applied its plan
            # yet; the promise is the same computation from its own open time.
            target, due = promise(
                ticket.model_copy(
                    update={"opened_at": existing.opened_at, "severity": existing.severity}
                )
            )
        else:
            target, due = existing.response_target, existing.response_due_at
        return 200, IntakeResponse(
            ticket_id=existing.ticket_id,
            workflow_id=result.workflow_id,
            created=False,
            state=existing.state.value,
            tier=existing.tier,
            severity=existing.severity,
            response_target=target,
            response_due_at=due,
        )
    return 201, IntakeResponse(
        ticket_id=ticket.ticket_id,
        workflow_id=result.workflow_id,
        created=True,
        state="open",
        tier=ticket.tier,
        severity=ticket.severity,
        response_target=target,
        response_due_at=due,
    )


async def details_of(client: Client, ticket_id: str) -> visibility.TicketDetails:
    """The ticket's status and whether its workflow still runs; 404 when there is none,
    503 when it cannot answer (no worker)."""
    try:
        details = await visibility.ticket_details(client, ticket_id)
    except visibility.InvalidArgument:
        details = None
    except visibility.TicketUnavailable as err:
        raise ApiError(503, "unavailable", str(err)) from err
    if details is None:
        raise ApiError(404, "not_found", f"no ticket {ticket_id!r}")
    return details


async def status_of(client: Client, ticket_id: str) -> TicketStatus:
    return (await details_of(client, ticket_id)).status


# What each action needs, and the signal it sends.
ACTIONS: dict[str, tuple[str, tuple[TicketState, ...]]] = {
    "ack": ("acknowledge", (TicketState.OPEN,)),
    "severity": ("change_severity", (TicketState.OPEN, TicketState.ACKNOWLEDGED)),
    "out-of-scope": ("mark_out_of_scope", (TicketState.OPEN, TicketState.ACKNOWLEDGED)),
    "resolve": ("resolve", (TicketState.OPEN, TicketState.ACKNOWLEDGED)),
}


async def act(client: Client, ticket_id: str, action: str, payload: Message) -> dict[str, Any]:
    """Send an agent action to an open ticket; 404 unknown, 409 when it cannot apply."""
    signal, allowed = ACTIONS[action]
    details = await details_of(client, ticket_id)
    status = details.status
    if status.state not in allowed or details.closed:
        detail = f"ticket {ticket_id} is {status.state.value}"
        if status.state is TicketState.ACKNOWLEDGED and status.acknowledged_at:
            detail += f" (by {status.acknowledged_by} at {status.acknowledged_at.isoformat()})"
        raise ApiError(409, "conflict", f"cannot {action}: {detail}")
    await client.get_workflow_handle(ticket_workflow_id(ticket_id)).signal(signal, payload)
    return {"ticket_id": ticket_id, "action": action, "accepted": True}


def _model(model: type[Message], data: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid(describe_validation_error(err, top="(body)"), what) from None


class AckBody(BaseModel):
    note: Note | None = None


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
async def post_ticket(request: Request, name: Annotated[str, Depends(integration)]) -> JSONResponse:
    data = await json_body(request)
    status, result = await intake(_client(request), data, request.app.state.task_queue)
    return JSONResponse(result.model_dump(mode="json"), status_code=status)


@router.get("/tickets/{ticket_id}")
async def get_ticket(
    request: Request, ticket_id: str, name: Annotated[str, Depends(reader)]
) -> JSONResponse:
    status = await status_of(_client(request), ticket_id)
    return JSONResponse(status.model_dump(mode="json"))


@router.post("/tickets/{ticket_id}/ack", status_code=202)
async def post_ack(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> dict[str, Any]:
    body = _model(AckBody, data, "acknowledgement")  # type: ignore[arg-type]
    return await act(_client(request), ticket_id, "ack", Acknowledge(agent=who, note=body.note))


@router.post("/tickets/{ticket_id}/severity", status_code=202)
async def post_severity(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> dict[str, Any]:
    change = _model(ChangeSeverity, {**data, "by": who}, "severity change")
    return await act(_client(request), ticket_id, "severity", change)


@router.post("/tickets/{ticket_id}/out-of-scope", status_code=202)
async def post_out_of_scope(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> dict[str, Any]:
    mark = _model(MarkOutOfScope, {**data, "by": who}, "out-of-scope mark")
    return await act(_client(request), ticket_id, "out-of-scope", mark)


@router.post("/tickets/{ticket_id}/resolve", status_code=202)
async def post_resolve(
    request: Request, ticket_id: str, who: Annotated[str, Depends(agent)], data: Body_
) -> dict[str, Any]:
    resolve = _model(Resolve, {**data, "by": who}, "resolution")
    return await act(_client(request), ticket_id, "resolve", resolve)


@router.get("/tickets")
async def list_tickets(
    request: Request,
    name: Annotated[str, Depends(reader)],
    state: Annotated[TicketState | None, Query()] = None,
    tier: Annotated[Tier | None, Query()] = None,
    severity: Annotated[Severity | None, Query()] = None,
    breached: Annotated[bool | None, Query()] = None,
    customer: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JSONResponse:
    found = await visibility.list_tickets(
        _client(request),
        state=state,
        tier=tier,
        severity=severity,
        breached=breached,
        customer=customer,
        limit=limit,
    )
    return JSONResponse({"tickets": [t.model_dump(mode="json") for t in found]})
