"""Hostile and malformed input on every intake path: the intake CLI as a user runs it
(``starter.py`` in its own process), ``POST /api/tickets`` on uvicorn, and SMTP into the
support mailbox's listener, all in front of the real dev server with a worker, an SLA
ledger and loopback sinks for every notification channel.

Every row of the tables gets its precise answer: exit code 2 and one ``error: field:
message`` line per problem, HTTP 422 with the field path (413, 415 for what is not a JSON
ticket of bounded size), or the mailbox's SMTP answer and its reply mail. No refused row
has a side effect: no workflow, no ledger row, no reply but the expected one; the audit at
the end checks that the task queue holds exactly the tickets the rows meant to open. A
ticket full of injection strings is then rendered by every channel, the agent board, the
acknowledge page and the HTML report, and shown inert. (``test_intake_fuzz.py`` fuzzes
what intake turns raw input into.)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiosmtplib
import httpx
import pytest
import pytest_asyncio
from markupsafe import escape
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from contract.models import TicketInput, ticket_workflow_id
from harness.policy import write_policy
from harness.processes import HarnessError, eventually
from harness.serve import serve
from harness.sinks import Mailbox, Sink, serve_sink, smtp_sink
from intake.guards import WINDOW, IntakeGuards, Limit
from intake.mailbox import DEFAULT_MAX_BYTES, MailboxHandler, listening, parse_mail
from ledger.render import render_html, render_table
from ledger.report import build_report
from runtime.links import AckLinks
from service.app import create_app
from service.auth import Settings, parse_scopes
from service.limits import MAX_REQUEST_BYTES
from tests.conftest import ROOT, Stack, running_stack
from tests.integration.conftest import intake_body

SUPPORT = "support@support.example"
CUSTOMER_SENDER = "dana@bank.example"  # example-bank's contract: Mission Critical
# The MTA whose Authentication-Results the mailbox trusts: the customer's letters passed
# DMARC there (issue 15), and this table sends more than the default rate limits allow.
MTA = "mx.support.example"
NO_LIMITS = tuple(Limit(scope, 10_000, WINDOW) for scope in ("address", "domain", "client"))
DUTY_EMAIL = "duty@support.example"  # the email channel's recipient
INTAKE = "intake-token-0123456789"
AGENT = "agent-ana-0123456789"
SETTINGS = Settings(
    intake_tokens={INTAKE: "hostile-tests"},
    agent_tokens={AGENT: "ana"},
    # Any customer without a contract (the rows' odd customer ids), up to premium.
    intake_scopes=parse_scopes(
        "SUPPORT_INTAKE_SCOPES", "hostile-tests=customers:*;max_tier:premium", {"hostile-tests"}
    ),
    link_secret="hostile-test-secret",
)
# The mailbox's receipt time, and the instant relative open times are taken from.
NOW = datetime.now(UTC).replace(microsecond=0)
H, D = timedelta(hours=1), timedelta(days=1)
T = TypeVar("T")

# The contract's wording, the same on the three paths.
TIER = "Input should be 'community', 'standard', 'premium' or 'mission_critical'"
SEVERITY = "Input should be 'sev1', 'sev2', 'sev3' or 'sev4'"
TEXT = "Input should be a valid string"
NOT_UNICODE = "Input should be a valid string, unable to parse raw data as a unicode string"
REQUIRED = ["ticket_id: Field required", "customer_id: Field required"]
TICKET_ID = "ticket_id: String should match pattern '^[A-Za-z0-9._-]{1,64}$'"
CATEGORY = "category: String should match pattern '^[a-z][a-z0-9_]{0,63}$'"
CHANNEL = "intake_channel: String should match pattern '^[a-z][a-z0-9_]{0,31}$'"
EMAIL = (
    r"""reporter_email: String should match pattern"""
    r""" '^[^@\s<>()\[\]:;\\\"',]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$'"""
)
CONTROL = "must not contain control characters"
INVISIBLE = "must not contain invisible formatting characters"
ONE_LINE = "must be a single line"
NAIVE = "opened_at: must be an aware timestamp with a UTC offset, e.g. 2026-11-26T09:30:00Z"
PAST = "is more than 30 days in the past"
YEAR_10000 = "opened_at: lies outside the years 1 to 9999 in UTC"
NOT_CONTRACTED = (
    "tier: customer 'example-bank' has a mission_critical contract; open the ticket at"
    " mission_critical (or leave tier out), not premium"
)

# Injection strings. The fields of safe characters refuse them (the tables); the free-text
# fields keep them as data, and every renderer shows them inert (the rendering test).
HTML = "<script>alert(1)</script>"
SLACK = "<!channel> <http://evil.example|click>"
SQL = "';DROP TABLE sla_events;--"
ENCODED_CRLF = "=?utf-8?q?=0D=0ABcc:_evil@evil.example?="  # a header break once decoded
INJECTED = {
    "customer_id": f"{HTML} {{{{ 7*7 }}}} {SLACK} [m](http://evil.example) {SQL}",
    "subject": f"{ENCODED_CRLF}\r\nBcc: evil@evil.example {HTML} {{% print(1) %}} {SLACK}"
    f" [m](http://x.example) {SQL}",
    "description": f"{HTML}\n{{{{ config }}}} {{% raw %}}\n{SLACK} <!here>\n*bold* `code`\n{SQL}",
}


def case(name: str, given: object, expected: object) -> Any:
    """A row of a table: what is sent, and what must come back."""
    return pytest.param(given, expected, id=name)


# --- the rig ------------------------------------------------------------------------------


@dataclass
class Rig:
    stack: Stack
    http: httpx.AsyncClient  # the service on uvicorn
    smtp_port: int  # the mailbox's listener
    outbox: Mailbox  # SMTP sink: the mailbox's replies and the email channel's messages
    hooks: Sink  # HTTP sink: the chat, webhook and pager channels
    cli_env: dict[str, str]  # starter.py's environment: this server and task queue
    accepted: set[str] = field(default_factory=set)  # the tickets rows opened on purpose

    def opened(self, ticket_id: str) -> None:
        self.accepted.add(ticket_id)
        self.stack.opened.append(ticket_workflow_id(ticket_id))


