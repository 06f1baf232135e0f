"""Attacks on the support mailbox (issue 15, part 3), each performed against the real
listener on loopback, a real SMTP sink for its replies and the ledger's database:

- a forged ``From`` with another envelope sender: the reply goes to the envelope sender
  and repeats nothing the sender wrote (the mailbox is no reflector);
- a forged ``From`` at a customer's domain naming that customer's open ticket: refused,
  nothing reaches the ticket, unless the sender is verified or quotes the reply token of
  our mail about that ticket;
- the once-a-day reply limit survives a restart (it is in the database);
- unparsable MIME is refused for good (5xx, not 451) and kept in the quarantine;
- deeply nested or many-part MIME is refused, and the event loop keeps serving meanwhile;
- too many recipients in one message, too many connections at once: refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiosmtplib
import pytest
import pytest_asyncio

import intake.mailbox
from contract.models import TicketStatus
from harness.processes import eventually
from harness.sinks import Mailbox
from intake.guards import IntakeGuards, limits_from_env
from intake.mailbox import (
    MAX_MIME_DEPTH,
    MAX_MIME_PARTS,
    MAX_RECIPIENTS,
    MailboxHandler,
    MailboxSettings,
    listening,
    message_key,
)
from runtime.links import KeyRing, ReplyTokens
from tests.conftest import Stack, now_second

SUPPORT = "support@support.example"
MTA = "mx.support.example"
SPAM = "CHEAP PILLS at http://spam.example/buy"


@dataclass
class Rig:
    stack: Stack
    guards: IntakeGuards
    port: int
    handler: MailboxHandler


def handler_for(stack: Stack, guards: IntakeGuards, **options: Any) -> MailboxHandler:
    return MailboxHandler(
        stack.client,
        address=SUPPORT,
        queue=stack.task_queue,
        guards=guards,
        trusted_authserv_id=MTA,
        contact_form_url="https://support.example/support/new",
        **options,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def rig(stack: Stack, mailbox: Mailbox) -> AsyncIterator[Rig]:
    guards = IntakeGuards(stack.ledger.engine)
    at = await now_second(stack.env)
    tokens = ReplyTokens(KeyRing.random())
    handler = handler_for(stack, guards, clock=lambda: at, reply_tokens=tokens)
    async with listening(handler) as server:
        yield Rig(stack, guards, server.sockets[0].getsockname()[1], handler)


def message(sender: str, subject: str, body: str = "hello", **headers: str) -> EmailMessage:
    mail = EmailMessage()
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail["From"] = sender
    mail["To"] = SUPPORT
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="sender.example")
    mail.set_content(body)
    return mail


async def deliver(port: int, mail: EmailMessage | bytes, sender: str) -> tuple[int, str]:
    try:
        _, text = await aiosmtplib.send(
            mail, sender=sender, recipients=[SUPPORT], hostname="127.0.0.1", port=port
        )
        return 250, text
    except aiosmtplib.SMTPResponseException as err:
        return err.code, err.message


def text_of(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


# --- the reflector -----------------------------------------------------------------------


async def test_a_forged_from_gets_its_reply_at_the_envelope_sender_without_its_text(
    rig: Rig, mailbox: Mailbox
) -> None:
    """The attacker writes From: victim, subject: spam, from their own envelope address:
    the answer goes to the attacker's envelope address and carries no word of theirs."""
    forged = message("victim@elsewhere.example", SPAM, body=SPAM)
    code, _ = await deliver(rig.port, forged, sender="attacker@evil.example")
    assert code == 250
    [reply] = mailbox.received
    assert mailbox.envelopes == [["attacker@evil.example"]], "never the forged From"
    assert reply["To"] == "attacker@evil.example"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert "spam.example" not in reply.as_string() and "PILLS" not in reply.as_string()


async def test_a_forged_customer_from_is_acknowledged_at_the_envelope_sender_only(
    rig: Rig, mailbox: Mailbox
) -> None:
    """From a customer's domain, but not verified (no DMARC pass from the trusted MTA, a
    forged one below it): the acknowledgement repeats no subject, and goes to the
    envelope sender, not the address in From."""
    forged = message("dana@bank.example", f"[SEV3] {SPAM}")
    # The forged header travels below the one the trusted MTA prepends (which says fail).
    raw = (
        f"Authentication-Results: {MTA}; dmarc=fail header.from=bank.example\r\n"
        f"Authentication-Results: {MTA}; dmarc=pass header.from=bank.example\r\n"
    ).encode() + forged.as_bytes()
    rig.stack.opened.append(f"ticket-E-{message_key(b'', str(forged['Message-ID']))}")
    code, _ = await deliver(rig.port, raw, sender="attacker@evil.example")
    assert code == 250
    to_victim = [m for m in mailbox.received if m["To"] == "dana@bank.example"]
    for mail in mailbox.received:
        assert "spam.example" not in mail.as_string() and "PILLS" not in mail.as_string()
    acks = [m for m in mailbox.received if m["To"] == "attacker@evil.example"]
    assert acks, "the acknowledgement goes to the envelope sender"
    assert all("confirm" in text_of(m).lower() for m in to_victim), (
        "the only mail to the From address is the confirmation of part 1, if any"
    )


