"""The HTML pages: the customers' contact form, and the agents' board with acknowledge /
resolve, login, and the confirm step of a signed acknowledge link.

Pages are rendered on the server (jinja2, autoescaped). The form opens tickets through
the intake core (``intake.core``, the same rules as every intake path) and claims no tier:
the contract found by the email's domain decides it. Agents log in with their token into
a server-side session (``service.sessions``: logout and a changed token end it) carried by
a signed, HttpOnly, SameSite=Strict cookie; every form on the board carries that session's
CSRF token, and the sign-in form a token of its own pre-session. A signed link is its own
authorisation: it names one ticket and one agent, expires, and acknowledges at most once.
Board actions and links act through the ticket's updates (``service.api.act``), stamped
with the instant received.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from temporalio.service import RPCError

from contract import client as visibility
from contract.labels import SEVERITY_LABELS, TIER_LABELS
from contract.models import (
    Acknowledge,
    AgentReply,
    AwaitCustomer,
    Resolve,
    TicketState,
    TicketStatus,
)
from intake.core import (
    WEB_FORM,
    Held,
    IntakeRefused,
    InvalidTicket,
    PolicyUnavailable,
    TicketConflict,
    confirm_requester,
    intake,
    open_unverified,
    unverified_reason,
)
from intake.guards import CONFIRMATION_TTL, GuardsUnavailable, IntakeGuards
from policy.load import load_policy
from policy.schema import PolicyError
from runtime.links import AckLinks, LinkError
from runtime.mail import SmtpSettings, confirmation_request
from service.api import ApiError, act, received_now, status_of
from service.auth import Settings
from service.sessions import (
    LOGIN_FORM_MAX_AGE,
    SESSION_MAX_AGE,
    Session,
    SessionStore,
    csrf_valid,
    session_cookie,
    session_id_of,
)
from service.sessions import csrf_token as signed_csrf_token

log = structlog.get_logger("support.service")

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
router = APIRouter()

# Rows per page of the agent board (every open ticket is ordered before paging).
BOARD_PAGE_SIZE = 50

SESSION_COOKIE = "support_agent"
# The sign-in form's pre-session: a random nonce its CSRF token is bound to.
LOGIN_COOKIE = "support_login"
ISSUE_KINDS = {
    "incident": "Something is broken or unavailable",
    "defect": "A feature does not work as documented",
    "question": "A how-to question about the product",
    "consulting": "Advice on architecture or best practice",
    "custom_engineering": "Custom development or integration work",
}
# Form field -> the contract's field (for placing validation errors next to the input).
FORM_FIELDS = {
    "email": "reporter_email",
    "severity": "severity",
    "category": "category",
    "subject": "subject",
    "description": "description",
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def links(request: Request) -> AckLinks:
    s = _settings(request)
    return AckLinks(s.keys, s.link_ttl, s.public_url)


def _store(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


_UNREAD = object()


async def current_session(request: Request) -> Session | None:
    """The request's live session (kept in ``request.state.session``): its cookie is signed
    by a listed key, its row exists and has not expired, and its agent still has the token
    it signed in with."""
    found = getattr(request.state, "session", _UNREAD)
    if found is None or isinstance(found, Session):
        return found
    cookie = request.cookies.get(SESSION_COOKIE)
    session_id = session_id_of(_settings(request).keys, cookie) if cookie else None
    store: SessionStore | None = getattr(request.app.state, "sessions", None)
    session = None
    if session_id is not None and store is not None:
        session = await store.find(session_id, _settings(request).agent_fingerprints)
    request.state.session = session
    return session


async def current_agent(request: Request) -> str | None:
    session = await current_session(request)
    return session.agent if session else None


def csrf_token(request: Request, agent: str) -> str:
    """The CSRF token of the request's session (``current_session`` found it)."""
    session: Session = request.state.session
    assert session.agent == agent
    return signed_csrf_token(_settings(request).keys, "session", session.id)