def sink_policy(directory: Path, hooks: Sink) -> Path:
    """The default policy with the premium intake step sent on every channel kind."""
    channels = {
        "support-queue": [{"type": "chat", "url": f"{hooks.url}/chat"}],
        "duty-engineer": [{"type": "webhook", "url": f"{hooks.url}/webhook"}],
        "support-lead": [{"type": "pager", "url": f"{hooks.url}/pager", "routing_key": "rk"}],
        "duty-manager": [{"type": "email", "to": [DUTY_EMAIL]}],
    }

    def intake_to_all(policy: dict[str, Any]) -> None:
        policy["tiers"]["premium"]["ladder"][0]["targets"] = list(channels)

    return write_policy(directory, intake_to_all, targets=channels)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rig(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    directory = tmp_path_factory.mktemp("hostile")
    with smtp_sink() as outbox, serve_sink() as hooks, pytest.MonkeyPatch.context() as env:
        env.setenv("SUPPORT_POLICY_FILE", str(sink_policy(directory, hooks)))
        env.setenv("SUPPORT_SMTP_HOST", outbox.host)
        env.setenv("SUPPORT_SMTP_PORT", str(outbox.port))
        env.setenv("SUPPORT_SMTP_SECURITY", "none")
        async with running_stack(dev_server, directory / "ledger.sqlite3") as stack:
            app = create_app(client=stack.client, settings=SETTINGS, queue=stack.task_queue)
            guards = IntakeGuards(stack.ledger.engine, limits=NO_LIMITS)
            app.state.guards = guards
            handler = MailboxHandler(
                stack.client,
                address=SUPPORT,
                queue=stack.task_queue,
                clock=lambda: NOW,
                guards=guards,
                trusted_authserv_id=MTA,
            )
            cli_env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
            cli_env["TEMPORAL_ADDRESS"] = dev_server.client.service_client.config.target_host
            cli_env["SUPPORT_TASK_QUEUE"] = stack.task_queue
            async with (
                serve(app) as url,
                listening(handler) as listener,
                httpx.AsyncClient(base_url=url, timeout=30) as http,
            ):
                port = listener.sockets[0].getsockname()[1]
                yield Rig(stack, http, port, outbox, hooks, cli_env)


def new_id() -> str:
    return f"HI-{uuid.uuid4().hex[:12]}"


DROP = object()  # a change that removes the field
RAW_ID = "HI-raw"  # the ticket id in raw rows (so that offsets in their errors are fixed)


def raw_ticket(tail: bytes = b"") -> bytes:
    """A valid ticket's JSON with ``tail`` as further raw members."""
    head = b'{"ticket_id": "' + RAW_ID.encode() + b'", "customer_id": "acme", "tier": "premium"'
    return head + tail + b"}"


def ticket_json(change: dict[str, Any] | bytes, ticket_id: str) -> tuple[bytes, str]:
    """(the valid ticket changed by ``change`` as JSON, or the raw bytes ``change``; the
    ticket id a start would have used)."""
    if isinstance(change, bytes):
        return change, RAW_ID
    data = {k: v for k, v in (intake_body(ticket_id) | change).items() if v is not DROP}
    would_be = data.get("ticket_id")
    return json.dumps(data).encode(), would_be if isinstance(would_be, str) else ticket_id


async def assert_untouched(rig: Rig, ticket_id: str) -> None:
    """Nothing exists for ``ticket_id``: no workflow (describe is strongly consistent, and a
    start answers only once the server has the workflow), no ledger event, no ledger row."""
    with pytest.raises(RPCError) as missing:
        await rig.stack.client.get_workflow_handle(ticket_workflow_id(ticket_id)).describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND
    assert await rig.stack.ledger.events(ticket_id) == []
    assert await rig.stack.ledger.outcome(ticket_id) is None


async def started(rig: Rig, ticket_id: str) -> tuple[TicketInput, str]:
    """The input the ticket's workflow was started with, and its current run."""
    handle = rig.stack.client.get_workflow_handle(ticket_workflow_id(ticket_id))
    run_id = (await handle.describe()).run_id
    async for event in handle.fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        [ticket] = await rig.stack.client.data_converter.decode(list(payloads), [TicketInput])
        assert isinstance(ticket, TicketInput)
        return ticket, run_id
    raise AssertionError(f"{ticket_id}: no history")


# --- API: POST /api/tickets -----------------------------------------------------------------

API_CASES = [
    # missing required fields, wrong types, not an object
    case("no-ticket-id", {"ticket_id": DROP}, ["ticket_id: Field required"]),
    case("no-customer-id", {"customer_id": DROP}, ["customer_id: Field required"]),
    case("empty-object", b"{}", REQUIRED),
    case("ticket-id-number", {"ticket_id": 1001}, [f"ticket_id: {TEXT}"]),
    case("customer-id-null", {"customer_id": None}, [f"customer_id: {TEXT}"]),
    case("tier-number", {"tier": 1}, [f"tier: {TIER}"]),
    case("severity-list", {"severity": ["sev1"]}, [f"severity: {SEVERITY}"]),
    case("subject-number", {"subject": 500}, [f"subject: {TEXT}"]),
    case("description-object", {"description": {"text": "x"}}, [f"description: {TEXT}"]),
    case("email-list", {"reporter_email": ["a@b.example"]}, [f"reporter_email: {TEXT}"]),
    case("opened-at-bool", {"opened_at": True}, ["opened_at: Input should be a valid datetime"]),
    case(
        "opened-at-words",
        {"opened_at": "yesterday"},
        ["opened_at: Input should be a valid datetime or date, input is too short"],
    ),
    case("body-array", b'["T-1"]', ["(ticket): expected a JSON object, got list"]),
    case("body-null", b"null", ["(ticket): expected a JSON object, got NoneType"]),
    # unknown tier / severity, unknown and internal fields
    case("tier-unknown", {"tier": "gold"}, [f"tier: {TIER}"]),
    case("tier-capitalised", {"tier": "Premium"}, [f"tier: {TIER}"]),
    case("severity-unknown", {"severity": "sev0"}, [f"severity: {SEVERITY}"]),
    case("unknown-field", {"priority": "urgent"}, ["priority: unknown field"]),
    case(
        "internal-field", {"continued": {}}, ["continued: internal field, not accepted at intake"]
    ),
    case(
        "integration-field",
        {"integration": "other-portal"},
        ["integration: recorded by intake from the integration's token, not accepted"],
    ),
    # one past each limit
    case("ticket-id-65", {"ticket_id": "T" * 65}, [TICKET_ID]),
    case("ticket-id-empty", {"ticket_id": ""}, [TICKET_ID]),
    case(
        "customer-id-129",
        {"customer_id": "c" * 129},
        ["customer_id: String should have at most 128 characters"],
    ),
    case(
        "customer-id-blank",
        {"customer_id": " \t "},
        ["customer_id: String should have at least 1 character"],
    ),
    case(
        "subject-201",
        {"subject": "s" * 201},
        ["subject: String should have at most 200 characters"],
    ),
    case(
        "description-20001",
        {"description": "d" * 20_001},
        ["description: String should have at most 20000 characters"],
    ),
    case(
        "reporter-email-255",
        {"reporter_email": "a" * 242 + "@acme.example"},
        ["reporter_email: String should have at most 254 characters"],
    ),
    case("category-65", {"category": "c" * 65}, [CATEGORY]),
    case("intake-channel-33", {"intake_channel": "c" * 33}, [CHANNEL]),
    # control characters, line breaks, bytes that are not UTF-8 or not JSON
    case("customer-id-escape", {"customer_id": "acme\x1b[31m"}, [f"customer_id: {CONTROL}"]),
    case("subject-nul", {"subject": "disk\x00full"}, [f"subject: {CONTROL}"]),
    case("description-bell", {"description": "ring\x07"}, [f"description: {CONTROL}"]),
    case("subject-c1-nel", {"subject": "next\x85line"}, [f"subject: {CONTROL}"]),
    case("customer-id-bidi", {"customer_id": "acme\u202egnp.exe"}, [f"customer_id: {CONTROL}"]),
    case(
        "customer-id-zero-width",
        {"customer_id": "acme\u200b"},
        [f"customer_id: {INVISIBLE} (U+200B)"],
    ),
    case(
        "email-direction-mark",
        {"reporter_email": "ops\u200e@acme.example"},
        [f"reporter_email: {INVISIBLE} (U+200E)"],
    ),
    # the pattern's \s does not cover the C0 separators U+001C-U+001F (found by the fuzz test)
    case(
        "email-unit-separator",
        {"reporter_email": "a\x1fb@acme.example"},
        [f"reporter_email: {CONTROL}"],
    ),
    case("customer-id-newline", {"customer_id": "acme\nBcc: x"}, [f"customer_id: {ONE_LINE}"]),
    case("customer-id-u2028", {"customer_id": "acme\u2028x"}, [f"customer_id: {ONE_LINE}"]),
    case("subject-lone-surrogate", {"subject": "\ud800"}, [f"subject: {NOT_UNICODE}"]),
    case(
        "body-invalid-utf8",
        raw_ticket(b', "subject": "caf\xe9"'),
        ["(body): not valid UTF-8 at byte 81"],
    ),
    case(
        "body-not-json",
        b"ticket_id=T-1",
        ["(body): not valid JSON: Expecting value at character 0"],
    ),
    case(
        "body-trailing-data",
        raw_ticket() + b" {}",
        ["(body): not valid JSON: Extra data at character 66"],
    ),
    case(
        "body-nested-too-deep",
        b"[" * 100_000 + b"]" * 100_000,
        ["(body): not valid JSON: nested too deeply"],
    ),
    case(
        "body-number-of-5000-digits",
        raw_ticket(b', "severity": ' + b"9" * 5000),
        ["(body): not valid JSON: a number has more than 4300 digits"],
    ),
    # injection strings in the fields of safe characters
    case("ticket-id-html", {"ticket_id": HTML}, [TICKET_ID]),
    case("ticket-id-sql", {"ticket_id": f"T-1{SQL}"}, [TICKET_ID]),
    case("ticket-id-path", {"ticket_id": "../../etc/passwd"}, [TICKET_ID]),
    case("category-template", {"category": "{{ 7*7 }}"}, [CATEGORY]),
    case("intake-channel-slack", {"intake_channel": "<!channel>"}, [CHANNEL]),
    case("email-crlf", {"reporter_email": "ops@acme.example\r\nBcc: e@evil.example"}, [EMAIL]),
    case(
        "email-markdown-link",
        {"reporter_email": "[ops](http://evil.example)@acme.example"},
        [EMAIL],
    ),
    case(
        "email-encoded-word",
        {"reporter_email": "=?utf-8?q?x=0D=0ABcc=3A_evil=40evil.example?=@acme.example"},
        ["reporter_email: must not contain an RFC 2047 encoded word ('=?')"],
    ),
    # retroactive open times
    case(
        "opened-at-future",
        {"opened_at": (NOW + H).isoformat()},
        [f"opened_at: {(NOW + H).isoformat()} lies in the future"],
    ),
    case(
        "opened-at-31-days-ago",
        {"opened_at": (NOW - 31 * D).isoformat()},
        [f"opened_at: {(NOW - 31 * D).isoformat()} {PAST}"],
    ),
    case(
        "opened-at-1900",
        {"opened_at": "1900-01-01T00:00:00Z"},
        [f"opened_at: 1900-01-01T00:00:00+00:00 {PAST}"],
    ),
    case("opened-at-epoch", {"opened_at": 0}, [f"opened_at: 1970-01-01T00:00:00+00:00 {PAST}"]),
    case("opened-at-naive", {"opened_at": "2026-11-26T09:30:00"}, [NAIVE]),
    case("opened-at-year-10000", {"opened_at": "9999-12-31T23:59:59-01:00"}, [YEAR_10000]),
]


async def post(rig: Rig, body: bytes | AsyncIterator[bytes], content_type: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {INTAKE}", "Content-Type": content_type}
    return await rig.http.post("/api/tickets", content=body, headers=headers)


@pytest.mark.parametrize(("change", "problems"), API_CASES)
async def test_api_answers_422_naming_the_field_and_starts_nothing(
    rig: Rig, change: dict[str, Any] | bytes, problems: list[str]
) -> None:
    body, would_be = ticket_json(change, new_id())
    response = await post(rig, body, "application/json")
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "invalid",
        "message": "the ticket is invalid: " + "; ".join(problems),
        "errors": [
            dict(zip(("field", "message"), p.split(": ", 1), strict=True)) for p in problems
        ],
    }
    await assert_untouched(rig, would_be)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    """A body sent chunked: it declares no length."""
    for start in range(0, len(data), 65_536):
        yield data[start : start + 65_536]


TOO_LARGE = (413, "too_large", f"the request body is larger than {MAX_REQUEST_BYTES} bytes")
NOT_JSON = (
    415,
    "unsupported_media_type",
    "send the ticket as JSON (Content-Type: application/json)",
)
API_REFUSALS = [
    case(
        "body-over-size-limit",
        (raw_ticket(b', "description": "' + b"d" * MAX_REQUEST_BYTES + b'"'), "application/json"),
        TOO_LARGE,
    ),
    case("body-declared-text", (raw_ticket(), "text/plain"), NOT_JSON),
    case(
        "body-form-encoded",
        (b"ticket_id=HI-raw&customer_id=acme&tier=premium", "application/x-www-form-urlencoded"),
        NOT_JSON,
    ),
]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
@pytest.mark.parametrize(("request_", "refusal"), API_REFUSALS)
async def test_api_refuses_what_is_not_a_json_ticket_of_bounded_size(
    rig: Rig, request_: tuple[bytes, str], refusal: tuple[int, str, str], chunked: bool
) -> None:
    body, content_type = request_
    response = await post(rig, chunks(body) if chunked else body, content_type)
    status, code, message = refusal
    assert (response.status_code, response.json()) == (status, {"error": code, "message": message})
    await assert_untouched(rig, RAW_ID)


# --- the public contact form (/support/new) --------------------------------------------------

FORM = {
    "email": "reporter@unknown-domain.example",
    "severity": "sev3",
    "category": "incident",
    "subject": "Dashboard is blank",
    "description": "Since this morning.",
}
FORM_CASES = [
    case("form-no-subject", {"subject": "  "}, ("subject", "Tell us in a line what is wrong.")),
    case("form-no-email", {"email": ""}, ("email", "Enter the email address we should reply to.")),
    case(
        "form-severity-sev9",
        {"severity": "sev9"},
        ("severity", "Choose how badly you are affected."),
    ),
    case(
        "form-category-unknown",
        {"category": "refund"},
        ("category", "Choose what kind of issue this is."),
    ),
    case("form-subject-escape", {"subject": "x\x1b[2J"}, ("subject", CONTROL)),
    case(
        "form-subject-201",
        {"subject": "s" * 201},
        ("subject", "String should have at most 200 characters"),
    ),
    case(
        "form-description-20001",
        {"description": "d" * 20_001},
        ("description", "String should have at most 20000 characters"),
    ),
    case(
        "form-email-no-domain",
        {"email": "reporter@localhost"},
        ("email", "String should match pattern"),
    ),
    case("form-email-zero-width", {"email": "ops\u200b@acme.example"}, ("email", INVISIBLE)),
    case(
        "form-email-header-injection",
        {"email": "a@b.example\nBcc: c@d.example"},
        ("email", "String should match pattern"),
    ),
]


@pytest.mark.parametrize(("change", "refusal"), FORM_CASES)
async def test_contact_form_shows_the_error_at_its_field_and_starts_nothing(
    rig: Rig, change: dict[str, str], refusal: tuple[str, str]
) -> None:
    form_id = uuid.uuid4().hex
    response = await rig.http.post("/support/new", data={**FORM, **change, "form_id": form_id})
    field, message = refusal
    assert response.status_code == 422, response.text
    shown = re.search(rf'<div class="error" id="{field}-error">([^<]*)</div>', response.text)
    assert shown is not None and str(escape(message)) in shown.group(1), response.text
    assert len(re.findall(r'class="error"', response.text)) == 1, "the error at its field only"
    await assert_untouched(rig, f"W-{form_id[:16]}")


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
async def test_contact_form_refuses_a_body_over_the_limit_unread(rig: Rig, chunked: bool) -> None:
    form_id = uuid.uuid4().hex
    body = urlencode({**FORM, "form_id": form_id, "description": "d" * MAX_REQUEST_BYTES})
    content = chunks(body.encode()) if chunked else body.encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await rig.http.post("/support/new", content=content, headers=headers)
    assert response.status_code == 413
    assert "The form can take at most 256 KiB" in response.text
    await assert_untouched(rig, f"W-{form_id[:16]}")


# --- CLI: starter.py open / batch ----------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """``starter.py open`` with the valid ticket's flags, ``flags`` added (the last of a
    repeated flag wins; bytes for what no text can hold) and ``drop`` left out."""

    flags: tuple[str | bytes, ...] = ()
    drop: str | None = None

    def args(self, ticket_id: str) -> list[str | bytes]:
        base = {
            "--ticket-id": ticket_id,
            "--customer-id": "acme",
            "--tier": "premium",
            "--severity": "sev2",
            "--subject": "Checkout API returns 500",
        }
        pairs = [
            item for flag, value in base.items() if flag != self.drop for item in (flag, value)
        ]
        return ["open", *pairs, *self.flags]

    def ticket_id(self, fallback: str) -> str:
        """The id a start would have used: the last ``--ticket-id``."""
        flags = list(self.flags)
        ids = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--ticket-id"]
        return str(ids[-1]) if ids else fallback


def option(field_name: str) -> str:
    """The intake CLI's flag for a field."""
    return "--" + field_name.replace("_", "-")


