"""The support mailbox against real servers: the listener on loopback, mail sent to it as a
customer's server would (aiosmtplib), tickets started on the time-skipping server, and the
replies caught by an SMTP sink. A customer's email opens exactly one ticket through the
intake core, with the contract's tier and the receipt time as its open time; every intake
rule applies; a contract whose agreed path is not email gets a polite reply naming it; a
reply lands on its ticket; an unknown sender gets a polite answer and no ticket; automatic
mail is never answered; the mailbox says 451 while Temporal or the policy is unavailable,
so no customer's email is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from contract.models import (
    MAX_DESCRIPTION,
    Acknowledge,
    Resolve,
    Severity,
    TicketInput,
    TicketStatus,
    Tier,
)
from harness.policy import write_policy
from harness.processes import eventually, free_port
from harness.sinks import Mailbox
from intake.guards import IntakeGuards
from intake.mailbox import (
    MailboxHandler,
    body_text,
    listening,
    message_key,
    parse_mail,
    severity_tag,
)
from policy.load import load_policy
from tests.conftest import (
    Stack,
    now_second,
    open_ticket_at,
    policy_resolved,
    sqlite_ledger,
    status_of,
    ticket,
    until_status,
)

SUPPORT = "support@support.example"
# The organisation's MTA, whose Authentication-Results the mailbox trusts (issue 15): the
# mail of these tests passed DMARC there, so its sender is verified.
MTA = "mx.support.example"
FORM = "https://support.example/support/new"
M = timedelta(minutes=1)


@dataclass
class Listener:
    stack: Stack
    at: datetime  # the receipt time the listener's clock reports
    port: int = 0

    async def send(
        self, message: EmailMessage, sender: str | None = None, to: str = SUPPORT
    ) -> tuple[int, str]:
        """Deliver as a customer's mail server would; (SMTP code, text) of the last answer.
        A ticket the message may open is registered for cleanup."""
        self.stack.opened.append(f"ticket-{ticket_id_of(message)}")
        return await deliver(self.port, message, sender, to)

    def ticket(self, ticket_id: str) -> WorkflowHandle[Any, TicketStatus]:
        return self.stack.client.get_workflow_handle(
            f"ticket-{ticket_id}", result_type=TicketStatus
        )


async def deliver(
    port: int, message: EmailMessage, sender: str | None = None, to: str = SUPPORT
) -> tuple[int, str]:
    try:
        _, text = await aiosmtplib.send(
            message, hostname="127.0.0.1", port=port, sender=sender, recipients=[to], timeout=30
        )
        return 250, text
    except aiosmtplib.SMTPRecipientsRefused as err:
        return err.recipients[0].code, err.recipients[0].message
    except aiosmtplib.SMTPResponseException as err:
        return err.code, err.message


def mail(
    sender: str,
    subject: str,
    text: str = "The cluster API answers 500 since 09:00.",
    html: str | None = None,
    **headers: str,
) -> EmailMessage:
    message = EmailMessage()
    domain = sender.rpartition("@")[2].rstrip(">")
    message["Authentication-Results"] = f"{MTA}; dmarc=pass header.from={domain}"
    message["From"] = sender
    message["To"] = SUPPORT
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def ticket_id_of(message: EmailMessage) -> str:
    return f"E-{message_key(b'', str(message['Message-ID']))}"


@pytest_asyncio.fixture(loop_scope="session")
async def listener(stack: Stack, mailbox: Mailbox) -> AsyncIterator[Listener]:
    """The mailbox on a free loopback port, starting tickets through the test's worker;
    its clock is the test server's (receipt times must be valid open times there)."""
    state = Listener(stack, await now_second(stack.env))
    handler = MailboxHandler(
        stack.client,
        address=SUPPORT,
        queue=stack.task_queue,
        clock=lambda: state.at,
        contact_form_url=FORM,
        guards=IntakeGuards(stack.ledger.engine),
        trusted_authserv_id=MTA,
    )
    async with listening(handler) as server:
        state.port = server.sockets[0].getsockname()[1]
        yield state


async def started_input(stack: Stack, ticket_id: str) -> TicketInput:
    """The input the ticket's workflow was started with."""
    handle = stack.client.get_workflow_handle(f"ticket-{ticket_id}")
    async for event in handle.fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        [started] = await stack.client.data_converter.decode(list(payloads), [TicketInput])
        assert isinstance(started, TicketInput)
        return started
    raise AssertionError("no history")