def csrf_ok(request: Request, token: str) -> bool:
    """Whether ``token`` is the CSRF token of the request's session (signed by any listed
    key): a token of another session, or none, is refused."""
    session = getattr(request.state, "session", None)
    if not isinstance(session, Session):
        return False
    return csrf_valid(_settings(request).keys, "session", session.id, token)


def human(duration: timedelta | None) -> str:
    if duration is None:
        return "no guaranteed response time (Community support, best effort)"
    minutes = int(duration.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{hours} hour{'s' if hours != 1 else ''}" if hours else "",
        f"{minutes} minutes" if minutes else "",
    ]
    return " ".join(p for p in parts if p)


# --- the contact form ------------------------------------------------------------------------


def form_page(
    request: Request,
    values: dict[str, str],
    errors: dict[str, str],
    status_code: int = 200,
    problem: str | None = None,
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "contact.html",
        {
            "values": values,
            "errors": errors,
            "severities": SEVERITY_LABELS,
            "kinds": ISSUE_KINDS,
            "problem": problem,
        },
        status_code=status_code,
    )


UNAVAILABLE = (
    "We cannot open tickets at this moment. Nothing was sent: please try again in a few"
    " minutes (what you wrote is kept below)."
)


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    return RedirectResponse("/support/new", status_code=303)


@router.get("/support/new", response_class=HTMLResponse)
async def contact_form(request: Request) -> HTMLResponse:
    values = {"form_id": uuid.uuid4().hex}
    try:
        values["severity"] = load_policy().default_severity.value
    except PolicyError as err:
        log.error("contact form: the policy is unavailable", error=str(err))
        return form_page(request, values, {}, 503, UNAVAILABLE)
    return form_page(request, values, {})


@router.post("/support/new", response_class=HTMLResponse)
async def contact_submit(
    request: Request,
    form_id: Annotated[str, Form()] = "",
    email: Annotated[str, Form()] = "",
    severity: Annotated[str, Form()] = "",
    category: Annotated[str, Form()] = "",
    subject: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
) -> HTMLResponse:
    values = {
        "form_id": form_id,
        "email": email,
        "severity": severity,
        "category": category,
        "subject": subject,
        "description": description,
    }
    errors: dict[str, str] = {}
    if not email.strip():
        errors["email"] = "Enter the email address we should reply to."
    if not subject.strip():
        errors["subject"] = "Tell us in a line what is wrong."
    if category not in ISSUE_KINDS:
        errors["category"] = "Choose what kind of issue this is."
    if severity and severity not in SEVERITY_LABELS:
        errors["severity"] = "Choose how badly you are affected."
    if not form_id or len(form_id) != 32 or not all(c in "0123456789abcdef" for c in form_id):
        form_id = values["form_id"] = uuid.uuid4().hex
    if errors:
        return form_page(request, values, errors, 422)
    try:
        guards = await intake_guards(request)
        refused = await guards.admit(
            {
                "address": email.strip(),
                "domain": email.strip().rpartition("@")[2],
                "client": request.client.host if request.client else None,
            },
            datetime.now(UTC),
        )
    except Exception as err:
        # GuardsUnavailable and a bad limit setting name the fix; others only their kind.
        named = isinstance(err, (GuardsUnavailable, ValueError))
        why = str(err) if named else type(err).__name__
        log.error("contact form: the database is unavailable", error=why)
        return form_page(request, values, {}, 503, UNAVAILABLE)
    if refused is not None:
        log.warning("contact form: rate limit", scope=refused.limit.scope)
        page = form_page(request, values, {}, 429, f"Nothing was sent: {refused.describe()}.")
        page.headers["Retry-After"] = str(int(refused.retry_after.total_seconds()) + 1)
        return page
    try:
        policy = load_policy()
    except PolicyError as err:
        log.error("contact form: the policy is unavailable", error=str(err))
        return form_page(request, values, {}, 503, UNAVAILABLE)
    customer = policy.customer_for_email(email)
    data: dict[str, Any] = {
        # One form, one ticket: submitting the same form twice opens nothing new.
        "ticket_id": f"W-{form_id[:16]}",
        # No tier claimed: the contract found by the email's domain decides, else Community.
        "customer_id": customer or "community",
        "category": category,
        "subject": subject.strip(),
        "description": description,
        "reporter_email": email.strip(),
    }
    if severity:
        data["severity"] = severity  # else the policy's default severity
    held: Held | None = None
    try:
        if customer is None:
            result = await intake(
                request.app.state.client,
                data,
                WEB_FORM,
                queue=request.app.state.task_queue,
                policy=policy,
            )
        else:
            # Anyone can type an address at a contract's domain: Community until confirmed.
            address = email.strip()
            held = await open_unverified(
                request.app.state.client,
                guards,
                data,
                WEB_FORM,
                customer_id=customer,
                address=address,
                reason=unverified_reason(customer, address, "typed into the contact form"),
                policy=policy,
                queue=request.app.state.task_queue,
            )
            result = held.promise
    except InvalidTicket as err:
        reverse = {v: k for k, v in FORM_FIELDS.items()}
        for problem in err.problems:
            name, _, message = problem.partition(": ")
            errors.setdefault(reverse.get(name, "subject"), message or name)
        return form_page(request, values, errors, 422)
    except IntakeRefused as err:
        return form_page(request, values, {}, 422, form_refusal(err))
    except PolicyUnavailable as err:
        log.error("contact form: the policy is unavailable", error=str(err))
        return form_page(request, values, {}, 503, UNAVAILABLE)
    except TicketConflict:
        values["form_id"] = uuid.uuid4().hex
        problem = "This form could not be sent as it was. Please send it again."
        return form_page(request, values, {}, 409, problem)
    except RPCError as err:
        log.error("contact form: Temporal unavailable", error=str(err))
        return form_page(request, values, {}, 503, UNAVAILABLE)
    pending = None
    if held is not None:
        pending = {
            "tier": TIER_LABELS[held.contracted.plan.tier],
            "email": held.contracted.ticket.reporter_email,
            "sent": await send_confirmation(request, held) if held.token else None,
        }
    return templates.TemplateResponse(
        request,
        "contact_done.html",
        {
            "result": result,
            "tier": TIER_LABELS[result.tier],
            "target": human(result.response_target),
            "due": result.response_due_at,
            "pending": pending,
        },
        status_code=201 if result.created else 200,
    )