def flag(field_name: str, value: str | bytes) -> Open:
    return Open((option(field_name), value))


@dataclass(frozen=True)
class Batch:
    """``starter.py batch FILE``, the file one JSONL line (see ``ticket_json``)."""

    change: dict[str, Any] | bytes


@dataclass(frozen=True)
class Usage:
    """An argparse refusal: exit 2, the usage, and this message."""

    message: str


CLI_CASES = [
    # missing required fields, unknown tier / severity
    case(
        "no-customer-id",
        Open(drop="--customer-id"),
        Usage("the following arguments are required: --customer-id"),
    ),
    case("tier-unknown", flag("tier", "gold"), [f"tier: {TIER}"]),
    case("severity-unknown", flag("severity", "sev0"), [f"severity: {SEVERITY}"]),
    case("tier-not-contracted", flag("customer_id", "example-bank"), [NOT_CONTRACTED]),
    # one past each limit
    case("ticket-id-65", flag("ticket_id", "T" * 65), [TICKET_ID]),
    case(
        "customer-id-129",
        flag("customer_id", "c" * 129),
        ["customer_id: String should have at most 128 characters"],
    ),
    case(
        "subject-201",
        flag("subject", "s" * 201),
        ["subject: String should have at most 200 characters"],
    ),
    case(
        "description-20001",
        flag("description", "d" * 20_001),
        ["description: String should have at most 20000 characters"],
    ),
    case(
        "reporter-email-255",
        flag("reporter_email", "a" * 242 + "@acme.example"),
        ["reporter_email: String should have at most 254 characters"],
    ),
    # control characters, line breaks and invalid UTF-8 in arguments
    case("customer-id-newline", flag("customer_id", "acme\nBcc: x"), [f"customer_id: {ONE_LINE}"]),
    case("subject-escape", flag("subject", "\x1b[2Jwiped"), [f"subject: {CONTROL}"]),
    case(
        "email-unit-separator",
        flag("reporter_email", "a\x1fb@acme.example"),
        [f"reporter_email: {CONTROL}"],
    ),
    case("subject-latin1", flag("subject", b"caf\xe9"), [f"subject: {NOT_UNICODE}"]),
    case("customer-id-0xff", flag("customer_id", b"ac\xffme"), [f"customer_id: {NOT_UNICODE}"]),
    # injection strings in the fields of safe characters
    case("ticket-id-shell", flag("ticket_id", "T-1; rm -rf /"), [TICKET_ID]),
    case("category-sql", flag("category", f"x{SQL}"), [CATEGORY]),
    case("intake-channel-template", flag("intake_channel", "{% if 1 %}"), [CHANNEL]),
    case(
        "email-markdown-link", flag("reporter_email", "[o](http://evil.example)@a.example"), [EMAIL]
    ),
    # retroactive open times
    case(
        "opened-at-future",
        flag("opened_at", (NOW + H).isoformat()),
        [f"opened_at: {(NOW + H).isoformat()} lies in the future"],
    ),
    case(
        "opened-at-31-days-ago",
        flag("opened_at", (NOW - 31 * D).isoformat()),
        [f"opened_at: {(NOW - 31 * D).isoformat()} {PAST}"],
    ),
    case(
        "opened-at-1900",
        flag("opened_at", "1900-01-01T00:00:00Z"),
        [f"opened_at: 1900-01-01T00:00:00+00:00 {PAST}"],
    ),
    case("opened-at-naive", flag("opened_at", "2026-11-26T09:30"), [NAIVE]),
    case("opened-at-year-10000", flag("opened_at", "9999-12-31T23:59:59-01:00"), [YEAR_10000]),
    # a file: not objects, wrong types, missing and unknown fields, not UTF-8, not JSON
    case(
        "batch-not-an-object", Batch(b'["HI-raw"]'), ["(ticket): expected a JSON object, got str"]
    ),
    case(
        "batch-wrong-types", Batch({"tier": 1, "subject": 5}), [f"tier: {TIER}", f"subject: {TEXT}"]
    ),
    case("batch-missing-fields", Batch(b"{}"), REQUIRED),
    # a tier the customer's contract does not give
    case("batch-tier-not-contracted", Batch({"customer_id": "example-bank"}), [NOT_CONTRACTED]),
    case("batch-unknown-field", Batch({"priority": "p1"}), ["priority: unknown field"]),
    case(
        "batch-internal-field",
        Batch({"continued": {}}),
        ["continued: internal field, not accepted at intake"],
    ),
    case("batch-nul-byte", Batch({"subject": "a\x00b"}), [f"subject: {CONTROL}"]),
    case("batch-lone-surrogate", Batch({"subject": "\udcff"}), [f"subject: {NOT_UNICODE}"]),
    case(
        "batch-invalid-utf8",
        Batch(raw_ticket(b', "subject": "caf\xe9"')),
        ["(line): not valid UTF-8 at byte 81"],
    ),
    case(
        "batch-nested-too-deep",
        Batch(b'{"x":' * 100_000 + b"1" + b"}" * 100_000),
        ["(line): not valid JSON: nested too deeply"],
    ),
    case(
        "batch-number-of-5000-digits",
        Batch(raw_ticket(b', "severity": ' + b"9" * 5000)),
        ["(line): not valid JSON: a number has more than 4300 digits"],
    ),
    case(
        "batch-not-json",
        Batch(b"ticket_id=HI-raw"),
        ["(line): not valid JSON: Expecting value at character 0"],
    ),
]