async def exists(stack: Stack, ticket_id: str) -> bool:
    try:
        await stack.client.get_workflow_handle(f"ticket-{ticket_id}").describe()
    except RPCError as err:
        assert err.status is RPCStatusCode.NOT_FOUND
        return False
    return True


async def replies_on(stack: Stack, ticket_id: str, count: int = 1) -> list[str]:
    """The ticket's ``customer_reply`` history entries, once ``count`` have arrived."""
    handle = stack.client.get_workflow_handle(f"ticket-{ticket_id}", result_type=TicketStatus)

    async def replies() -> tuple[list[str]] | None:
        status = await status_of(handle)
        found = [h.detail or "" for h in status.history if h.kind == "customer_reply"]
        return (found,) if len(found) >= count else None  # a tuple: truthy with no replies

    [found] = await eventually(f"{count} customer replies on {ticket_id}", replies, every=0.02)
    return found


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


# --- new tickets ------------------------------------------------------------------------


async def test_a_customer_email_opens_one_ticket_with_contract_tier_tag_severity_and_receipt_time(
    listener: Listener, mailbox: Mailbox
) -> None:
    stack, t0 = listener.stack, listener.at
    message = mail(
        "Dana Ops <dana@bank.example>",
        "[SEV1] Payments cluster down",
        text="All payment APIs time out.\nSince 09:00 UTC.",
        html="<p>All payment APIs <b>time out</b>.</p>",
    )
    ticket_id = ticket_id_of(message)

    code, text = await listener.send(message)
    assert (code, text) == (250, f"2.0.0 OK: ticket {ticket_id} opened")

    handle = listener.ticket(ticket_id)
    await policy_resolved(handle)
    status = await status_of(handle)
    assert (status.customer_id, status.tier, status.severity) == (
        "example-bank",
        Tier.MISSION_CRITICAL,
        Severity.SEV1,
    )
    assert status.opened_at == t0 and status.response_due_at == t0 + 15 * M
    started = await started_input(stack, ticket_id)
    assert started.subject == "Payments cluster down"
    assert started.description == "All payment APIs time out.\nSince 09:00 UTC."
    assert (started.intake_channel, started.reporter_email) == ("email", "dana@bank.example")

    # The customer learns the ticket id (in the subject, so replies find it) and the target.
    [ack] = mailbox.received
    assert ack["To"] == "dana@bank.example" and ack["Reply-To"] == SUPPORT
    assert ack["Subject"] == f"[{ticket_id}] We received your request: Payments cluster down"
    assert ack["In-Reply-To"] == message["Message-ID"]
    assert f"<ticket-{ticket_id}@support-sla>" in ack["References"]
    assert ack["Auto-Submitted"] == "auto-replied"
    due = (t0 + 15 * M).strftime("%Y-%m-%d %H:%M UTC")
    assert f"Initial response target: 15 minutes, that is by {due}." in text_of(ack)

    # The customer's server delivers the same message again: no second ticket, no second ack.
    listener.at = t0 + M
    assert await listener.send(message) == (250, f"2.0.0 OK: ticket {ticket_id} exists")
    assert len(mailbox.received) == 1
    assert (await status_of(handle)).opened_at == t0


async def test_no_tag_gives_the_default_severity_and_a_subdomain_is_the_customer(
    listener: Listener, mailbox: Mailbox
) -> None:
    stack, t0 = listener.stack, listener.at
    message = EmailMessage()
    message["Authentication-Results"] = f"{MTA}; dmarc=pass header.from=eu.ops.bank.example"
    message["From"] = "noc@eu.ops.bank.example"
    message["To"] = SUPPORT
    message["Subject"] = "=?utf-8?q?Latency_in_Z=C3=BCrich?="
    message["Message-ID"] = make_msgid(domain="bank.example")
    message.set_content(
        "<html><body><p>p99 latency &gt; 2 s</p><script>x()</script></body>", "html"
    )
    ticket_id = ticket_id_of(message)

    assert (await listener.send(message))[0] == 250
    handle = listener.ticket(ticket_id)
    await policy_resolved(handle)
    status = await status_of(handle)
    default = load_policy().default_severity
    assert (status.customer_id, status.tier, status.severity) == (
        "example-bank",
        Tier.MISSION_CRITICAL,
        default,
    )
    assert default is Severity.SEV3 and status.response_due_at == t0 + 60 * M  # MC sev2-4: 1 h
    started = await started_input(stack, ticket_id)
    assert (started.subject, started.description) == ("Latency in Zürich", "p99 latency > 2 s")
    assert "1 hour" in text_of(mailbox.received[0])