# --- verified requesters: the guards and the confirmation link --------------------------------

_GUARDS_LOCK = asyncio.Lock()


async def intake_guards(request: Request) -> IntakeGuards:
    """The form's rate limits and confirmations (``intake.guards``): ``app.state.guards``,
    else the ledger's database of the settings, brought to its head revision once."""
    guards: IntakeGuards | None = getattr(request.app.state, "guards", None)
    if guards is not None:
        return guards
    async with _GUARDS_LOCK:
        guards = getattr(request.app.state, "guards", None)
        if guards is None:
            guards = IntakeGuards.from_url(_settings(request).ledger_url)
            await guards.ready()
            request.app.state.guards = guards
    return guards


def confirmation_url(request: Request, token: str) -> str:
    # In the query as token=: the access log redacts it there (runtime.logs).
    return f"{_settings(request).public_url}/support/confirm?token={token}"


async def send_confirmation(request: Request, held: Held) -> bool:
    """Mail the confirmation link to the address typed into the form; False (logged) when
    it cannot be sent: the ticket still runs, as Community."""
    assert held.token is not None and held.contracted.ticket.reporter_email is not None
    try:
        smtp = SmtpSettings.from_env()
        await smtp.send(
            confirmation_request(
                smtp,
                held.contracted.ticket.reporter_email,
                held.promise.ticket_id,
                confirmation_url(request, held.token),
                CONFIRMATION_TTL,
            )
        )
    except Exception as err:
        log.error(
            "contact form: confirmation not sent",
            ticket_id=held.promise.ticket_id,
            error=type(err).__name__,
        )
        return False
    log.info("contact form: confirmation sent", ticket_id=held.promise.ticket_id)
    return True