async def starter(rig: Rig, *args: str | bytes) -> tuple[int, str, str]:
    """``python starter.py ARGS`` as its own process: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "starter.py",
        *args,
        cwd=ROOT,
        env=rig.cli_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("run", "problems"), CLI_CASES)
async def test_cli_exits_2_naming_the_field_and_starts_nothing(
    rig: Rig, tmp_path: Path, run: Open | Batch, problems: list[str] | Usage
) -> None:
    ticket_id = new_id()
    if isinstance(run, Open):
        code, out, err = await starter(rig, *run.args(ticket_id))
        would_be, prefix, summary = run.ticket_id(ticket_id), "error: ", ""
    else:
        content, would_be = ticket_json(run.change, ticket_id)
        (tmp_path / "tickets.jsonl").write_bytes(content)
        code, out, err = await starter(rig, "batch", str(tmp_path / "tickets.jsonl"))
        prefix, summary = "line 1: ", "0 opened, 0 already existed, 1 invalid\n"
    assert (code, out) == (2, summary)
    if isinstance(problems, Usage):
        assert err.splitlines()[-1] == f"starter.py open: error: {problems.message}"
    else:
        assert err.splitlines() == [prefix + problem for problem in problems]
    await assert_untouched(rig, would_be)


# --- email: SMTP into the support mailbox -----------------------------------------------


def encoded(text: str) -> bytes:
    """``text`` as an RFC 2047 encoded word, as mail clients write non-ASCII headers."""
    return Header(text, "utf-8").encode().encode()


def letter(
    subject: bytes = b"Disk full",
    body: bytes = b"The disk is full.",
    sender: bytes | None = CUSTOMER_SENDER.encode(),
    headers: tuple[bytes, ...] = (),
    content_type: bytes = b"text/plain; charset=utf-8",
    message_id: bytes | None = None,
) -> bytes:
    """A message as a customer's server delivers it: raw bytes, so that headers and body
    may hold what no well-behaved client writes; a new Message-ID unless given."""
    lines = [
        f"Authentication-Results: {MTA}; dmarc=pass header.from=bank.example".encode(),
        *([b"From: " + sender] if sender is not None else []),
        b"To: " + SUPPORT.encode(),
        b"Subject: " + subject,
        b"Message-ID: " + (message_id or f"<{uuid.uuid4().hex}@bank.example>".encode()),
        *headers,
        b"MIME-Version: 1.0",
        b"Content-Type: " + content_type,
        b"Content-Transfer-Encoding: 8bit",
    ]
    return b"\r\n".join([*lines, b"", body, b""])


def sized(size: int) -> bytes:
    """A customer's message of exactly ``size`` bytes, its body lines of 70 a's."""
    raw = letter(body=b"")[:-2] + (b"a" * 70 + b"\r\n") * (size // 72 + 1)
    return raw[: size - 3] + b"z\r\n"


def truncated(text: str) -> str:
    """``text`` cut to the description's limit, as the mailbox does."""
    mark = "\n\n[message truncated]"
    return text[: 20_000 - len(mark)] + mark