async def test_automatic_and_null_senders_are_never_answered(rig: Rig, mailbox: Mailbox) -> None:
    auto = message("someone@elsewhere.example", "hi", Auto_Submitted="auto-generated")
    assert (await deliver(rig.port, auto, sender="someone@elsewhere.example"))[0] == 250
    bounce = message("someone@elsewhere.example", "hi")
    assert (await deliver(rig.port, bounce, sender=""))[0] == 250
    assert mailbox.received == []


async def test_the_once_a_day_reply_limit_survives_a_restart(rig: Rig, mailbox: Mailbox) -> None:
    first = message("someone@elsewhere.example", "question")
    assert (await deliver(rig.port, first, sender="someone@elsewhere.example"))[0] == 250
    assert len(mailbox.received) == 1
    # A new listener process on the same database (a restart): no second reply today.
    restarted = handler_for(rig.stack, IntakeGuards(rig.stack.ledger.engine))
    async with listening(restarted) as server:
        port = server.sockets[0].getsockname()[1]
        again = message("someone@elsewhere.example", "question again")
        assert (await deliver(port, again, sender="someone@elsewhere.example"))[0] == 250
    assert len(mailbox.received) == 1


# --- replies to a ticket: only with proof ---------------------------------------------------


def dmarc_pass(domain: str) -> dict[str, str]:
    return {"Authentication_Results": f"{MTA}; dmarc=pass header.from={domain}"}


async def customer_replies(rig: Rig, ticket_id: str) -> list[str]:
    handle = rig.stack.client.get_workflow_handle(f"ticket-{ticket_id}")
    status = await handle.query("status", result_type=TicketStatus)
    return [h.detail or "" for h in status.history if h.kind == "customer_reply"]


async def test_a_forged_customer_from_adds_nothing_to_the_customers_open_ticket(
    rig: Rig, mailbox: Mailbox
) -> None:
    """The attack: anyone can write ``From: dana@bank.example`` and name the bank's open
    ticket, in the subject, in References, with a made-up reply token, or with the valid
    token of the attacker's own ticket. Each is refused with a fixed answer, the ticket
    records nothing and nobody is mailed. The genuine customer's reply quotes the token of
    our acknowledgement (or comes with a DMARC pass) and is recorded."""
    opened = message("dana@bank.example", "[SEV2] Payments slow", **dmarc_pass("bank.example"))
    ticket_id = f"E-{message_key(b'', str(opened['Message-ID']))}"
    rig.stack.opened.append(f"ticket-{ticket_id}")
    assert await deliver(rig.port, opened, sender="dana@bank.example") == (
        250,
        f"2.0.0 OK: ticket {ticket_id} opened",
    )
    [ack] = mailbox.received
    assert str(ack["Message-ID"]).startswith(f"<reply-{ticket_id}.")

    # The attacker's own forged mail opens a Community ticket: its acknowledgement carries
    # a valid token, for that ticket only.
    own = message("lee@bank.example", "hello")
    own_id = f"E-{message_key(b'', str(own['Message-ID']))}"
    rig.stack.opened.append(f"ticket-{own_id}")
    assert (await deliver(rig.port, own, sender="attacker@evil.example"))[0] == 250
    own_token = str(mailbox.received[-1]["Message-ID"])
    assert own_token.startswith(f"<reply-{own_id}.")
    sent = len(mailbox.received)

    thread = f"<ticket-{ticket_id}@support-sla>"
    forged_token = f"<reply-{ticket_id}.{'A' * 43}@support-sla>"
    attempts = [
        message("dana@bank.example", f"Re: [{ticket_id}] {SPAM}"),
        message("lee@bank.example", f"Re: [{ticket_id}] {SPAM}"),
        message("dana@bank.example", SPAM, In_Reply_To=thread, References=thread),
        message(
            "dana@bank.example",
            SPAM,
            In_Reply_To=forged_token,
            References=f"{thread} {forged_token}",
        ),
        # A DMARC pass, but not from the trusted MTA.
        message(
            "dana@bank.example",
            f"Re: [{ticket_id}] {SPAM}",
            Authentication_Results="mx.evil.example; dmarc=pass header.from=bank.example",
        ),
    ]
    for attempt in attempts:
        code, text = await deliver(rig.port, attempt, sender="attacker@evil.example")
        assert code == 554 and text.startswith("5.7.1 a reply is added to a ticket only"), text
        assert ticket_id not in text and "PILLS" not in text
    assert len(mailbox.received) == sent, "no reply, so nothing to reflect"
    # The valid token of the attacker's own ticket proves an answer to that ticket only.
    mixed = message("lee@bank.example", f"Re: [{ticket_id}] {SPAM}", In_Reply_To=own_token)
    assert await deliver(rig.port, mixed, sender="attacker@evil.example") == (
        250,
        f"2.0.0 OK: added to ticket {own_id}",
    )

    # The genuine reply to our acknowledgement, though her MTA vouches for nothing.
    genuine = message(
        "dana@bank.example",
        f"Re: {ack['Subject']}",
        In_Reply_To=str(ack["Message-ID"]),
        References=f"{ack['References']} {ack['Message-ID']}",
    )
    assert await deliver(rig.port, genuine, sender="dana@bank.example") == (
        250,
        f"2.0.0 OK: added to ticket {ticket_id}",
    )
    # And a verified sender's reply needs no token.
    verified = message("lee@bank.example", f"Re: [{ticket_id}] more", **dmarc_pass("bank.example"))
    assert (await deliver(rig.port, verified, sender="lee@bank.example"))[0] == 250
    replies = await eventually(
        "both replies recorded",
        lambda: _at_least(customer_replies(rig, ticket_id), 2),
        15,
    )
    assert len(replies) == 2 and not [r for r in replies if "PILLS" in r]
    assert len(mailbox.received) == sent