async def test_an_unknown_sender_gets_a_polite_reply_and_no_ticket(
    listener: Listener, mailbox: Mailbox
) -> None:
    message = mail("someone@elsewhere.example", "[SEV1] please help")
    code, text = await listener.send(message)
    assert (code, text) == (250, "2.0.0 OK: no support contract for this sender")
    assert not await exists(listener.stack, ticket_id_of(message))
    [reply] = mailbox.received
    assert reply["To"] == "someone@elsewhere.example"
    assert reply["In-Reply-To"] == message["Message-ID"]
    assert reply["Auto-Submitted"] == "auto-replied"
    body = text_of(reply)
    assert "no ticket was opened" in body and f"contact form on our website ({FORM})" in body
    assert f"write to {SUPPORT} from an address at your organisation's registered" in body

    # Sent again (a retry, or the same person writing again the same day): no second reply.
    await listener.send(mail("someone@elsewhere.example", "still there?"))
    assert len(mailbox.received) == 1


async def test_automatic_mail_is_never_answered_and_a_bounce_opens_no_ticket(
    listener: Listener, mailbox: Mailbox
) -> None:
    robots = [
        (mail("alerts@monitor.example", "disk full", Auto_Submitted="auto-generated"), None),
        (mail("ooo@elsewhere.example", "Out of office", Auto_Submitted="auto-replied"), None),
        (mail("noreply@elsewhere.example", "Your invoice"), None),
        (mail("MAILER-DAEMON@mx.elsewhere.example", "Undelivered Mail"), None),
        (mail("news@elsewhere.example", "Weekly news", Precedence="bulk"), None),
        (mail("someone@elsewhere.example", "Delivery Status Notification"), ""),
        # A bounce from a customer's domain is not a ticket either.
        (mail("postfix@bank.example", "Undelivered Mail Returned to Sender"), ""),
    ]
    for message, sender in robots:
        assert (await listener.send(message, sender=sender))[0] == 250
    assert mailbox.received == []
    assert not await exists(listener.stack, ticket_id_of(robots[-1][0]))


async def test_recipients_other_than_the_support_address_are_refused(
    listener: Listener, mailbox: Mailbox
) -> None:
    message = mail("dana@bank.example", "[SEV1] down")
    code, _ = await listener.send(message, to="sales@support.example")
    assert code == 550
    assert not await exists(listener.stack, ticket_id_of(message))


async def test_a_message_over_the_size_limit_is_refused_with_552(listener: Listener) -> None:
    message = mail("dana@bank.example", "[SEV1] logs attached", text="x" * 80 + "\n")
    message.add_attachment(b"\0" * 1_100_000, maintype="application", subtype="octet-stream")
    # Declared with SIZE at MAIL FROM (as aiosmtplib does) ...
    assert (await listener.send(message))[0] == 552
    # ... or found at DATA by a client that does not declare it.
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port) as smtp:
        await smtp.mail("dana@bank.example")
        await smtp.rcpt(SUPPORT)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(bytes(message))
    assert refused.value.code == 552
    assert not await exists(listener.stack, ticket_id_of(message))