A_LINES = ("a" * 70 + "\n") * 300  # the start of a sized() message's text
LONG = b"".join(b"%05d " % n + b"x" * 64 + b"\r\n" for n in range(500))  # 35,000 bytes


@dataclass(frozen=True)
class Letter:
    raw: bytes
    envelope: str = CUSTOMER_SENDER  # MAIL FROM; "" is the null sender of bounces
    to: str = SUPPORT


@dataclass(frozen=True)
class Mailed:
    """The mailbox's answer: SMTP code and text, the subject of its reply to the sender
    (None: no reply), and fields of the ticket it opened (None: no ticket). ``{ticket}``
    stands for the id of the message's ticket."""

    code: int
    answer: str
    reply: str | None = None
    ticket: dict[str, Any] | None = None


NOT_PROCESSED = Mailed(250, "2.0.0 OK: not processed (no usable sender)")


def opened(subject: str, **fields: Any) -> Mailed:
    """A ticket opened for example-bank and acknowledged to the sender: its ``subject`` and
    ``fields`` (by default: severity sev3 and the letter's body)."""
    ticket = {"subject": subject, "severity": "sev3", "description": "The disk is full."}
    return Mailed(
        250,
        "2.0.0 OK: ticket {ticket} opened",
        "[{ticket}] We received your request: " + subject.replace("=?", "=\u200b?"),
        ticket | fields,
    )