async def _at_least(found: Any, count: int) -> list[str] | None:
    replies: list[str] = await found
    return replies if len(replies) >= count else None


# --- MIME the parser cannot or must not read ---------------------------------------------


async def test_unparsable_mime_is_refused_for_good_and_kept(rig: Rig, mailbox: Mailbox) -> None:
    raw = (
        b"From: someone@elsewhere.example\r\nTo: support@support.example\r\n"
        b"Subject: broken\r\nMessage-ID: <broken-1@elsewhere.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n"
        b"no boundary, so no parts\r\n"
    )
    code, text = await deliver(rig.port, raw, sender="someone@elsewhere.example")
    assert code == 554, "permanent: the sender's server bounces it instead of retrying"
    assert "MIME structure cannot be parsed" in text and "NoBoundaryInMultipartDefect" in text
    key = text.rpartition("kept as ")[2].rstrip(")")
    kept = await rig.guards.quarantined(key)
    assert kept is not None and kept[1].endswith(b"no boundary, so no parts\r\n")
    assert "NoBoundaryInMultipartDefect" in kept[0]
    assert mailbox.received == []


def nested(depth: int) -> bytes:
    """A message whose multiparts nest ``depth`` deep."""
    head = (
        b"From: someone@elsewhere.example\r\nTo: support@support.example\r\n"
        b"Subject: nested\r\nMIME-Version: 1.0\r\n"
    )
    opening, closing = b"", b""
    for level in range(depth):
        boundary = f"b{level}".encode()
        opening += b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        opening += b"--" + boundary + b"\r\n"
        closing = b"\r\n--" + boundary + b"--\r\n" + closing
    return head + opening + b"Content-Type: text/plain\r\n\r\ndeep\r\n" + closing


