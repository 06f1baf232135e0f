"""Attacks on who a requester claims to be (issue 15, part 1), each performed against the
real HTTP app served on loopback, the real mailbox listener, a real SMTP sink, the dev
server with a worker and the ledger's database:

- a contracted domain typed into the contact form, and a mail from a contracted domain
  without a DMARC pass from the trusted MTA: the ticket runs as Community and says why;
  confirming by the link mailed to the address moves it to the contract's tier, its
  clock from the submission;
- a flood from one address, one domain, one client: 429 (form) / 451 (mailbox) after the
  limit, and still after a restart (the counts are in the database);
- a flood that spends a customer's allowance (the form typed at its domain, forged mail
  through the one MTA every message comes from): its verified mail still gets in.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import httpx
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from contract import search_attributes as sa
from contract.models import MarkOutOfScope, TicketState, TicketStatus, sow_workflow_id
from harness.processes import eventually, free_port
from harness.serve import serve
from harness.sinks import Mailbox
from intake.core import started_input
from intake.guards import WINDOW, IntakeGuards, Limit
from intake.mailbox import MailboxHandler, Network, listening, message_key, networks
from ledger.store import SqlLedger
from runtime.links import KeyRing, ReplyTokens
from runtime.logs import redact
from service.app import create_app
from service.auth import Settings
from tests.conftest import Stack, running_stack, settled

SUPPORT = "support@support.example"
MTA = "mx.support.example"
SPAM = "CHEAP PILLS at http://spam.example/buy"
M = timedelta(minutes=1)
T = TypeVar("T")


@dataclass
class Rig:
    stack: Stack
    url: str
    http: httpx.AsyncClient
    smtp_port: int
    guards: IntakeGuards
    settings: Settings

    def ticket(self, ticket_id: str) -> WorkflowHandle[Any, TicketStatus]:
        self.stack.opened.append(f"ticket-{ticket_id}")
        return self.stack.client.get_workflow_handle(
            f"ticket-{ticket_id}", result_type=TicketStatus
        )


def limits(address: int = 100, domain: int = 100, client: int = 100) -> tuple[Limit, ...]:
    return (
        Limit("address", address, WINDOW),
        Limit("domain", domain, WINDOW),
        Limit("client", client, WINDOW),
    )


@asynccontextmanager
async def rig_on(
    stack: Stack,
    ledger: Path,
    allowed: tuple[Limit, ...],
    trusted_mta: tuple[Network, ...] = (),
    reply_tokens: ReplyTokens | None = None,
) -> AsyncIterator[Rig]:
    """The HTTP app and the mailbox listener on the stack, with their guards on the
    stack's ledger database (a second one on the same database is a restart)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        agent_tokens={"agent-token-0123456789": "ana"},
        public_url=url,
        ledger_url=f"sqlite:///{ledger}",
    )
    guards = IntakeGuards(stack.ledger.engine, limits=allowed)
    app = create_app(client=stack.client, settings=settings, queue=stack.task_queue)
    app.state.guards = guards
    handler = MailboxHandler(
        stack.client,
        address=SUPPORT,
        queue=stack.task_queue,
        guards=guards,
        trusted_authserv_id=MTA,
        public_url=url,
        trusted_mta=trusted_mta,
        reply_tokens=reply_tokens,
    )
    async with (
        serve(app, port),
        listening(handler) as server,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        smtp_port = server.sockets[0].getsockname()[1]
        yield Rig(stack, url, http, smtp_port, guards, settings)


@pytest_asyncio.fixture(loop_scope="session")
async def rig(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> AsyncIterator[Rig]:
    async with running_stack(dev_server, tmp_path / "ledger.sqlite3") as stack:
        async with rig_on(stack, tmp_path / "ledger.sqlite3", limits()) as running:
            yield running


async def until(what: str, probe: Callable[[], Awaitable[T | None]], seconds: float = 15) -> T:
    """``await probe()`` until it answers (real time: the dev server's clock)."""
    deadline = time.monotonic() + seconds
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {seconds:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def status(handle: WorkflowHandle[Any, TicketStatus]) -> TicketStatus:
    async def planned() -> TicketStatus | None:
        try:
            found = await handle.query("status", result_type=TicketStatus)
        except Exception:
            return None
        return found if found.policy_version is not None else None

    return await until(f"{handle.id} planned", planned)


def form(email: str, **fields: str) -> dict[str, str]:
    return {
        "form_id": uuid.uuid4().hex,
        "email": email,
        "category": "incident",
        "severity": "sev1",
        "subject": SPAM,
        "description": "Every payment fails.",
    } | fields


def link_in(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    found = re.search(r"https?://\S+/support/confirm\?token=\S+", str(body.get_content()))
    assert found, body.get_content()
    return found.group(0)


def ticket_id_in(html: str) -> str:
    found = re.search(r'id="ticket-id">([^<]+)<', html)
    assert found, html
    return found.group(1)


def letter(
    sender: str, subject: str, authentication: str | None = None, in_reply_to: str | None = None
) -> EmailMessage:
    message = EmailMessage()
    if authentication is not None:
        message["Authentication-Results"] = authentication
    if in_reply_to is not None:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message["From"] = sender
    message["To"] = SUPPORT
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="bank.example")
    message.set_content("All payment APIs time out.")
    return message


async def deliver(rig: Rig, message: EmailMessage, sender: str) -> tuple[int, str]:
    try:
        _, text = await aiosmtplib.send(
            message, sender=sender, recipients=[SUPPORT], hostname="127.0.0.1", port=rig.smtp_port
        )
        return 250, text
    except aiosmtplib.SMTPResponseException as err:
        return err.code, err.message


# --- unverified requesters -----------------------------------------------------------------


async def test_a_contracted_domain_typed_into_the_form_runs_as_community_until_confirmed(
    rig: Rig, mailbox: Mailbox
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    response = await rig.http.post("/support/new", data=form("noc@bank.example"))
    assert response.status_code == 201, response.text
    community_id = ticket_id_in(response.text)
    assert 'id="tier">Community<' in response.text
    assert "until\nyou confirm" in response.text and "noc@bank.example" in response.text

    # The ticket runs as Community, and its record says why.
    community = await status(rig.ticket(community_id))
    assert (community.customer_id, community.tier.value) == ("community", "community")
    assert community.response_due_at is None
    handle = rig.stack.client.get_workflow_handle(f"ticket-{community_id}")
    run = (await handle.describe()).run_id
    opened = await started_input(rig.stack.client, handle.id, run)
    assert opened is not None and opened.description.startswith(
        "[Community until confirmed: noc@bank.example is at an email domain of the support"
        " contract of 'example-bank', but the address is not verified"
    )
    submitted = community.opened_at
    assert before <= submitted <= before + timedelta(seconds=5)

    # The link went to the typed address only, and carries nothing the requester typed.
    [request] = mailbox.received
    assert mailbox.envelopes == [["noc@bank.example"]]
    assert "PILLS" not in request.as_string() and "spam.example" not in request.as_string()
    assert request["Auto-Submitted"] == "auto-generated"
    link = link_in(request)
    path = link.removeprefix(rig.url)
    token = {"token": path.partition("token=")[2]}
    # The token rides in the query as token=, which every log (the access log too) redacts.
    assert token["token"] not in redact(f'"GET {path} HTTP/1.1" 200')

    # Opening the link (as a mail scanner would) confirms nothing: it shows a button.
    page = await rig.http.get(path)
    assert page.status_code == 200 and 'id="confirm"' in page.text, page.text
    assert "Yes, I sent it" in page.text

    await asyncio.sleep(2)  # the confirmation comes later than the submission
    done = await rig.http.post("/support/confirm", data=token)
    assert done.status_code == 200, done.text
    assert "Request confirmed" in done.text and community_id in done.text

    # The same ticket runs under the contract: its tier, its clock from the submission.
    moved = await status(rig.ticket(community_id))
    assert (moved.customer_id, moved.tier.value, moved.severity.value, moved.state) == (
        "example-bank",
        "mission_critical",
        "sev1",
        TicketState.OPEN,
    )
    assert moved.opened_at == submitted
    assert moved.response_due_at == submitted + 15 * M
    [verified] = [h for h in moved.history if h.kind == "requester_verified"]
    assert verified.detail is not None and verified.detail.startswith(
        "noc@bank.example confirmed: the contract of example-bank, community -> mission_critical"
    )

    # Found by the contract's customer and tier (visibility), never as a second ticket.
    async def contracted() -> tuple[str | None, str | None] | None:
        found = (await handle.describe()).typed_search_attributes
        pair = (found.get(sa.CUSTOMER_ID), found.get(sa.SUPPORT_TIER))
        return pair if pair == ("example-bank", "mission_critical") else None

    await until("the search attributes of the contract", contracted)
    second = await rig.stack.client.count_workflows(f"WorkflowId = 'ticket-{community_id}-C'")
    assert second.count == 0

    # The link works once.
    again = await rig.http.post("/support/confirm", data=token)
    assert again.status_code == 200 and "Already confirmed" in again.text
    assert (await rig.http.get("/support/confirm?token=not-a-token")).status_code == 404
    assert (await rig.http.post("/support/confirm", data={"token": "x"})).status_code == 404


async def test_the_form_tells_the_requester_why_and_a_resubmission_sends_no_second_link(
    rig: Rig, mailbox: Mailbox
) -> None:
    data = form("noc@bank.example")
    first = await rig.http.post("/support/new", data=data)
    assert first.status_code == 201
    rig.ticket(ticket_id_in(first.text))
    again = await rig.http.post("/support/new", data=data)
    assert again.status_code == 200 and "when\nyou first sent this form" in again.text
    assert len(mailbox.received) == 1


async def test_a_mail_without_a_trusted_dmarc_pass_runs_as_community_until_confirmed(
    rig: Rig, mailbox: Mailbox
) -> None:
    # A DMARC pass, but from a server that is not the trusted MTA: not verified.
    message = letter(
        "dana@bank.example",
        f"[SEV1] {SPAM}",
        authentication="mx.evil.example; dmarc=pass header.from=bank.example",
    )
    community_id = f"E-{message_key(b'', str(message['Message-ID']))}"
    received = datetime.now(UTC).replace(microsecond=0)
    code, text = await deliver(rig, message, sender="dana@bank.example")
    assert (code, text) == (
        250,
        f"2.0.0 OK: ticket {community_id} opened (Community until the sender confirms)",
    )
    community = await status(rig.ticket(community_id))
    assert (community.customer_id, community.tier.value) == ("community", "community")

    # The acknowledgement goes to the envelope sender, names no subject, carries the link.
    [ack] = mailbox.received
    assert ack["To"] == "dana@bank.example" and ack["Auto-Submitted"] == "auto-replied"
    assert "PILLS" not in ack.as_string()
    link = link_in(ack)
    done = await rig.http.post("/support/confirm", data={"token": link.partition("token=")[2]})
    assert done.status_code == 200 and "Request confirmed" in done.text, done.text

    moved = await status(rig.ticket(community_id))
    assert (moved.customer_id, moved.tier.value, moved.severity.value) == (
        "example-bank",
        "mission_critical",
        "sev1",
    )
    assert received <= moved.opened_at <= received + timedelta(seconds=5)
    assert moved.opened_at == community.opened_at
    assert moved.response_due_at == moved.opened_at + 15 * M


async def test_a_forged_from_with_another_envelope_sender_gets_no_link(
    rig: Rig, mailbox: Mailbox
) -> None:
    """The link would prove nothing about From: none is sent, and nothing reaches From."""
    message = letter("dana@bank.example", "[SEV1] down")
    community_id = f"E-{message_key(b'', str(message['Message-ID']))}"
    assert (await deliver(rig, message, sender="attacker@evil.example"))[0] == 250
    community = await status(rig.ticket(community_id))
    assert community.tier.value == "community"
    assert mailbox.envelopes == [["attacker@evil.example"]]
    assert "/support/confirm" not in mailbox.received[0].as_string()


async def verified_mail_opens_its_ticket(
    rig: Rig, subject: str, authentication: str | None = None, sender: str = "noc@bank.example"
) -> TicketStatus:
    """Mail from ``sender`` at bank.example with the trusted MTA's DMARC pass is answered
    250 with its ticket opened, at the bank's contracted tier; that ticket's status."""
    message = letter(
        sender,
        subject,
        authentication=authentication or f"{MTA}; dmarc=pass header.from=bank.example",
    )
    ticket_id = f"E-{message_key(b'', str(message['Message-ID']))}"
    assert await deliver(rig, message, sender=sender) == (
        250,
        f"2.0.0 OK: ticket {ticket_id} opened",
    )
    opened = await status(rig.ticket(ticket_id))
    assert (opened.customer_id, opened.tier.value) == ("example-bank", "mission_critical")
    return opened


async def test_a_trusted_dmarc_pass_gets_the_contract_at_once(rig: Rig, mailbox: Mailbox) -> None:
    await verified_mail_opens_its_ticket(
        rig,
        "[SEV1] down",
        f"{MTA}; dkim=pass; dmarc=pass (p=reject) header.from=bank.example",
        sender="dana@bank.example",
    )


# --- the statement of work: no reflector -------------------------------------------------------


async def out_of_scope_mail(rig: Rig, mailbox: Mailbox, ticket_id: str) -> list[EmailMessage]:
    """Once the ticket's statement of work has sent its first notices: the mail it sent."""
    sow = rig.stack.client.get_workflow_handle(sow_workflow_id(ticket_id))
    await eventually(f"{sow.id} to start", sow.describe, 15, ignoring=RPCError)
    await settled(sow, 15)
    return [m for m in mailbox.received if "Statement of work" in str(m["Subject"])]


async def test_an_unverified_requesters_statement_of_work_mails_that_address_nothing(
    rig: Rig, mailbox: Mailbox
) -> None:
    """The attack: a victim's address typed into the form with an out-of-scope kind of
    issue (a statement of work at once, whose notice names the subject), and a forged
    From at a customer's domain whose ticket an agent then marks out of scope. Neither
    address gets a word. The control: a verified sender's ticket does tell its sender."""
    typed = await rig.http.post(
        "/support/new", data=form("victim@elsewhere.example", category="consulting")
    )
    assert typed.status_code == 201, typed.text
    typed_id = ticket_id_in(typed.text)
    rig.ticket(typed_id)
    assert await out_of_scope_mail(rig, mailbox, typed_id) == []
    assert ["victim@elsewhere.example"] not in mailbox.envelopes

    forged = letter("dana@bank.example", SPAM)
    forged_id = f"E-{message_key(b'', str(forged['Message-ID']))}"
    assert (await deliver(rig, forged, sender="attacker@evil.example"))[0] == 250
    await status(rig.ticket(forged_id))
    await rig.ticket(forged_id).signal(
        "mark_out_of_scope", MarkOutOfScope(by="ana", reason="consulting")
    )
    assert await out_of_scope_mail(rig, mailbox, forged_id) == []
    assert ["dana@bank.example"] not in mailbox.envelopes
    assert not [m for m in mailbox.received if "PILLS" in m.as_string()]

    verified = letter(
        "dana@bank.example",
        "Design review",
        authentication=f"{MTA}; dmarc=pass header.from=bank.example",
    )
    verified_id = f"E-{message_key(b'', str(verified['Message-ID']))}"
    assert (await deliver(rig, verified, sender="dana@bank.example"))[0] == 250
    await status(rig.ticket(verified_id))
    await rig.ticket(verified_id).signal(
        "mark_out_of_scope", MarkOutOfScope(by="ana", reason="consulting")
    )
    [notice] = await out_of_scope_mail(rig, mailbox, verified_id)
    assert notice["To"] == "dana@bank.example" and verified_id in str(notice["Subject"])


# --- floods ----------------------------------------------------------------------------------


async def test_a_flood_through_the_form_is_refused_per_address_domain_and_client_across_a_restart(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    allowed = limits(address=2, domain=3, client=4)
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, allowed) as rig:

            async def post(email: str) -> httpx.Response:
                response = await rig.http.post("/support/new", data=form(email, subject="question"))
                if response.status_code in (200, 201):
                    rig.ticket(ticket_id_in(response.text))
                return response

            # Per address: the third from one address is refused.
            assert [(await post("a@one.example")).status_code for _ in range(2)] == [201, 201]
            refused = await post("a@one.example")
            assert refused.status_code == 429
            assert "too many requests from this address (2 per hour per address)" in refused.text
            assert 0 < int(refused.headers["Retry-After"]) <= 3600
            # Per domain: the refused one counted nowhere, so one more address of the
            # domain gets in (its 3rd), and the next is over the domain's 3.
            assert (await post("b@one.example")).status_code == 201
            refused = await post("c@one.example")
            assert refused.status_code == 429 and "from this domain" in refused.text
            # Per client: three counted from this client; a 4th, then any address is refused.
            assert (await post("d@two.example")).status_code == 201
            refused = await post("e@three.example")
            assert refused.status_code == 429 and "from this client" in refused.text

        # A restart of the service (a new app, new guards) on the same database.
        async with rig_on(stack, ledger, allowed) as restarted:
            response = await restarted.http.post(
                "/support/new", data=form("a@one.example", subject="question")
            )
            assert response.status_code == 429, "the counts survive the restart"


async def test_a_flood_into_the_mailbox_is_deferred_with_451_across_a_restart(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    allowed = limits(address=2, domain=100, client=100)
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, allowed) as rig:
            codes = []
            for n in range(3):
                message = letter("someone@elsewhere.example", f"hello {n}")
                codes.append(await deliver(rig, message, sender="someone@elsewhere.example"))
            assert [c for c, _ in codes] == [250, 250, 451]
            assert codes[2][1].startswith("4.7.1 too many messages: too many requests from")
        async with rig_on(stack, ledger, allowed) as restarted:
            message = letter("someone@elsewhere.example", "hello again")
            code, _ = await deliver(restarted, message, sender="someone@elsewhere.example")
            assert code == 451, "the counts survive the restart"


async def test_a_form_flood_at_a_customers_domain_does_not_defer_its_mail(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """The attack: typing the bank's addresses into the form (or forging its From in mail)
    until its domain is over the limit, so the bank's own mail is deferred. The form's
    counts are not the mailbox's, and verified mail is neither limited nor counted."""
    ledger = tmp_path / "ledger.sqlite3"
    allowed = limits(address=100, domain=2, client=100)
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, allowed) as rig:
            for n in range(2):
                response = await rig.http.post(
                    "/support/new", data=form(f"x{n}@bank.example", subject="question")
                )
                assert response.status_code == 201, response.text
                rig.ticket(ticket_id_in(response.text))
            response = await rig.http.post("/support/new", data=form("x9@bank.example"))
            assert response.status_code == 429 and "from this domain" in response.text
            # Forged mail from the domain, unverified: deferred once its own count is over.
            codes = []
            for n in range(3):
                forged = letter(f"f{n}@bank.example", f"forged {n}")
                codes.append((await deliver(rig, forged, sender=f"f{n}@bank.example"))[0])
            assert codes == [250, 250, 451]
            # The bank's verified mail still gets in, again and again.
            for n in range(3):
                verified = letter(
                    "noc@bank.example",
                    f"Payments down {n}",
                    authentication=f"{MTA}; dmarc=pass header.from=bank.example",
                )
                code, _ = await deliver(rig, verified, sender="noc@bank.example")
                assert code == 250, n


async def test_the_mailbox_defers_a_flood_per_domain_and_per_client(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """Unverified mail from many addresses of one domain, then of many domains through one
    connecting server (not the configured MTA): 451 at each limit, naming it."""
    ledger = tmp_path / "ledger.sqlite3"
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, limits(domain=2, client=4)) as rig:
            codes = []
            for n in range(3):
                message = letter(f"u{n}@one.example", f"hello {n}")
                codes.append(await deliver(rig, message, sender=f"u{n}@one.example"))
            assert [c for c, _ in codes] == [250, 250, 451]
            assert "too many requests from this domain (2 per hour per domain)" in codes[2][1]
            # The refused one counted nowhere: two more from elsewhere, then the client's 5th.
            codes = []
            for n in range(3):
                message = letter(f"u@d{n}.example", f"hello {n}")
                codes.append(await deliver(rig, message, sender=f"u@d{n}.example"))
            assert [c for c, _ in codes] == [250, 250, 451]
            assert "too many requests from this client (4 per hour per client)" in codes[2][1]
            # Verified mail is not limited, even from a server over its limit.
            await verified_mail_opens_its_ticket(rig, "[SEV2] Payments slow")


async def test_a_dmarc_pass_written_by_a_server_that_is_not_the_trusted_mta_verifies_nothing(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """The attack: reach the mailbox's port without going through the MTA and write the
    MTA's own Authentication-Results (its authserv-id, a DMARC pass for bank.example). With
    SUPPORT_MAILBOX_TRUSTED_MTA naming the MTA elsewhere, that header from this peer is
    not believed: the ticket runs as Community, and the message is counted like any
    other (the second is over the address's limit). From the MTA's address it verifies."""
    ledger = tmp_path / "ledger.sqlite3"
    allowed = limits(address=1, domain=50, client=30)
    forged = f"{MTA}; dmarc=pass header.from=bank.example"
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, allowed, trusted_mta=networks("192.0.2.25")) as rig:
            message = letter("noc@bank.example", "[SEV1] down", authentication=forged)
            community_id = f"E-{message_key(b'', str(message['Message-ID']))}"
            code, text = await deliver(rig, message, sender="noc@bank.example")
            assert (code, text) == (
                250,
                f"2.0.0 OK: ticket {community_id} opened (Community until the sender confirms)",
            )
            community = await status(rig.ticket(community_id))
            assert (community.customer_id, community.tier.value) == ("community", "community")
            again = letter("noc@bank.example", "[SEV1] still down", authentication=forged)
            code, text = await deliver(rig, again, sender="noc@bank.example")
            assert code == 451 and "too many requests from this address" in text
        # The same header from the MTA's address (here: loopback) verifies the sender.
        async with rig_on(stack, ledger, allowed, trusted_mta=networks("127.0.0.1")) as rig:
            await verified_mail_opens_its_ticket(rig, "[SEV2] Payments slow")


async def test_a_flood_through_the_trusted_mta_does_not_cap_all_inbound_mail(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """The attack: behind one MTA every message comes from one client address, so 31
    messages from anyone would defer everybody's mail for the hour. The configured MTA
    (SUPPORT_MAILBOX_TRUSTED_MTA) has no per-client limit; addresses and domains still
    have theirs, and the bank's verified mail opens its ticket."""
    ledger = tmp_path / "ledger.sqlite3"
    allowed = limits(address=2, domain=50, client=30)
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, allowed, trusted_mta=networks("127.0.0.1")) as rig:
            for n in range(35):
                message = letter(f"u@d{n}.example", f"hello {n}")
                code, text = await deliver(rig, message, sender=f"u@d{n}.example")
                assert code == 250, (n, text)
            codes = []
            for n in range(3):
                message = letter("x@bank.example", f"forged {n}")
                codes.append((await deliver(rig, message, sender="x@bank.example"))[0])
            assert codes == [250, 250, 451], "the per-address limit still holds"
            await verified_mail_opens_its_ticket(rig, "[SEV2] Payments slow")


async def test_a_form_flood_then_the_customers_verified_mail_opens_its_ticket(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """The audit's case at the default limits: 51 form submissions typing addresses at
    bank.example (all but the first 50 refused), then the bank's verified mail: 250 and
    its ticket at the contract's tier."""
    ledger = tmp_path / "ledger.sqlite3"
    allowed = limits(address=10, domain=50, client=1000)
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, allowed) as rig:
            # Without spending 50 tickets: the form's own domain count, filled directly.
            keys = {"address": None, "domain": "bank.example", "client": "203.0.113.9"}
            now = datetime.now(UTC)
            assert all([await rig.guards.admit(keys, now) is None for _ in range(50)])
            response = await rig.http.post("/support/new", data=form("x@bank.example"))
            assert response.status_code == 429 and "from this domain" in response.text
            await verified_mail_opens_its_ticket(rig, "[SEV1] Payments down")


async def test_a_dmarc_pass_for_another_domain_is_neither_trusted_nor_exempt(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """The trusted MTA's DMARC pass, but for evil.example (the attacker's own domain)
    while From says bank.example: not verified, so Community and counted."""
    ledger = tmp_path / "ledger.sqlite3"
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, limits(address=1)) as rig:
            codes = []
            for n in range(2):
                message = letter(
                    "dana@bank.example",
                    f"[SEV1] down {n}",
                    authentication=f"{MTA}; dmarc=pass header.from=evil.example",
                )
                if n == 0:
                    rig.stack.opened.append(
                        f"ticket-E-{message_key(b'', str(message['Message-ID']))}"
                    )
                codes.append(await deliver(rig, message, sender="dana@bank.example"))
            assert codes[0][0] == 250
            assert codes[0][1].endswith("opened (Community until the sender confirms)")
            assert codes[1][0] == 451, "not verified, so limited like any claim"


async def test_a_reply_quoting_our_token_is_not_limited_per_address(
    dev_server: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox
) -> None:
    """A reply carrying the signed reply token of our mail proves the sender got that mail:
    not counted per address or domain. A forged token proves nothing and is counted."""
    ledger = tmp_path / "ledger.sqlite3"
    tokens = ReplyTokens(KeyRing.random())
    ours = tokens.reference("E-0123456789abcdef")
    forged = f"<reply-E-0123456789abcdef.{'A' * 43}@support-sla>"
    async with running_stack(dev_server, ledger) as stack:
        async with rig_on(stack, ledger, limits(address=1), reply_tokens=tokens) as rig:
            codes = []
            for n, reference in enumerate([ours, ours, ours, None, forged]):
                message = letter("someone@elsewhere.example", f"Re: {n}", in_reply_to=reference)
                codes.append((await deliver(rig, message, sender="someone@elsewhere.example"))[0])
            assert codes == [250, 250, 250, 250, 451]


# --- the guards' tables on both backends -----------------------------------------------------


async def test_the_guards_keep_counts_replies_confirmations_and_quarantine_on_both_backends(
    any_ledger: SqlLedger,
) -> None:
    guards = IntakeGuards(any_ledger.engine, limits=limits(address=2))
    now = datetime.now(UTC).replace(microsecond=0)
    keys = {"address": "Eve@Evil.example", "domain": "evil.example", "client": "127.0.0.9"}
    assert await guards.admit(keys, now) is None
    assert await guards.admit(keys | {"address": "eve@evil.example"}, now) is None
    refused = await guards.admit(keys, now)
    assert refused is not None and refused.limit.scope == "address"
    assert timedelta(0) < refused.retry_after <= WINDOW
    # The next window starts afresh.
    assert await guards.admit(keys, now + WINDOW) is None
    # A refused submission counts nowhere: an address refused again and again spends none
    # of its domain's allowance (3 here), so two more addresses get in, then the domain's
    # limit holds.
    guards = IntakeGuards(any_ledger.engine, limits=limits(address=1, domain=3))
    keys = {"address": "a@flood.example", "domain": "flood.example", "client": None}
    assert [await guards.admit(keys, now) is None for _ in range(4)] == [True, False, False, False]
    assert await guards.admit(keys | {"address": "b@flood.example"}, now) is None
    assert await guards.admit(keys | {"address": "c@flood.example"}, now) is None
    refused = await guards.admit(keys | {"address": "d@flood.example"}, now)
    assert refused is not None and refused.limit.scope == "domain"

    assert await guards.first_reply("unknown:eve@evil.example", now)
    assert not await guards.first_reply("unknown:eve@evil.example", now + 23 * 60 * M)
    assert await guards.first_reply("unknown:eve@evil.example", now + 24 * 60 * M)
    await guards.forget_reply("unknown:eve@evil.example")
    assert await guards.first_reply("unknown:eve@evil.example", now)

    kept = await guards.quarantine(b"\xff raw \x00 bytes", "eve@evil.example", "why", now)
    assert await guards.quarantined(kept) == ("why", b"\xff raw \x00 bytes")

    ticket = {"ticket_id": "W-1", "customer_id": "example-bank"}
    token = await guards.request_confirmation(
        "W-1", "example-bank", "noc@bank.example", now, ticket, "why", now
    )
    assert token is not None
    assert (
        await guards.request_confirmation(
            "W-1", "example-bank", "noc@bank.example", now, ticket, "why", now
        )
        is None
    ), "one link per ticket"
    found = await guards.confirmation(token)
    assert found is not None and (found.ticket_id, found.ticket) == ("W-1", ticket)
    assert found.submitted_at == now and found.moved_to is None
    assert await guards.confirmation("not-" + token) is None
    await guards.confirmed(token, now, "W-1")
    done = await guards.confirmation(token)
    assert done is not None and (done.confirmed_at, done.moved_to) == (now, "W-1")
    await guards.ready()