MAIL_CASES = [
    case(
        "unknown-recipient",
        Letter(letter(), to="sales@support.example"),
        Mailed(550, "5.1.1 no such mailbox: this server takes mail for the support address"),
    ),
    case(
        "over-size-limit",
        Letter(sized(DEFAULT_MAX_BYTES + 1)),
        Mailed(552, "Error: message size exceeds fixed maximum message size"),
    ),
    case(
        "at-size-limit",
        Letter(sized(DEFAULT_MAX_BYTES)),
        opened("Disk full", description=truncated(A_LINES)),
    ),
    case(
        "unknown-sender",
        Letter(letter(sender=b"eve@elsewhere.example"), "eve@elsewhere.example"),
        Mailed(
            250,
            "2.0.0 OK: no support contract for this sender",
            "Your message to support: no ticket opened",
        ),
    ),
    case("no-from", Letter(letter(sender=None)), NOT_PROCESSED),
    case("from-invalid-utf8", Letter(letter(sender=b"d\xffna@bank.example")), NOT_PROCESSED),
    case(
        "from-markdown-link",
        Letter(letter(sender=b"[dana](http://evil.example)@bank.example")),
        NOT_PROCESSED,
    ),
    case(  # the display name is never used: the reply goes to the address alone
        "from-name-encoded-crlf",
        Letter(letter(sender=encoded("Dana\r\nBcc: e@evil.example") + b" <dana@bank.example>")),
        opened("Disk full"),
    ),
    case(
        "null-sender",
        Letter(letter(), envelope=""),
        Mailed(250, "2.0.0 OK: not processed (null sender)"),
    ),
    case("unknown-severity-tag", Letter(letter(b"[SEV9] Disk full")), opened("[SEV9] Disk full")),
    case(
        "subject-control-chars",
        Letter(letter(b"Disk\x1b[31m full\x07\x00 now")),
        opened("Disk [31m full now"),
    ),
    case(
        "subject-c1-and-bidi",
        Letter(letter(encoded("Disk\x85full\u202etxt.exe"))),
        opened("Disk full txt.exe"),
    ),
    case(
        "subject-invalid-utf8",
        Letter(letter(b"caf\xe9 \xff down")),
        opened("caf\ufffd \ufffd down"),
    ),
    case(
        "body-invalid-utf8",
        Letter(letter(body=b"caf\xe9 is down \xff")),
        opened("Disk full", description="caf\ufffd is down \ufffd"),
    ),
    case(
        "body-unknown-charset",
        Letter(letter(content_type=b"text/plain; charset=x-no-such")),
        opened("Disk full"),
    ),
    case(
        "body-control-chars",
        Letter(letter(body=b"a\x85b\x00c\x1bd", content_type=b"text/plain; charset=latin-1")),
        opened("Disk full", description="abcd"),
    ),
    case("subject-300", Letter(letter(b"S" * 300)), opened("S" * 200)),
    case(
        "body-35000",
        Letter(letter(body=LONG)),
        opened("Disk full", description=truncated(LONG.decode().replace("\r\n", "\n"))),
    ),
    case(
        "html-body-script",
        Letter(
            letter(
                body=b"<p>Disk <b>full</b></p><script>alert(1)</script>",
                content_type=b"text/html; charset=utf-8",
            )
        ),
        opened("Disk full", description="Disk full"),
    ),
    case(
        "subject-injection",
        Letter(letter(f"{HTML} {{{{ 7*7 }}}} {SLACK} {SQL}".encode())),
        opened(f"{HTML} {{{{ 7*7 }}}} {SLACK} {SQL}"),
    ),
    case(
        "subject-encoded-crlf",
        Letter(letter(encoded("Disk full\r\nBcc: evil@evil.example"))),
        opened("Disk full Bcc: evil@evil.example"),
    ),
    case(
        "subject-double-encoded-crlf",
        Letter(letter(encoded(ENCODED_CRLF))),
        opened(ENCODED_CRLF),
    ),
    case(
        "message-id-encoded-crlf",
        Letter(letter(message_id=b"<=?utf-8?q?a=0D=0ABcc=3A_evil=40evil.example?=@x>")),
        opened("Disk full"),
    ),
    case(
        "date-1900",
        Letter(letter(headers=(b"Date: Mon, 01 Jan 1900 00:00:00 +0000",))),
        opened("Disk full", opened_at=NOW),
    ),
    case(
        "date-2999",
        Letter(letter(headers=(b"Date: Tue, 01 Jan 2999 00:00:00 +0000",))),
        opened("Disk full", opened_at=NOW),
    ),
]