async def test_a_contract_whose_agreed_path_is_not_email_gets_a_polite_reply_and_no_ticket(
    listener: Listener, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(
        tmp_path,
        lambda p: p["customers"]["example-bank"].update(intake_channels=["web_form", "api"]),
    )
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    message = mail("dana@bank.example", "[SEV1] Payments down")
    code, text = await listener.send(message)
    assert (code, text) == (
        250,
        "2.0.0 OK: not opened (the customer's agreed intake path is not email)",
    )
    assert not await exists(listener.stack, ticket_id_of(message))
    [reply] = mailbox.received
    assert reply["To"] == "dana@bank.example" and reply["Auto-Submitted"] == "auto-replied"
    assert reply["Subject"] == "Your message to support: please use your agreed support path"
    body = text_of(reply)
    assert "email is not part of it, so no ticket was opened" in body
    assert f"- the contact form on our website ({FORM})" in body
    assert "- your organisation's integration with our support API" in body
    # Written again the same day: still no ticket, and no second reply.
    assert (await listener.send(mail("dana@bank.example", "[SEV1] still down")))[0] == 250
    assert len(mailbox.received) == 1


async def test_every_intake_rule_applies_to_mail_e_g_an_invisible_character_in_the_customer(
    listener: Listener, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contract whose id hides a zero-width space ("bank\u200b" reads as "bank") opens
    nothing from mail either: the sender's server is told why, permanently (554)."""

    def edit(policy: dict[str, Any]) -> None:
        policy["customers"]["bank\u200b"] = {"tier": "standard", "email_domains": ["zw.example"]}

    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(write_policy(tmp_path, edit)))
    message = mail("dana@zw.example", "[SEV2] Backups failing")
    code, text = await listener.send(message)
    assert code == 554
    assert text == (
        "5.6.0 this message cannot become a ticket: customer_id: must not contain invisible"
        " formatting characters (U+200B)"
    )
    assert not await exists(listener.stack, ticket_id_of(message))
    assert mailbox.received == []


async def test_without_a_tag_the_policys_default_severity_applies(
    listener: Listener, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(tmp_path, lambda p: p.update(default_severity="sev2"))
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    message = mail("dana@bank.example", "Latency is up")
    assert (await listener.send(message))[0] == 250
    handle = listener.ticket(ticket_id_of(message))
    await policy_resolved(handle)
    status = await status_of(handle)
    assert (status.tier, status.severity) == (Tier.MISSION_CRITICAL, Severity.SEV2)
    assert "Severity:  SEV2" in text_of(mailbox.received[0])


async def test_a_broken_policy_defers_mail_with_451(
    listener: Listener, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [\n")
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(broken))
    message = mail("dana@bank.example", "[SEV1] Payments down")
    code, _ = await listener.send(message)
    assert code == 451, "the sending server retries: the mail is not lost"
    assert not await exists(listener.stack, ticket_id_of(message))
    monkeypatch.delenv("SUPPORT_POLICY_FILE")
    assert await listener.send(message) == (250, f"2.0.0 OK: ticket {ticket_id_of(message)} opened")


# --- replies ----------------------------------------------------------------------------


async def test_a_reply_with_the_ticket_id_in_the_subject_is_recorded_on_that_ticket(
    listener: Listener, mailbox: Mailbox
) -> None:
    stack = listener.stack
    first = mail("dana@bank.example", "[SEV2] Backups failing")
    ticket_id = ticket_id_of(first)
    assert (await listener.send(first))[0] == 250
    await policy_resolved(listener.ticket(ticket_id))

    # A colleague at the same customer answers the acknowledgement.
    reply = mail("lee@bank.example", f"Re: [{ticket_id}] We received your request: Backups")
    code, text = await listener.send(reply)
    assert (code, text) == (250, f"2.0.0 OK: added to ticket {ticket_id}")
    assert await replies_on(stack, ticket_id) == [
        f"via email: Re: [{ticket_id}] We received your request: Backups"
    ]
    assert not await exists(stack, ticket_id_of(reply))
    assert len(mailbox.received) == 1  # the acknowledgement of the first message only


async def test_a_reply_found_by_its_references_header_is_recorded_once(
    listener: Listener, mailbox: Mailbox
) -> None:
    stack = listener.stack
    data = ticket(customer_id="example-bank", tier="mission_critical", reporter_email="x@y.example")
    handle = await open_ticket_at(stack, data, listener.at)
    reply = mail(
        "dana@bank.example",
        "Re: your notification",
        References=f"<a1@bank.example> <ticket-{data.ticket_id}@support-sla>",
    )
    assert (await listener.send(reply))[0] == 250
    assert (await listener.send(reply))[0] == 250  # delivered twice
    # Signals apply in order: once the ack shows, both deliveries have been handled.
    await handle.signal("acknowledge", Acknowledge(agent="alice"))
    await until_status(handle, "acknowledged by alice", lambda s: s.acknowledged_by == "alice")
    assert await replies_on(stack, data.ticket_id) == ["via email: Re: your notification"]
    assert not await exists(stack, ticket_id_of(reply))
    assert mailbox.received == []


async def test_a_ticket_reference_from_a_stranger_is_not_added_to_the_ticket(
    listener: Listener, mailbox: Mailbox
) -> None:
    stack = listener.stack
    data = ticket(customer_id="example-bank", tier="mission_critical")
    await open_ticket_at(stack, data, listener.at)
    stranger = mail("eve@elsewhere.example", f"Re: [{data.ticket_id}] hello")
    assert (await listener.send(stranger))[1] == "2.0.0 OK: no support contract for this sender"
    assert await replies_on(stack, data.ticket_id, count=0) == []
    assert "no ticket was opened" in text_of(mailbox.received[0])


async def test_a_reply_to_a_closed_ticket_gets_a_polite_note_and_starts_nothing(
    listener: Listener, mailbox: Mailbox
) -> None:
    stack = listener.stack
    data = ticket(customer_id="example-bank", tier="mission_critical")
    handle = await open_ticket_at(stack, data, listener.at)
    await handle.signal("acknowledge", Acknowledge(agent="alice"))
    await handle.signal("resolve", Resolve(by="alice"))
    await handle.result()

    reply = mail("dana@bank.example", f"Re: ticket {data.ticket_id} - it is back")
    code, text = await listener.send(reply)
    assert (code, text) == (250, f"2.0.0 OK: ticket {data.ticket_id} is closed")
    [note] = mailbox.received
    assert note["To"] == "dana@bank.example"
    assert f"ticket {data.ticket_id} is closed" in text_of(note)
    assert "open a new ticket" in text_of(note)
    assert not await exists(stack, ticket_id_of(reply))


# --- Temporal unreachable -----------------------------------------------------------------


def flaky(client: Client, failures: int) -> Callable[[], Awaitable[Client]]:
    """A connect function that reaches a closed port ``failures`` times, then ``client``."""

    async def connect() -> Client:
        nonlocal failures
        if failures:
            failures -= 1
            return await Client.connect(f"127.0.0.1:{free_port()}")
        return client

    return connect


async def test_temporal_unreachable_answers_451_and_the_retry_keeps_the_first_receipt_time(
    stack: Stack, mailbox: Mailbox
) -> None:
    t0 = await now_second(stack.env)
    clock = iter([t0, t0 + 2 * M])
    handler = MailboxHandler(
        flaky(stack.client, 1),
        address=SUPPORT,
        queue=stack.task_queue,
        clock=lambda: next(clock),
        guards=IntakeGuards(stack.ledger.engine),
        trusted_authserv_id=MTA,
    )
    message = mail("dana@bank.example", "[SEV1] down")
    ticket_id = ticket_id_of(message)
    stack.opened.append(f"ticket-{ticket_id}")
    async with listening(handler) as server:
        port = server.sockets[0].getsockname()[1]
        code, _ = await deliver(port, message)
        assert code == 451
        assert not await exists(stack, ticket_id) and mailbox.received == []
        # The customer's server retries once Temporal is back.
        assert (await deliver(port, message))[0] == 250
    handle = stack.client.get_workflow_handle(f"ticket-{ticket_id}", result_type=TicketStatus)
    await policy_resolved(handle)
    status = await status_of(handle)
    assert (status.opened_at, status.response_due_at) == (t0, t0 + 15 * M)


async def test_mail_that_needs_no_temporal_is_still_answered_while_it_is_down(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    async def unreachable() -> Client:
        return await Client.connect(f"127.0.0.1:{free_port()}")

    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    handler = MailboxHandler(unreachable, address=SUPPORT, guards=IntakeGuards(ledger.engine))
    async with listening(handler) as server:
        port = server.sockets[0].getsockname()[1]
        assert (await deliver(port, mail("dana@bank.example", "[SEV1] down")))[0] == 451
        assert (await deliver(port, mail("x@elsewhere.example", "hello")))[0] == 250
    assert [m["To"] for m in mailbox.received] == ["x@elsewhere.example"]
    await ledger.close()


# --- reading messages ---------------------------------------------------------------------


def test_severity_tags_and_ticket_references_in_subjects() -> None:
    assert severity_tag("[sev2]  DB slow") == (Severity.SEV2, "DB slow")
    assert severity_tag("Re: [ SEV 4 ] question") == (Severity.SEV4, "Re: question")
    assert severity_tag("[SEV9] nope") == (None, "[SEV9] nope")
    message = mail(
        "a@b.example",
        "[EXTERNAL] Re: [SEV1] [E-0a1b2c3d4e5f6a7b] ticket #T-1001. and ticket about",
        In_Reply_To="<ticket-T-7@support-sla>",
    )
    parsed = parse_mail(bytes(message), "a@b.example")
    assert parsed.ticket_candidates() == ["T-7", "E-0a1b2c3d4e5f6a7b", "T-1001"]


def test_the_description_is_cut_to_the_contract_limit() -> None:
    message = mail("a@b.example", "long", text="y" * (MAX_DESCRIPTION + 500))
    message.add_attachment(b"x", maintype="application", subtype="pdf", filename="dump.pdf")
    text = body_text(message)
    assert len(text) <= MAX_DESCRIPTION
    assert text.endswith("[message truncated]\n\n[1 attachment(s) not included]")