CONFIRMED_TEXT = {
    "already": (200, "Already confirmed", "This request was confirmed already."),
    "expired": (
        410,
        "Link expired",
        "This confirmation link has expired. The request stays with Community support;"
        " send a new one through the contact form if you need your contract's support.",
    ),
    "unknown": (404, "Link not valid", "This confirmation link is not valid."),
    "closed": (
        409,
        "Nothing to move",
        "This request was already resolved or closed, so there is nothing to move to your"
        " contract.",
    ),
}


@router.get("/support/confirm", response_class=HTMLResponse)
async def confirm_form(request: Request, token: str = "") -> HTMLResponse:
    """What the link opens: a button (a POST), so that a mail scanner's visit confirms
    nothing."""
    try:
        found = await (await intake_guards(request)).confirmation(token)
    except Exception as err:
        log.error("confirmation: the database is unavailable", error=type(err).__name__)
        return message(request, "Please try again", UNAVAILABLE, 503)
    if found is None:
        status, title, text = CONFIRMED_TEXT["unknown"]
        return message(request, title, text, status)
    return templates.TemplateResponse(
        request,
        "requester_confirm.html",
        {"found": found, "token": token, "done": found.moved_to or found.confirmed_at},
    )


@router.post("/support/confirm", response_class=HTMLResponse)
async def confirm_submit(request: Request, token: Annotated[str, Form()] = "") -> HTMLResponse:
    try:
        done = await confirm_requester(
            request.app.state.client,
            await intake_guards(request),
            token,
        )
    except PolicyUnavailable as err:
        log.error("confirmation: the policy is unavailable", error=str(err))
        return message(request, "Please try again", UNAVAILABLE, 503)
    except (RPCError, TimeoutError) as err:
        log.error("confirmation: Temporal unavailable", error=type(err).__name__)
        return message(request, "Please try again", UNAVAILABLE, 503)
    if done.outcome == "verified" and done.promise is not None:
        promise = done.promise
        due = promise.response_due_at
        by = f", by {due.strftime('%Y-%m-%d %H:%M UTC')}" if due is not None else ""
        text = (
            f"Thank you. Ticket {promise.ticket_id} is now handled under your"
            f" organisation's contract: {TIER_LABELS[promise.tier]}, severity"
            f" {promise.severity.value.upper()}. We respond within"
            f" {human(promise.response_target)}{by}, counted from when you sent it."
        )
        return message(request, "Request confirmed", text)
    if done.outcome == "refused":
        return message(
            request, "Not moved", f"This request cannot move to the contract: {done.detail}", 422
        )
    if done.outcome == "already" and done.ticket_id:
        return message(request, "Already confirmed", f"This request is ticket {done.ticket_id}.")
    status, title, text = CONFIRMED_TEXT[done.outcome]
    return message(request, title, text, status)


CHANNEL_NAMES = {
    "web_form": "this contact form",
    "email": "email to the support address",
    "api": "your organisation's integration with our API",
    "named_contact": "your named contacts",
}


def form_refusal(err: IntakeRefused) -> str:
    """Why the form cannot open the ticket, for the customer: the agreed intake path."""
    if err.agreed_channels:
        paths = ", ".join(CHANNEL_NAMES.get(c, c.replace("_", " ")) for c in err.agreed_channels)
        return (
            "Your organisation's support contract has an agreed way to open tickets, and it is"
            f" not this form: please use {paths}."
        )
    return "This request cannot be opened here: " + "; ".join(err.problems)


# --- the agent board -------------------------------------------------------------------------


def _secure(request: Request) -> bool:
    return _settings(request).public_url.startswith("https://")


def login_page(
    request: Request, next: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    """The sign-in form, with a fresh pre-session: a nonce in a SameSite=Strict cookie and
    the form's CSRF token bound to it."""
    nonce = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "error": error,
            "next": next,
            "csrf": signed_csrf_token(_settings(request).keys, "login", nonce),
        },
        status_code=status_code,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=int(LOGIN_FORM_MAX_AGE.total_seconds()),
        path="/board",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


FORM_EXPIRED = "This sign-in form has expired or was not sent from this site: sign in again."


@router.get("/board/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/board") -> HTMLResponse:
    return login_page(request, next)