# Every header the mailbox's replies carry: anything else would have been injected.
REPLY_HEADERS = {
    "Subject",
    "From",
    "To",
    "Reply-To",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "X-Auto-Response-Suppress",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}


async def smtp_send(rig: Rig, letter: Letter) -> tuple[int, str]:
    """Deliver as a customer's mail server would; (SMTP code, text) of the last answer."""
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=rig.smtp_port, timeout=30) as smtp:
            _, text = await smtp.sendmail(letter.envelope, [letter.to], letter.raw)
        return 250, text
    except aiosmtplib.SMTPRecipientsRefused as err:
        return err.recipients[0].code, err.recipients[0].message
    except aiosmtplib.SMTPResponseException as err:
        return err.code, err.message


def replies(rig: Rig, since: int) -> list[tuple[EmailMessage, list[str]]]:
    """The mailbox's replies (all mail but the email channel's) after the first ``since``."""
    sent = zip(rig.outbox.received[since:], rig.outbox.envelopes[since:], strict=True)
    return [(message, to) for message, to in sent if DUTY_EMAIL not in to]


@pytest.mark.parametrize(("letter", "expect"), MAIL_CASES)
async def test_the_mailbox_answers_each_message_precisely(
    rig: Rig, letter: Letter, expect: Mailed
) -> None:
    mail = parse_mail(letter.raw, letter.envelope)
    ticket_id = mail.ticket_id
    if expect.ticket is not None:
        rig.opened(ticket_id)
    before = len(rig.outbox.received)
    code, answer = await smtp_send(rig, letter)
    assert (code, answer) == (expect.code, expect.answer.replace("{ticket}", ticket_id))
    sent = replies(rig, before)
    if expect.reply is None:
        assert sent == []
    else:
        [(reply, to)] = sent
        assert to == [mail.sender], "the reply goes to the sender and to nobody else"
        assert set(reply.keys()) <= REPLY_HEADERS, "no header was injected"
        assert reply.get_content_type() == "text/plain"
        assert str(reply["Subject"]) == expect.reply.replace("{ticket}", ticket_id)
    if expect.ticket is None:
        await assert_untouched(rig, ticket_id)
        return
    ticket, _ = await started(rig, ticket_id)
    fields = {
        "customer_id": "example-bank",
        "tier": "mission_critical",
        "reporter_email": CUSTOMER_SENDER,
        "intake_channel": "email",
        "opened_at": NOW,
    } | expect.ticket
    assert {name: getattr(ticket, name) for name in fields} == fields


# --- what is accepted: every field at its limit, a repeated ticket id -------------------


def at_limits(ticket_id: str) -> dict[str, Any]:
    """A ticket with every field at its limit (``ticket_id`` padded to 64 characters),
    opened 29 days ago (Community: no escalation ladder to catch up on)."""
    return {
        "ticket_id": ticket_id.ljust(64, "9"),
        "customer_id": "c" * 128,
        "tier": "community",
        "severity": "sev4",
        "subject": "s" * 200,
        "description": "\U0001f600" * 20_000,  # 4 bytes each in UTF-8, 12 escaped in JSON
        "category": "c" * 64,
        "reporter_email": "a" * 241 + "@acme.example",
        "intake_channel": "i" * 32,
        "opened_at": (NOW - 29 * D).isoformat().replace("+00:00", "Z"),
    }


@pytest.mark.parametrize("path", ["api", "cli"])
async def test_every_field_at_its_limit_is_accepted(rig: Rig, path: str) -> None:
    data = at_limits(new_id())
    ticket_id = data["ticket_id"]
    rig.opened(ticket_id)
    if path == "api":
        body = json.dumps(data).encode()  # ASCII-escaped: the largest such a ticket can be
        body += b" " * (MAX_REQUEST_BYTES - len(body))  # the request exactly at its limit
        response = await post(rig, body, "application/json")
        assert response.status_code == 201, response.text
        recorded = data | {"integration": "hostile-tests"}  # the API records who opened it
    else:
        flags = [arg for key, value in data.items() for arg in (option(key), value)]
        code, out, err = await starter(rig, "open", *flags)
        opened = f"opened ticket {ticket_id} (workflow ticket-{ticket_id}): community sev4"
        assert (code, out) == (0, f"{opened}, no SLA clock\n"), err
        recorded = data
    ticket, _ = await started(rig, ticket_id)
    assert ticket.model_dump(mode="json", exclude_defaults=True) == recorded


async def test_a_repeated_ticket_id_is_answered_and_changes_nothing(rig: Rig) -> None:
    """The same ticket again on each path is reported as existing, a different ticket under
    the same id is a conflict, and neither starts a second run nor changes the first."""
    ticket_id = new_id()
    rig.opened(ticket_id)
    first = await post(rig, ticket_json({}, ticket_id)[0], "application/json")
    assert first.status_code == 201, first.text
    before = await started(rig, ticket_id)

    again = await post(rig, ticket_json({"subject": "other"}, ticket_id)[0], "application/json")
    assert (again.status_code, again.json()) == (200, first.json() | {"created": False})
    other = await post(
        rig, ticket_json({"customer_id": "globex"}, ticket_id)[0], "application/json"
    )
    assert (other.status_code, other.json()) == (
        409,
        {
            "error": "conflict",
            "message": f"ticket_id '{ticket_id}' already belongs to another ticket",
        },
    )
    code, out, err = await starter(rig, *flag("subject", "other").args(ticket_id))
    assert (code, out) == (
        0,
        f"ticket {ticket_id} already exists (workflow ticket-{ticket_id}, open);"
        " nothing new was started\n",
    ), err
    assert await started(rig, ticket_id) == before, "the same run with the same input"

    message = Letter(letter())
    mail_ticket = parse_mail(message.raw, message.envelope).ticket_id
    rig.opened(mail_ticket)
    sent = len(rig.outbox.received)
    assert await smtp_send(rig, message) == (250, f"2.0.0 OK: ticket {mail_ticket} opened")
    mailed = await started(rig, mail_ticket)
    assert await smtp_send(rig, message) == (250, f"2.0.0 OK: ticket {mail_ticket} exists")
    assert len(replies(rig, sent)) == 1, "one acknowledgement"
    assert await started(rig, mail_ticket) == mailed

    async def opened_events() -> list[str]:
        return [e.kind for e in await rig.stack.ledger.events(ticket_id) if e.kind == "opened"]

    assert await eventually("the ledger's 'opened' event", opened_events, 15) == ["opened"]