async def loop_lag_while(work: Any) -> tuple[Any, float]:
    """Run ``work`` while a ticker measures the longest the event loop went unserved."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - before)

    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        done.set()
        await ticker
    return result, worst


def flat(parts: int) -> bytes:
    """A message of ``parts`` text parts side by side in one multipart."""
    message = EmailMessage()
    message["From"], message["To"] = "someone@elsewhere.example", "support@support.example"
    message["Subject"] = "many parts"
    message.set_content("first")
    for n in range(parts - 1):
        message.add_attachment(f"part {n}", filename=f"p{n}.txt")
    return message.as_bytes()


async def test_deeply_nested_mime_is_refused_and_the_loop_keeps_serving(
    rig: Rig, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the parser runs: never on an event loop (a running loop in its thread).
    on_a_loop: list[bool] = []
    parse = intake.mailbox.parse_mail

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_a_loop.append(True)
        except RuntimeError:
            on_a_loop.append(False)
        return parse(*args, **kwargs)

    monkeypatch.setattr(intake.mailbox, "parse_mail", watched)
    # Deeper than the limit, within the part count: the parser (in a thread) reads it and
    # the depth check refuses it.
    (code, text), lag = await loop_lag_while(
        deliver(rig.port, nested(MAX_MIME_DEPTH + 5), sender="someone@elsewhere.example")
    )
    assert code == 554 and f"nested more than {MAX_MIME_DEPTH} deep" in text, text
    assert lag < 0.5, f"the event loop stalled {lag:.2f} s"
    # Thousands deep (a recursion bomb for a recursive parser): refused before parsing.
    (code, text), lag = await loop_lag_while(
        deliver(rig.port, nested(5000), sender="someone@elsewhere.example")
    )
    assert code == 554 and "more than 100 MIME parts" in text, text
    assert lag < 0.5, f"the event loop stalled {lag:.2f} s"
    # Side by side, past the part limit but below what the pre-scan refuses: the parser
    # reads it and the walk counts the parts.
    code, text = await deliver(rig.port, flat(MAX_MIME_PARTS + 5), sender="a@elsewhere.example")
    assert code == 554 and f"more than {MAX_MIME_PARTS} MIME parts" in text, text
    assert "announces" not in text, text
    assert on_a_loop == [False, False, False]
    assert mailbox.received == []


async def test_text_that_only_mentions_mime_headers_is_read(rig: Rig, mailbox: Mailbox) -> None:
    """Pasted logs full of Content-Type lines are text, not parts: not refused."""
    pasted = "\n".join(f"Content-Type: text/html; boundary=x{n}" for n in range(150))
    message = EmailMessage()
    message["From"] = "someone@elsewhere.example"
    message["To"] = SUPPORT
    message["Subject"] = "headers"
    message.set_content(pasted)
    assert (await deliver(rig.port, message, sender="someone@elsewhere.example"))[0] == 250


# --- envelopes and connections -----------------------------------------------------------


async def test_too_many_recipients_in_one_message_are_refused(rig: Rig) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=rig.port)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("someone@elsewhere.example")
        codes = []
        for n in range(MAX_RECIPIENTS + 2):
            to = SUPPORT if n == 0 else f"probe{n}@support.example"
            try:
                codes.append((await client.rcpt(to)).code)
            except aiosmtplib.SMTPRecipientRefused as err:
                codes.append(err.code)
        assert codes[0] == 250 and set(codes[1:MAX_RECIPIENTS]) == {550}
        assert codes[MAX_RECIPIENTS:] == [452, 452], codes
    finally:
        await client.quit()


async def test_connections_beyond_the_limit_are_turned_away(rig: Rig) -> None:
    limited = handler_for(rig.stack, rig.guards, max_connections=2)
    async with listening(limited) as server:
        port = server.sockets[0].getsockname()[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, _ in held:
            assert (await reader.readline()).startswith(b"220")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"421 4.7.0 too many connections")
        writer.close()
        # One served connection ends: the next one is served again.
        held[0][1].write(b"QUIT\r\n")
        await held[0][0].read()
        held[0][1].close()
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220")
        writer.write(b"QUIT\r\n")
        writer.close()
        held[1][1].write(b"QUIT\r\n")
        held[1][1].close()


# --- settings ------------------------------------------------------------------------------


def test_bad_mailbox_and_limit_settings_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (
        ("SUPPORT_MAILBOX_MAX_CONNECTIONS", "0"),
        ("SUPPORT_MAILBOX_MAX_CONNECTIONS", "many"),
        ("SUPPORT_MAILBOX_TRUSTED_AUTHSERV_ID", "mx.example; dmarc=pass"),
        ("SUPPORT_MAILBOX_TRUSTED_MTA", "mx.support.example"),
        ("SUPPORT_LINK_SECRET", "short"),  # it signs the reply tokens
    ):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ValueError, match=name):
                MailboxSettings.from_env()
    monkeypatch.setenv("SUPPORT_MAILBOX_TRUSTED_AUTHSERV_ID", "mx.support.example")
    assert MailboxSettings.from_env().trusted_authserv_id == "mx.support.example"
    monkeypatch.setenv("SUPPORT_MAILBOX_TRUSTED_MTA", "10.0.0.5, 172.16.0.0/12")
    assert [str(n) for n in MailboxSettings.from_env().trusted_mta] == [
        "10.0.0.5/32",
        "172.16.0.0/12",
    ]
    with pytest.raises(ValueError, match="SUPPORT_INTAKE_LIMIT_PER_DOMAIN: '-3'"):
        limits_from_env({"SUPPORT_INTAKE_LIMIT_PER_DOMAIN": "-3"})
    assert [limit.count for limit in limits_from_env({})] == [10, 50, 30]