@router.post("/board/login", response_model=None)
async def login(
    request: Request,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/board",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not csrf_valid(_settings(request).keys, "login", nonce, csrf):
        return login_page(request, next, FORM_EXPIRED, 403)
    agent = _settings(request).agent(token.strip()) if token.strip() else None
    if agent is None:
        return login_page(request, next, "That agent token is not valid.", 401)
    old = await current_session(request)
    if old is not None:  # signing in again replaces the session the browser had
        await _store(request).end(old.id)
    session = await _store(request).create(agent, token.strip())
    log.info("board: signed in", agent=agent)
    target = next if next.startswith("/board") else "/board"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_cookie(_settings(request).keys, session.id),
        max_age=int(SESSION_MAX_AGE.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/board")
    return response


@router.post("/board/logout", response_model=None)
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session on the server (a copy of its cookie stops working too)."""
    session = await current_session(request)
    if session is not None:
        if not csrf_ok(request, csrf):
            raise ApiError(403, "forbidden", "the form has expired; reload the board")
        await _store(request).end(session.id)
        log.info("board: signed out", agent=session.agent)
    response = RedirectResponse("/board/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, secure=_secure(request), httponly=True)
    return response


@router.get("/board", response_class=HTMLResponse, response_model=None)
async def board(
    request: Request,
    notice: str | None = None,
    page: Annotated[int, Query(ge=1, le=visibility.MAX_BOARD_PAGE)] = 1,
) -> Response:
    agent = await current_agent(request)
    if agent is None:
        return RedirectResponse("/board/login", status_code=303)
    # Every open ticket, by time to breach, whatever was opened since (see board_page).
    shown = await visibility.board_page(request.app.state.client, page, BOARD_PAGE_SIZE)
    # Visibility does not say which tickets wait on the customer: the page's statuses do.
    waiting = await visibility.waits_on_customer(request.app.state.client, shown.tickets)
    return templates.TemplateResponse(
        request,
        "board.html",
        {
            "agent": agent,
            "tickets": shown.tickets,
            "board": shown,
            "waiting": waiting,
            "now": datetime.now(UTC),
            "csrf": csrf_token(request, agent),
            "notice": notice,
            "tiers": TIER_LABELS,
            "metrics": METRIC_LABELS,
        },
    )


# What the board says an action did.
BOARD_DONE = {
    "ack": "Acknowledged",
    "resolve": "Resolved",
    "reply": "Replied to the customer on",
    "wait": "Waiting on the customer:",
}
# How the board names a target (docs/ticket-life.md#targets).
METRIC_LABELS = {
    "first_response": "first response",
    "next_reply": "next reply",
    "resolution": "resolution",
}


@router.post("/board/tickets/{ticket_id}/{action}", response_model=None)
async def board_action(
    request: Request,
    ticket_id: str,
    action: str,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    summary: Annotated[str, Form()] = "",
) -> Response:
    agent = await current_agent(request)
    if agent is None:
        return RedirectResponse("/board/login", status_code=303)
    if not csrf_ok(request, csrf):
        raise ApiError(403, "forbidden", "the form has expired; reload the board")
    at = received_now()
    payload: Acknowledge | Resolve | AgentReply | AwaitCustomer
    if action == "ack":
        payload = Acknowledge(agent=agent, note="from the board", at=at)
    elif action == "resolve":
        payload = Resolve(by=agent, summary="resolved from the board", at=at)
    elif action == "reply":
        try:
            payload = AgentReply(agent=agent, summary=summary.strip() or None, at=at)
        except ValidationError as err:
            return board_notice(f"Not sent: the summary: {err.errors()[0]['msg']}.")
    elif action == "wait":
        try:
            payload = AwaitCustomer(by=agent, reason=reason.strip(), at=at)
        except ValidationError as err:
            if not reason.strip():
                return board_notice("Say what the customer owes (the reason) to set it waiting.")
            return board_notice(f"Not set waiting: the reason: {err.errors()[0]['msg']}.")
    else:
        raise ApiError(404, "not_found", f"no action {action!r}")
    try:
        code, _ = await act(request.app.state.client, ticket_id, action, payload)
        done = BOARD_DONE[action]
        notice = f"{done} {ticket_id}."
        if code == 202:
            notice = (
                f"{done} {ticket_id} as of {at.strftime('%H:%M:%S UTC')}: no worker answered,"
                " so the ticket applies it when one is back."
            )
    except ApiError as err:
        if err.status not in (404, 409):
            raise
        notice = err.message
    return board_notice(notice)


def board_notice(notice: str) -> RedirectResponse:
    """Back to the board, saying ``notice``."""
    return RedirectResponse(f"/board?notice={quote(notice)}", status_code=303)


# --- signed acknowledge links ----------------------------------------------------------------


def message(request: Request, title: str, text: str, status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "message.html", {"title": title, "text": text}, status_code=status_code
    )


def spent(request: Request, status: TicketStatus, status_code: int) -> HTMLResponse | None:
    """The page for a link whose ticket is no longer open (None while it is): a ticket is
    acknowledged once, so a link that acknowledged it, or any other, is spent."""
    if status.state is TicketState.OPEN:
        return None
    if status.acknowledged_by and status.acknowledged_at:
        at = status.acknowledged_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        text = (
            f"Ticket {status.ticket_id} was acknowledged by {status.acknowledged_by} at {at}:"
            " this link is used up (an acknowledge link acknowledges once, while the ticket"
            " is open)."
        )
        return message(request, "Already acknowledged", text, status_code)
    text = f"Ticket {status.ticket_id} is {status.state.value}: there is nothing to acknowledge."
    return message(request, "Nothing to acknowledge", text, status_code)


@router.get("/board/ack/{token}", response_class=HTMLResponse)
async def ack_link(request: Request, token: str) -> HTMLResponse:
    try:
        link = links(request).read(token)
    except LinkError as err:
        return message(request, "Link refused", str(err), 403)
    try:
        status = await status_of(request.app.state.client, link.ticket_id)
    except ApiError as err:
        return message(request, "No such ticket", err.message, err.status)
    page = spent(request, status, 409)
    if page is not None:
        return page
    return templates.TemplateResponse(
        request,
        "ack_confirm.html",
        {"status": status, "agent": link.agent, "token": token, "tiers": TIER_LABELS},
    )


@router.post("/board/ack/{token}", response_class=HTMLResponse)
async def ack_link_confirm(request: Request, token: str) -> HTMLResponse:
    # The acknowledgement counts when the confirm arrived, whatever happens to it after.
    at = received_now()
    try:
        link = links(request).read(token)
    except LinkError as err:
        return message(request, "Link refused", str(err), 403)
    note = "from an acknowledge link" + (f" ({link.nonce})" if link.nonce else "")
    # Each confirm is its own action (apply_action gives it a request id): a link confirmed
    # again is refused by the ticket, so the page says the link is used up.
    ack = Acknowledge(agent=link.agent, note=note, at=at)
    try:
        code, body = await act(request.app.state.client, link.ticket_id, "ack", ack)
    except ApiError as err:
        if err.status == 409:
            try:
                status = await status_of(request.app.state.client, link.ticket_id)
            except ApiError:
                status = None
            page = spent(request, status, 409) if status is not None else None
            if page is not None:
                return page
        return message(request, "Not acknowledged", err.message, err.status)
    stamp = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if code == 202:
        return message(
            request,
            "Acknowledgement queued",
            f"No worker answered just now: ticket {link.ticket_id} records the acknowledgement"
            f" by {link.agent} as of {stamp} as soon as one is back.",
            202,
        )
    # As the ticket records it (a link confirmed again answers with the first time).
    acked_at = datetime.fromisoformat(body.get("acknowledged_at") or at.isoformat())
    by = body.get("acknowledged_by") or link.agent
    return message(
        request,
        "Acknowledged",
        f"Ticket {link.ticket_id} is acknowledged by {by} at"
        f" {acked_at.strftime('%Y-%m-%d %H:%M:%S UTC')}. The escalation stops.",
    )