# --- injection strings are inert wherever a ticket is shown -------------------------------


def mrkdwn_texts(node: Any) -> Iterator[str]:
    """Every Slack ``mrkdwn`` text of a payload (``plain_text`` shows as is: never a
    mention or a link)."""
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn":
            yield node["text"]
        for value in node.values():
            yield from mrkdwn_texts(value)
    elif isinstance(node, list):
        for value in node:
            yield from mrkdwn_texts(value)


# What the email channel's messages carry: anything else would have been injected.
NOTIFICATION_HEADERS = {
    "Subject",
    "From",
    "To",
    "Date",
    "Message-ID",
    "References",
    "X-Support-Idempotency-Key",
    "X-Support-Ticket",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}


async def test_injection_strings_are_inert_in_every_channel_the_board_and_the_report(
    rig: Rig,
) -> None:
    ticket_id = new_id()
    rig.opened(ticket_id)
    response = await post(rig, ticket_json(INJECTED, ticket_id)[0], "application/json")
    assert response.status_code == 201, response.text
    customer, subject = INJECTED["customer_id"], INJECTED["subject"]
    ticket, _ = await started(rig, ticket_id)
    assert ticket.model_dump(include=set(INJECTED)) == INJECTED, "kept as data, verbatim"

    def delivered(path: str) -> list[dict[str, Any]]:
        mine = f"{ticket_workflow_id(ticket_id)}/"
        return [r["body"] for r in rig.hooks.at(path) if r["key"].startswith(mine)]

    def emailed() -> list[tuple[EmailMessage, list[str]]]:
        sent = zip(rig.outbox.received, rig.outbox.envelopes, strict=True)
        return [(m, to) for m, to in sent if m["X-Support-Ticket"] == ticket_id]

    async def notified() -> bool:
        return all(delivered(p) for p in ("/chat", "/webhook", "/pager")) and bool(emailed())

    await eventually("the intake step on chat, webhook, pager and email", notified, 15)

    # Chat: no mention, no link; the header block is plain text, shown as it is.
    [chat] = delivered("/chat")
    texts = [*mrkdwn_texts(chat["blocks"]), chat["text"]]
    assert not [t for t in texts if "<!" in t or "<http" in t], texts
    assert any("&lt;!channel&gt; &lt;http://evil.example|click&gt;" in t for t in texts)
    assert chat["blocks"][0]["text"]["type"] == "plain_text"
    # Webhook and pager: JSON, the customer's text as data.
    [hook] = delivered("/webhook")
    assert (hook["customer_id"], hook["subject"]) == (customer, subject)
    [page] = delivered("/pager")
    assert page["payload"]["component"] == customer
    assert page["payload"]["custom_details"]["subject"] == subject
    # Email: plain text, to the channel's recipient alone, no header but ours; the subject
    # on one line with the encoded word shown literally (not decoded into a line break).
    [(mail, to)] = emailed()
    assert to == [DUTY_EMAIL] and set(mail.keys()) == NOTIFICATION_HEADERS
    assert mail.get_content_type() == "text/plain" and not mail.is_multipart()
    shown = str(mail["Subject"])
    assert "\r" not in shown and "\n" not in shown
    assert f"({customer}): =\u200b?utf-8?q?=0D=0ABcc:_evil@evil.example?= Bcc: evil@" in shown

    # The agent board and the acknowledge page: autoescaped HTML.
    form = await rig.http.get("/board/login")  # the sign-in form's CSRF token
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    login = await rig.http.post("/board/login", data={"token": AGENT, "csrf": csrf.group(1)})
    assert (login.status_code, login.headers["location"]) == (303, "/board"), "signed in"

    async def board() -> str | None:
        page = await rig.http.get("/board")
        return page.text if f'id="row-{ticket_id}"' in page.text else None

    html = await eventually("the ticket on the board (visibility)", board, 15)
    assert f"<td>{escape(customer)}</td>" in html and HTML not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} &lt;!channel&gt;" in html
    link = AckLinks(SETTINGS.link_secret, SETTINGS.link_ttl, SETTINGS.public_url)
    confirm = await rig.http.get(f"/board/ack/{link.token(ticket_id, 'ana')}")
    assert confirm.status_code == 200 and f"<strong>{escape(customer)}</strong>" in confirm.text
    assert HTML not in confirm.text

    # The ledger keeps the SQL as data; the report shows the ticket (a breach two hours
    # later) escaped in HTML, and as plain text in a table (rich markup off).
    row = await eventually(
        "the ticket's ledger row", lambda: rig.stack.ledger.outcome(ticket_id), 15
    )
    assert row.customer_id == customer
    report = build_report([row], row.opened_at + 2 * H)
    html = render_html(report)
    assert f'<td class="text">{escape(customer)}</td>' in html and HTML not in html
    table = io.StringIO()
    render_table(report, table)
    assert customer in table.getvalue()


async def test_the_task_queue_holds_exactly_the_tickets_the_rows_opened(rig: Rig) -> None:
    """The audit, after every row of the module: visibility (eventually consistent, so
    polled) lists every workflow on the module's task queue, closed ones included."""
    expected = {ticket_workflow_id(t) for t in rig.accepted}
    query = f'TaskQueue = "{rig.stack.task_queue}"'
    found: set[str] = set()

    async def all_listed() -> bool:
        nonlocal found
        found = {w.id async for w in rig.stack.client.list_workflows(query)}
        return found == expected

    with contextlib.suppress(HarnessError):  # the assertion below shows the difference
        await eventually("visibility to list exactly the tickets opened", all_listed, 15)
    assert found == expected, (found - expected, expected - found)
