"""The support mailbox: an SMTP listener that turns customers' email into tickets.

    SUPPORT_MAILBOX_ADDRESS=support@support.example python -m intake.mailbox

It takes mail for one address (``SUPPORT_MAILBOX_ADDRESS``; other recipients get 550) on
``SUPPORT_MAILBOX_HOST``:``SUPPORT_MAILBOX_PORT`` (default 127.0.0.1:2525), behind the
organisation's MTA, and decides for each message:

- **a reply to a ticket**: the subject carries a ticket id (``[T-1001]``, ``ticket T-1001``,
  ``ticket #T-1001``) or ``In-Reply-To`` / ``References`` carry ``<ticket-T-1001@support-sla>``,
  and the sender belongs to that ticket (its reporter, or the domain of its customer's
  contract). It counts only with proof, since anyone can write that ``From``: the sender
  is verified (as below), or the message answers the mailbox's own mail about that ticket
  (it quotes the signed reply token of ``runtime.links.ReplyTokens`` that mail carried in
  its Message-ID). Without either it is refused (554 5.7.1, naming no ticket). An open
  ticket gets a ``customer_reply`` signal (recorded once per Message-ID); a closed one
  gets nothing, and the sender a note on how to open a new one.
- **a new ticket** from a customer's domain (``email_domains`` of the contract, or a
  subdomain), opened through the intake core (``intake.core``: every intake rule, the
  contract's tier, its agreed intake channels, the one plan): severity from a
  ``[SEV1]``..``[SEV4]`` subject tag or the policy's default, ``opened_at`` = when this
  listener received the message. The ticket id, ``E-`` + 16 hex digits of the
  Message-ID's SHA-256, is the same for a redelivered message, so it opens nothing twice.
  The customer gets an acknowledgement with the id and the response target. A contract
  whose agreed intake path is not email gets a polite reply naming the agreed path, and
  no ticket.
- **an unknown sender**: a polite reply on how to open a ticket, and no ticket.

The SMTP answer is 250 once the message is taken, 451 when Temporal (or the policy file,
or the database) is unavailable so the sending server retries later, or when the sender,
its domain or the connecting server is over its rate limit; 552 above the size limit, 554
when the message cannot become a ticket (the reason is in the answer) or its MIME
structure cannot be parsed (such a message is kept in the ``mail_quarantine`` table for
inspection, docs/mailbox.md). MIME is parsed in a worker thread, off the event loop,
within limits on nesting depth and number of parts; a message may name at most
``MAX_RECIPIENTS`` recipients and at most ``SUPPORT_MAILBOX_MAX_CONNECTIONS`` servers are
served at once.

Automatic replies (RFC 3834) go to the envelope sender (``MAIL FROM``), never to
``From``, and never to a null or automatic sender; each carries
``Auto-Submitted: auto-replied``. A reply repeats nothing the sender wrote (the subject)
unless the sender is verified: the trusted MTA's ``Authentication-Results`` says DMARC
passed for the From domain, and the envelope sender is in that domain. One sender gets
at most one reply per reason a day, recorded in the database (``intake_replies``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import re
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from html.parser import HTMLParser
from typing import Any

import aiosmtplib
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import TypeAdapter, ValidationError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from contract import names
from contract.labels import tier_label
from contract.models import (
    CONTROL_CHARACTERS,
    MAX_DESCRIPTION,
    MAX_SUBJECT,
    CustomerReply,
    EmailAddress,
    Severity,
    TicketInput,
    TicketPlan,
    new_address_problem,
    ticket_workflow_id,
)
from contract.text import header_text, thread_reference, when
from intake.core import (
    MAILBOX,
    IntakeRefused,
    InvalidTicket,
    PolicyUnavailable,
    Prepared,
    TicketConflict,
    open_unverified,
    prepare,
    start,
    unverified_reason,
)
from intake.guards import MAIL, GuardsUnavailable, IntakeGuards, limits_from_env
from policy.load import load_policy
from policy.schema import CustomerSpec, Policy, PolicyError
from runtime.connection import connect, task_queue
from runtime.links import ReplyTokens
from runtime.logs import configure_logging, forward_core_logs
from runtime.mail import ChannelConfigError, SmtpSettings
from runtime.process import run_until_stopped
from runtime.telemetry import configure_tracing, shutdown_tracing

log = structlog.get_logger("support.mailbox")

DEFAULT_ADDRESS = "support@support.example"
DEFAULT_MAX_BYTES = 1024 * 1024
REPLY_SUBJECT_LIMIT = 300  # CustomerReply.subject
REFERENCE_LIMIT = 300  # CustomerReply.reference
TRUNCATED = "\n\n[message truncated]"

OK = "250 2.0.0 OK"
TOO_BIG = "552 5.3.4 message too big for the support mailbox"
RETRY_LATER = "451 4.3.0 the support system is temporarily unavailable, please retry later"
# What sending one of the mailbox's own replies can fail with (the sender may then retry).
REPLY_ERRORS = (ChannelConfigError, aiosmtplib.SMTPException, OSError)
NOT_A_TICKET = "554 5.6.0 this message cannot become a ticket"
UNPARSABLE = "554 5.6.0 the message's MIME structure cannot be parsed"
RATE_LIMITED = "451 4.7.1 too many messages"
# A reply to a ticket from a sender neither verified nor answering our mail: it names no
# ticket (no probing which exist) and repeats nothing the sender wrote.
UNPROVEN_REPLY = (
    "554 5.7.1 a reply is added to a ticket only from a verified sender or in answer to our"
    " mail: reply to the message we sent you (keep its references), or write from a mail"
    " system that passes DMARC"
)
TOO_MANY_RECIPIENTS = "452 4.5.3 too many recipients for one message"
TOO_MANY_CONNECTIONS = b"421 4.7.0 too many connections to the support mailbox, try again later\r\n"
# What a message may contain: nested multiparts (or attached messages) at most this deep,
# at most this many parts in all. A message beyond either is refused (554), unparsed.
MAX_MIME_DEPTH = 8
MAX_MIME_PARTS = 100
# RCPT commands per message (only the support address is ever accepted).
MAX_RECIPIENTS = 5
DEFAULT_MAX_CONNECTIONS = 20

# A subject's severity tag, e.g. "[SEV1]" or "[sev 2]".
SEVERITY_TAG = re.compile(r"\[\s*sev\s*-?\s*([1-4])\s*\]", re.IGNORECASE)
# Ticket ids in a subject: "[T-1001]", "ticket T-1001", "ticket #T-1001", "ticket: T-1001".
SUBJECT_BRACKET = re.compile(r"\[\s*([A-Za-z0-9._-]{1,64})\s*\]")
SUBJECT_WORD = re.compile(r"\bticket\s*(?:#|no\.?|:)?\s*([A-Za-z0-9._-]{1,64})", re.IGNORECASE)
# Our own mail carries References: <ticket-<id>@support-sla> (notifications, acknowledgements).
HEADER_REFERENCE = re.compile(r"<ticket-([A-Za-z0-9._-]{1,64})@support-sla>")
# The mailbox's own mail has Message-ID <reply-<reply token>@support-sla> (ReplyTokens).
REPLY_TOKEN = re.compile(r"<reply-([A-Za-z0-9._-]{1,64}\.[A-Za-z0-9_-]{20,100})@support-sla>")
MAX_CANDIDATES = 5
# Addresses that are machines: never answer them (mail loops, bounces).
ROBOT_LOCAL_PART = re.compile(
    r"^(mailer-daemon|postmaster|no-?reply|no_reply|do-?not-?reply|donotreply|bounces?"
    r"|owner-.+|.+-request)([+.-].*)?$",
    re.IGNORECASE,
)
_EMAIL = TypeAdapter(EmailAddress)


def not_a_ticket(why: str) -> str:
    """The permanent refusal, with the reason on one ASCII line (the sender's server puts
    it in the bounce it sends back)."""
    reason = one_line(why).encode("ascii", "backslashreplace").decode("ascii")
    return f"{NOT_A_TICKET}: {reason}"[:500]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- reading a message -------------------------------------------------------------------


def _peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The connecting server's address (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        found = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


@dataclass(frozen=True)
class InboundMail:
    """What the mailbox needs from one message; no other part of it is kept."""

    key: str  # 16 hex digits: of the Message-ID, or of the raw bytes without one
    message_id: str | None
    envelope_sender: str  # "" for the null sender <> (bounces)
    sender: str | None  # the From address, normalised; None when unusable
    subject: str  # decoded, one line
    body: str  # text/plain, or a text rendition of text/html
    references: tuple[str, ...]  # ticket ids from In-Reply-To / References
    auto_submitted: str | None  # the Auto-Submitted keyword, None for absent or "no"
    bulk: bool  # Precedence bulk/junk/list or a mailing list
    report: bool  # a delivery or read report (multipart/report)
    # The trusted MTA's Authentication-Results says DMARC passed for the From domain.
    verified: bool = False
    # Reply tokens quoted in In-Reply-To / References (checked by the handler).
    reply_tokens: tuple[str, ...] = ()

    @property
    def reply_address(self) -> str | None:
        """Where an automatic reply goes (RFC 3834): the envelope sender, normalised;
        None for the null sender or an unusable one."""
        return normalise_address(self.envelope_sender) if self.envelope_sender else None

    @property
    def trusted_text(self) -> bool:
        """Whether a reply may repeat what the sender wrote: only to a verified sender, and
        only when the reply goes to that sender's own domain."""
        reply, sender = self.reply_address, self.sender
        if not (self.verified and reply and sender):
            return False
        domain, own = reply.rpartition("@")[2], sender.rpartition("@")[2]
        return domain == own or domain.endswith("." + own)

    @property
    def ticket_id(self) -> str:
        return f"E-{self.key}"

    @property
    def reference(self) -> str:
        """Identifies the message for ``customer_reply`` (recorded once per reference)."""
        if self.message_id and len(self.message_id) <= REFERENCE_LIMIT:
            return self.message_id
        return f"<{self.key}@support-mailbox>"

    def ticket_candidates(self) -> list[str]:
        """Ticket ids this message may answer, most reliable first (headers, then subject).
        Subject candidates need a digit, so tags like ``[EXTERNAL]`` cost no lookup."""
        found = list(self.references)
        subject = SEVERITY_TAG.sub(" ", self.subject)
        for pattern in (SUBJECT_BRACKET, SUBJECT_WORD):
            for match in pattern.finditer(subject):
                candidate = match.group(1).rstrip(".")
                if candidate and any(c.isdigit() for c in candidate):
                    found.append(candidate)
        return list(dict.fromkeys(found))[:MAX_CANDIDATES]


def message_key(raw: bytes, message_id: str | None) -> str:
    """Deterministic per message, so a redelivery maps to the same ticket."""
    source = message_id.encode("utf-8", "surrogateescape") if message_id else raw
    return hashlib.sha256(source).hexdigest()[:16]


class MimeRefused(ValueError):
    """The message's MIME structure cannot be read, or is beyond the mailbox's limits."""


# Defects that leave a multipart's parts unknown (anything else the parser mends).
STRUCTURE_DEFECTS = (
    "NoBoundaryInMultipartDefect",
    "StartBoundaryNotFoundDefect",
    "MultipartInvariantViolationDefect",
)


def _prescan(raw: bytes) -> None:
    """Refuse a message that announces far more parts than allowed (``boundary=`` and
    ``Content-Type:`` at the start of a line) before the parser, which recurses into nested
    parts, spends time on it. Text that merely mentions such lines (pasted logs) has room:
    the limit here is four times the part limit; the exact limits are checked after."""
    lowered = raw.lower()
    announced = max(
        lowered.count(b"boundary="),
        lowered.count(b"\ncontent-type:"),
    )
    if announced > 4 * MAX_MIME_PARTS:
        raise MimeRefused(f"more than {MAX_MIME_PARTS} MIME parts (it announces {announced})")


def check_structure(message: EmailMessage) -> None:
    """MimeRefused unless the message is within the depth and part limits and every
    multipart in it could be split into its parts. Walks iteratively (no recursion)."""
    stack: list[tuple[Any, int]] = [(message, 0)]
    parts = 0
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > MAX_MIME_PARTS:
            raise MimeRefused(f"more than {MAX_MIME_PARTS} MIME parts")
        if depth > MAX_MIME_DEPTH:
            raise MimeRefused(f"MIME parts nested more than {MAX_MIME_DEPTH} deep")
        for defect in getattr(part, "defects", ()):
            if type(defect).__name__ in STRUCTURE_DEFECTS:
                name = type(defect).__name__
                raise MimeRefused(f"a multipart cannot be split into its parts ({name})")
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            stack.extend((child, depth + 1) for child in payload)


def parse_mail(
    raw: bytes, envelope_sender: str | None, trusted_authserv_id: str | None = None
) -> InboundMail:
    """The message read within the limits (MimeRefused saying why not). Runs in a worker
    thread (``MailboxHandler.handle_DATA``): never on the event loop."""
    _prescan(raw)
    try:
        message = message_from_bytes(raw, policy=email_policy.default)
    except RecursionError:
        raise MimeRefused(f"MIME parts nested more than {MAX_MIME_DEPTH} deep") from None
    except Exception as err:
        raise MimeRefused(f"the parser failed ({type(err).__name__})") from None
    assert isinstance(message, EmailMessage)
    check_structure(message)
    message_id = _header(message, "Message-ID").strip() or None
    # Unusable as a reference, and our replies' In-Reply-To must not carry an encoded word.
    if message_id is not None and (
        CONTROL_CHARACTERS.search(message_id) or " " in message_id or "=?" in message_id
    ):
        message_id = None
    refs = " ".join(_header(message, name) for name in ("In-Reply-To", "References"))
    auto = _header(message, "Auto-Submitted").split(";")[0].strip().lower()
    precedence = _header(message, "Precedence").strip().lower()
    return InboundMail(
        key=message_key(raw, message_id),
        message_id=message_id,
        envelope_sender=(envelope_sender or "").strip("<>"),
        sender=_sender(message),
        subject=one_line(_header(message, "Subject")),
        body=body_text(message),
        references=tuple(dict.fromkeys(HEADER_REFERENCE.findall(refs))),
        reply_tokens=tuple(dict.fromkeys(REPLY_TOKEN.findall(refs)))[:MAX_CANDIDATES],
        auto_submitted=auto if auto and auto != "no" else None,
        bulk=precedence in ("bulk", "junk", "list") or bool(_header(message, "List-Id")),
        report=message.get_content_type() == "multipart/report",
        verified=dmarc_passed(message, trusted_authserv_id),
    )


_COMMENT = re.compile(r"\([^()]*\)")
_DMARC_PASS = re.compile(r"^\s*dmarc\s*=\s*pass\b", re.IGNORECASE)
_HEADER_FROM = re.compile(r"\bheader\.from\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)


def dmarc_passed(message: EmailMessage, trusted_authserv_id: str | None) -> bool:
    """Whether the trusted MTA vouches for the From domain: the topmost
    ``Authentication-Results`` (the one that MTA prepended; any below it came with the
    message and may be forged) names ``trusted_authserv_id`` and ``dmarc=pass`` with
    ``header.from`` equal to the From address's domain (RFC 8601, RFC 7489)."""
    if not trusted_authserv_id:
        return False
    sender = _sender(message)
    try:
        headers = message.get_all("Authentication-Results") or []
        top = str(headers[0]) if headers else ""
    except Exception:
        return False
    if sender is None or not top:
        return False
    pieces = _COMMENT.sub(" ", top).split(";")
    authserv = pieces[0].split()
    if not authserv or authserv[0].lower() != trusted_authserv_id.lower():
        return False
    domain = sender.rpartition("@")[2].lower()
    for piece in pieces[1:]:
        found = _HEADER_FROM.search(piece)
        if _DMARC_PASS.match(piece) and found and found.group(1).lower().strip(".") == domain:
            return True
    return False


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
        return "" if value is None else str(value)
    except Exception:  # a header the parser cannot make sense of is as good as absent
        return ""


def _sender(message: EmailMessage) -> str | None:
    try:
        header = message.get("From")
        addresses = getattr(header, "addresses", None)
        if addresses:
            spec = str(addresses[0].addr_spec)
        else:
            spec = getaddresses([str(header or "")])[0][1]
    except Exception:
        return None
    return normalise_address(spec)


def normalise_address(spec: str) -> str | None:
    """``Local@Example.COM`` -> ``Local@example.com`` (IDNA domain), or None if unusable."""
    local, at, domain = spec.strip().rpartition("@")
    if not at or not local or not domain:
        return None
    try:
        domain = domain.encode("idna").decode("ascii").lower()
        address = str(_EMAIL.validate_python(f"{local}@{domain}"))
    except (UnicodeError, ValidationError):
        return None
    return None if new_address_problem(address) else address


def one_line(text: str) -> str:
    return " ".join(CONTROL_CHARACTERS.sub(" ", text).split())


class _HtmlText(HTMLParser):
    """Text of an HTML body: block elements become line breaks; scripts and styles go."""

    BLOCKS = frozenset(
        "p div br li tr h1 h2 h3 h4 h5 h6 blockquote pre table ul ol hr section".split()
    )
    SKIP = frozenset(("script", "style", "head", "title"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def body_text(message: EmailMessage) -> str:
    """The message's text for the ticket's description, within the contract's limit."""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
    except Exception:
        part = None
    text = ""
    if isinstance(part, EmailMessage):
        text = _content(part)
        if part.get_content_subtype() == "html":
            text = html_to_text(text)
    text = CONTROL_CHARACTERS.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    try:
        attachments = sum(1 for _ in message.iter_attachments()) if message.is_multipart() else 0
    except Exception:
        attachments = 0
    note = f"\n\n[{attachments} attachment(s) not included]" if attachments else ""
    if len(text) + len(note) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - len(note) - len(TRUNCATED)] + TRUNCATED
    return text + note


def _content(part: EmailMessage) -> str:
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, ValueError, AssertionError):
        pass
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know: read it as UTF-8
        return payload.decode("utf-8", errors="replace")


def severity_tag(subject: str) -> tuple[Severity | None, str]:
    """(the severity of the first ``[SEVn]`` tag or None, the subject without tags)."""
    match = SEVERITY_TAG.search(subject)
    severity = Severity(f"sev{match.group(1)}") if match else None
    return severity, one_line(SEVERITY_TAG.sub(" ", subject))


def ticket_from_mail(mail: InboundMail, received: datetime, customer_id: str) -> dict[str, Any]:
    """What a customer's new message asks the intake core to open: no tier claimed (the
    contract decides), the severity of a ``[SEVn]`` subject tag (else the policy's
    default), opened when the message was received."""
    assert mail.sender is not None
    severity, subject = severity_tag(mail.subject)
    data: dict[str, Any] = {
        "ticket_id": mail.ticket_id,
        "customer_id": customer_id,
        "subject": subject[:MAX_SUBJECT],
        "description": mail.body,
        "reporter_email": mail.sender,
        "intake_channel": "email",
        "opened_at": received,
    }
    if severity is not None:
        data["severity"] = severity.value
    return data


def customer_for_sender(policy: Policy, sender: str | None) -> tuple[str, CustomerSpec] | None:
    """The contract whose ``email_domains`` cover the sender's domain (equal or a
    subdomain); the most specific domain wins when several contracts match."""
    name = policy.customer_for_email(sender) if sender is not None else None
    return (name, policy.customers[name]) if name is not None else None


def is_robot(address: str | None) -> bool:
    """A machine's address (mailer-daemon, noreply, list owners): never answered."""
    return address is not None and bool(ROBOT_LOCAL_PART.match(address.rpartition("@")[0]))


# --- what we send back -------------------------------------------------------------------


# The trusted MTA's addresses (SUPPORT_MAILBOX_TRUSTED_MTA).
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class MailboxSettings:
    host: str
    port: int
    address: str
    max_bytes: int
    contact_form_url: str | None
    trusted_authserv_id: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    public_url: str | None = None
    # From SUPPORT_LINK_SECRET (a weak one is refused here): our mail's reply tokens.
    reply_tokens: ReplyTokens | None = None
    # SUPPORT_MAILBOX_TRUSTED_MTA: the MTA's addresses, exempt from the per-client limit.
    trusted_mta: tuple[Network, ...] = ()

    @classmethod
    def from_env(cls) -> MailboxSettings:
        address = normalise_address(os.environ.get("SUPPORT_MAILBOX_ADDRESS", DEFAULT_ADDRESS))
        if address is None:
            raise ValueError("SUPPORT_MAILBOX_ADDRESS: not an email address")
        numbers = {}
        for name, default in (
            ("SUPPORT_MAILBOX_PORT", 2525),
            ("SUPPORT_MAILBOX_MAX_BYTES", DEFAULT_MAX_BYTES),
            ("SUPPORT_MAILBOX_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
        ):
            raw = os.environ.get(name, str(default))
            if not raw.strip().isdigit() or int(raw) < 1:
                raise ValueError(f"{name}: {raw!r} is not a positive whole number")
            numbers[name] = int(raw)
        authserv = os.environ.get("SUPPORT_MAILBOX_TRUSTED_AUTHSERV_ID", "").strip()
        if authserv and (" " in authserv or ";" in authserv):
            raise ValueError(
                f"SUPPORT_MAILBOX_TRUSTED_AUTHSERV_ID: {authserv!r} is not an authserv-id"
                " (the host name the MTA writes first in its Authentication-Results)"
            )
        return cls(
            host=os.environ.get("SUPPORT_MAILBOX_HOST", "127.0.0.1"),
            port=numbers["SUPPORT_MAILBOX_PORT"],
            address=address,
            max_bytes=numbers["SUPPORT_MAILBOX_MAX_BYTES"],
            contact_form_url=contact_form_url(),
            trusted_authserv_id=authserv or None,
            max_connections=numbers["SUPPORT_MAILBOX_MAX_CONNECTIONS"],
            public_url=os.environ.get("SUPPORT_PUBLIC_URL", "").rstrip("/") or None,
            reply_tokens=ReplyTokens.from_env(),
            trusted_mta=networks(os.environ.get("SUPPORT_MAILBOX_TRUSTED_MTA", "")),
        )


def networks(raw: str) -> tuple[Network, ...]:
    """``SUPPORT_MAILBOX_TRUSTED_MTA``: addresses or networks (``10.0.0.5``,
    ``172.16.0.0/12``) separated by commas; ValueError naming a bad one."""
    found = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            found.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"SUPPORT_MAILBOX_TRUSTED_MTA: {item.strip()!r} is not an IP address or network"
            ) from None
    return tuple(found)


def contact_form_url() -> str | None:
    """Named in replies: ``SUPPORT_CONTACT_FORM_URL``, else the HTTP service's form under
    ``SUPPORT_PUBLIC_URL``."""
    if os.environ.get("SUPPORT_CONTACT_FORM_URL"):
        return os.environ["SUPPORT_CONTACT_FORM_URL"]
    public = os.environ.get("SUPPORT_PUBLIC_URL", "").rstrip("/")
    return f"{public}/support/new" if public else None


AUTOMATIC_SIGN_OFF = "This message was sent automatically by the support system."


def _reply(
    mail: InboundMail,
    smtp: SmtpSettings,
    support: str,
    subject: str,
    kind: str,
    body: list[str],
    reply_token: str | None = None,
) -> EmailMessage:
    """An automatic reply (RFC 3834): to the envelope sender (never ``From``, which anyone
    can write), threaded on the message, marked auto-replied so the customer's own
    autoresponder stays quiet, replies going to the support address. ``body`` is its
    paragraphs' lines, between the greeting and the automatic sign-off. With
    ``reply_token`` (mail about a ticket) the Message-ID carries it, so a reply quoting it
    proves it answers this message."""
    to = mail.reply_address
    assert to is not None, "never built for a null or unusable envelope sender"
    text = "\n".join(["Hello,", "", *body, "", AUTOMATIC_SIGN_OFF, ""])
    message = EmailMessage()
    message["Subject"] = header_text(subject)[:250]
    message["From"] = smtp.sender
    message["To"] = to
    message["Reply-To"] = support
    message["Date"] = formatdate(localtime=False)
    own = f"reply-{reply_token}" if reply_token else f"{kind}-{mail.key}"
    message["Message-ID"] = f"<{own}@support-sla>"
    if mail.message_id:
        message["In-Reply-To"] = mail.message_id
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(text)
    return message


def acknowledgement(
    mail: InboundMail,
    ticket: TicketInput,
    plan: TicketPlan,
    policy: Policy,
    smtp: SmtpSettings,
    support: str,
    reply_token: str | None = None,
) -> EmailMessage:
    """The promise of ``plan`` (the one intake resolved) told to the customer."""
    tier = tier_label(plan.tier)
    assert ticket.opened_at is not None
    if plan.response_due_at is not None and plan.response_target is not None:
        target = duration_text(plan.response_target)
        calendar = policy.calendars.get(plan.calendar or "")
        if calendar is not None and not calendar.always_open:
            target = f"{target} of business hours ({plan.time_zone})"
        promise = (
            f"Initial response target: {target}, that is by"
            f" {when(plan.response_due_at, plan.time_zone)}."
        )
    else:
        promise = (
            "Community support has no guaranteed response time and no commercial SLA;"
            " we answer on a best-effort basis."
        )
    # What the sender wrote is repeated only to a verified sender (no reflector).
    title = f"[{ticket.ticket_id}] We received your request"
    subject_line: list[str] = []
    if mail.trusted_text:
        title += f": {ticket.subject or '(no subject)'}"
        subject_line = [f"  Subject:   {ticket.subject or '(none)'}"]
    message = _reply(
        mail,
        smtp,
        support,
        title,
        "ack",
        [
            f"we have opened ticket {ticket.ticket_id} for your message.",
            "",
            f"  Ticket:    {ticket.ticket_id}",
            *subject_line,
            f"  Tier:      {tier}",
            f"  Severity:  {plan.severity.value.upper()}",
            f"  Received:  {when(ticket.opened_at, 'UTC')}",
            "",
            promise,
            "",
            f"To add information, reply to this message and keep [{ticket.ticket_id}] in the"
            " subject. For an urgent new issue, put its severity in the subject of a new"
            " message, e.g. [SEV1] for a production outage.",
        ],
        reply_token,
    )
    # A reply to this message names the ticket in its References as well as its subject.
    chain = [mail.message_id] if mail.message_id else []
    message["References"] = " ".join(
        [*chain, thread_reference(ticket_workflow_id(ticket.ticket_id))]
    )
    return message


def held_acknowledgement(
    mail: InboundMail,
    ticket_id: str,
    link: str | None,
    smtp: SmtpSettings,
    support: str,
    form_url: str | None,
    reply_token: str | None = None,
) -> EmailMessage:
    """To an unverified sender at a contract's domain: the Community ticket, why, and the
    confirmation link (None: how else to be verified). Repeats nothing the sender wrote."""
    if link is not None:
        how = [
            "To have it handled under your organisation's support contract, confirm that you"
            " sent it by opening this link (valid for 7 days):",
            "",
            f"  {link}",
            "",
            f"Once confirmed, ticket {ticket_id} is handled under the contract, its"
            " response time counted from when we received your message.",
        ]
    else:
        form = f" ({form_url})" if form_url else ""
        how = [
            "To have a request handled under your organisation's support contract, write"
            " from your organisation's own mail system (it must pass DMARC), or use the"
            f" contact form on our website{form}, which sends you a link to confirm.",
        ]
    return _reply(
        mail,
        smtp,
        support,
        f"[{ticket_id}] We received your request",
        "ack",
        [
            f"we have opened ticket {ticket_id} for your message. It is handled as"
            " Community support for now (no guaranteed response time): your address is at"
            " the domain of a support contract, but we could not verify that the message"
            " came from it.",
            "",
            *how,
        ],
        reply_token,
    )


def unknown_sender_reply(
    mail: InboundMail, smtp: SmtpSettings, support: str, form_url: str | None
) -> EmailMessage:
    form = "the contact form on our website" + (f" ({form_url})" if form_url else "")
    return _reply(
        mail,
        smtp,
        support,
        "Your message to support: no ticket opened",
        "unknown",
        [
            f"thank you for writing to {support}. We could not match your email address to"
            " a support contract, so no ticket was opened.",
            "",
            "To open a ticket:",
            f"- use {form}, or",
            f"- write to {support} from an address at your organisation's registered email domain.",
            "",
            "If your organisation has a support contract and you think this is a mistake,"
            " please ask your account team to register your email domain.",
        ],
    )


def closed_ticket_reply(
    mail: InboundMail, ticket_id: str, smtp: SmtpSettings, support: str, form_url: str | None
) -> EmailMessage:
    form = f" ({form_url})" if form_url else ""
    return _reply(
        mail,
        smtp,
        support,
        "Your message was not added: the ticket is closed",
        "closed",
        [
            f"ticket {ticket_id} is closed, so your message was not added to it.",
            "",
            "If the issue is back or you need more help, please open a new ticket: write a"
            f" new message to {support} (keep the old ticket number out of the subject;"
            f" mention it in the text), or use the contact form on our website{form}.",
        ],
    )


CHANNEL_PATHS = {
    "web_form": "the contact form on our website",
    "api": "your organisation's integration with our support API",
    "named_contact": "your organisation's named contacts, through the channel in your contract",
    "email": "email to this address",
}


def agreed_path_reply(
    mail: InboundMail,
    agreed: tuple[str, ...],
    smtp: SmtpSettings,
    support: str,
    form_url: str | None,
) -> EmailMessage:
    """To a customer whose contract agreed another intake path than email: which one."""
    paths = []
    for channel in agreed:
        text = CHANNEL_PATHS.get(channel, channel.replace("_", " "))
        if channel == "web_form" and form_url:
            text += f" ({form_url})"
        paths.append(f"- {text}")
    return _reply(
        mail,
        smtp,
        support,
        "Your message to support: please use your agreed support path",
        "path",
        [
            f"thank you for writing to {support}. Your organisation's support contract has"
            " an agreed way to open tickets, and email is not part of it, so no ticket was"
            " opened for this message.",
            "",
            "Please open your ticket through:",
            *paths,
            "",
            "If you think this is a mistake, please ask your account team.",
        ],
    )


def duration_text(value: timedelta) -> str:
    minutes = int(value.total_seconds() // 60)
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    text = f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{text} {rest} minute{'s' if rest != 1 else ''}" if rest else text


async def send_mail(message: EmailMessage, smtp: SmtpSettings) -> None:
    """Send through the same relay, with the same security settings, as the email channel."""
    await smtp.send(message)


def _send_error(err: BaseException) -> dict[str, Any]:
    """What to log about a failed send: the kind of failure, never the addresses."""
    fields: dict[str, Any] = {"error": type(err).__name__}
    code = getattr(err, "code", None)
    if isinstance(code, int):
        fields["smtp_code"] = code
    return fields


# --- the handler -------------------------------------------------------------------------


class TemporalUnavailable(Exception):
    pass


@dataclass(frozen=True)
class TicketOnFile:
    ticket_id: str
    customer_id: str | None
    reporter_email: str | None


ClientSource = Client | Callable[[], Awaitable[Client]]


class MailboxHandler:
    """aiosmtpd handler. ``client`` is a Temporal client or a function that connects one
    (called when first needed, again after a failure); ``clock`` gives receipt times."""

    def __init__(
        self,
        client: ClientSource,
        *,
        address: str,
        queue: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        policy: Callable[[], Policy] = load_policy,
        contact_form_url: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = 60.0,
        guards: IntakeGuards | None = None,
        trusted_authserv_id: str | None = None,
        public_url: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        reply_tokens: ReplyTokens | None = None,
        trusted_mta: tuple[Network, ...] = (),
    ) -> None:
        support = normalise_address(address)
        if support is None:
            raise ValueError(f"not an email address: {address!r}")
        self.address = support
        self.queue = queue
        self.clock = clock
        self.policy = policy
        self.contact_form_url = contact_form_url
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._client = client if isinstance(client, Client) else None
        self._connect = None if isinstance(client, Client) else client
        self._connecting = asyncio.Lock()
        self._received: OrderedDict[str, datetime] = OrderedDict()
        # The database's rate limits, reply log and quarantine (the ledger's by default).
        self._guards = guards
        self.trusted_authserv_id = trusted_authserv_id
        self.public_url = public_url.rstrip("/") if public_url else None
        self.max_connections = max_connections
        # Sign the tickets' reply tokens in our mail; None: only verified replies count.
        self.reply_tokens = reply_tokens
        # The MTA's own addresses: all mail comes from there, so no per-client limit.
        self.trusted_mta = trusted_mta

    @property
    def guards(self) -> IntakeGuards:
        if self._guards is None:
            self._guards = IntakeGuards.from_env()
        return self._guards

    # aiosmtpd hooks

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        # Every RCPT of this message counts, refused ones too (no address harvesting).
        attempts = getattr(envelope, "support_rcpt_attempts", 0) + 1
        setattr(envelope, "support_rcpt_attempts", attempts)  # noqa: B010
        if attempts > MAX_RECIPIENTS:
            log.info("mail refused", reason="too_many_recipients")
            return TOO_MANY_RECIPIENTS
        if normalise_address(address) != self.address:
            log.info("mail refused", reason="unknown_recipient")
            return "550 5.1.1 no such mailbox: this server takes mail for the support address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content if isinstance(envelope.content, bytes) else b""
        if len(raw) > self.max_bytes:
            log.info("mail refused", reason="too_big", size=len(raw))
            return TOO_BIG
        key = "?"
        try:
            # The parser is CPU-bound: a worker thread, so the loop keeps serving others.
            mail = await asyncio.to_thread(
                parse_mail, raw, envelope.mail_from, self.trusted_authserv_id
            )
        except MimeRefused as err:
            return await self._unparsable(raw, envelope.mail_from or "", str(err))
        peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else None
        if mail.verified and not self._may_verify(peer):
            # The header is only as good as the server that added it: one that reached
            # this port without the MTA could have written it itself.
            log.warning("mail: a DMARC pass from a server other than the trusted MTA ignored")
            mail = replace(mail, verified=False)
        try:
            key = mail.key
            limited = await self._rate_limited(mail, session)
            if limited is not None:
                return limited
            received = self._receipt(mail.key)
            async with asyncio.timeout(self.timeout):
                answer = await self.take(mail, received)
            self._received.pop(mail.key, None)
            return answer
        except GuardsUnavailable as err:
            log.error("mail deferred: the database is unavailable", message_key=key, error=str(err))
        except (TemporalUnavailable, RPCError, TimeoutError) as err:
            log.warning("mail deferred: temporal unavailable", message_key=key, error=_name(err))
        except (PolicyError, PolicyUnavailable):
            log.error("mail deferred: the policy file is invalid", message_key=key)
        except Exception as err:
            log.error("mail deferred: unexpected error", message_key=key, error=_name(err))
        return RETRY_LATER

    async def _unparsable(self, raw: bytes, envelope_sender: str, why: str) -> str:
        """Refuse for good (the sender's server bounces it, no retry loop) and keep the
        message for inspection; 451 if it cannot be kept (so it is not lost)."""
        try:
            kept = await self.guards.quarantine(raw, envelope_sender, why, utc_now())
        except Exception as err:
            log.error("mail deferred: cannot quarantine", reason=why, error=_name(err))
            return RETRY_LATER
        log.warning("mail refused and quarantined", reason=why, quarantine_key=kept)
        detail = why.encode("ascii", "backslashreplace").decode("ascii")
        return f"{UNPARSABLE}: {detail} (kept as {kept})"[:500]

    async def _rate_limited(self, mail: InboundMail, session: Session) -> str | None:
        """451 when the sender's address, its domain or the connecting server is over its
        limit (counted in the database, so a restart forgets nothing; docs/mailbox.md).
        Not counted: automatic mail and bounces (never answered), and mail whose sender
        the trusted MTA verified (DMARC pass). Mail quoting our valid reply token for a
        ticket is not counted per address or domain. The counts are apart from the
        contact form's (source ``MAIL``: keys ``mail:...``, the form's ``form:...``), and
        the trusted MTA's own address has no per-client limit: nobody can spend a
        customer's allowance by typing its address into the form or forging its From, nor
        all inbound mail's by flooding the MTA."""
        if self._ignored(mail) is not None or mail.verified:
            return None
        address = None if self._answered(mail) else (mail.sender or mail.reply_address)
        peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else None
        keys = {
            "address": address,
            "domain": address.rpartition("@")[2] if address else None,
            "client": peer if peer and not self._from_trusted_mta(peer) else None,
        }
        try:
            refused = await self.guards.admit(keys, utc_now(), source=MAIL)
        except Exception as err:
            raise GuardsUnavailable(type(err).__name__) from err
        if refused is None:
            return None
        log.warning("mail deferred: rate limit", scope=refused.limit.scope, message_key=mail.key)
        return f"{RATE_LIMITED}: {refused.describe()}"[:500]

    def _from_trusted_mta(self, peer: str) -> bool:
        found = _peer_address(peer)
        return found is not None and any(found in network for network in self.trusted_mta)

    def _may_verify(self, peer: str | None) -> bool:
        """Whether the connecting server's ``Authentication-Results`` may verify a sender:
        the trusted MTA's address (``SUPPORT_MAILBOX_TRUSTED_MTA``), or, without that
        setting, this host only (an MTA relaying on loopback)."""
        found = _peer_address(peer) if peer else None
        if found is None:
            return False
        if self.trusted_mta:
            return any(found in network for network in self.trusted_mta)
        return found.is_loopback

    def _receipt(self, key: str) -> datetime:
        """When this listener first received the message: a retry after our own outage
        (451) keeps the first receipt time, so the customer's SLA clock is not delayed."""
        first = self._received.get(key)
        if first is None:
            first = self.clock().astimezone(UTC).replace(microsecond=0)
            self._received[key] = first
            while len(self._received) > 10_000:
                self._received.popitem(last=False)
        return first

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._connecting:
            if self._client is None:
                assert self._connect is not None
                try:
                    self._client = await self._connect()
                except Exception as err:
                    raise TemporalUnavailable(str(err)) from err
        return self._client

    # the decision

    async def take(self, mail: InboundMail, received: datetime) -> str:
        """Decide what the message is and act on it; the SMTP answer."""
        ignored = self._ignored(mail)
        if ignored:
            log.info("mail ignored", reason=ignored, message_key=mail.key)
            return f"{OK}: not processed ({ignored.replace('_', ' ')})"
        policy = self.policy()
        answered = self._answered(mail)
        candidates = list(dict.fromkeys([*answered, *mail.ticket_candidates()]))
        for candidate in candidates[:MAX_CANDIDATES]:
            found = await self._ticket(candidate)
            if found is not None and self._belongs(policy, mail.sender, found):
                if not (mail.verified or found.ticket_id in answered):
                    # Anyone can write this From: no signal, no reply, no echo.
                    log.warning(
                        "mail reply refused: sender not verified and no reply token",
                        ticket_id=found.ticket_id,
                        message_key=mail.key,
                    )
                    return UNPROVEN_REPLY
                return await self._reply_to_ticket(mail, received, found)
        customer = customer_for_sender(policy, mail.sender)
        if customer is not None:
            return await self._open(mail, received, policy, *customer)
        return await self._unknown_sender(mail)

    def _answered(self, mail: InboundMail) -> list[str]:
        """The tickets whose reply token ``mail`` quotes, validly signed: it answers our
        mail about them."""
        if self.reply_tokens is None:
            return []
        found = (self.reply_tokens.ticket(token) for token in mail.reply_tokens)
        return [ticket_id for ticket_id in found if ticket_id is not None]

    def _reply_token(self, ticket_id: str) -> str | None:
        return self.reply_tokens.token(ticket_id) if self.reply_tokens else None

    def _ignored(self, mail: InboundMail) -> str | None:
        """Mail that is never a ticket, a reply or answered: bounces, read reports,
        out-of-office replies, our own mail coming back."""
        if not mail.envelope_sender:
            return "null_sender"
        if mail.report:
            return "delivery_report"
        if mail.auto_submitted is not None and mail.auto_submitted.startswith("auto-replied"):
            return "auto_replied"
        if mail.envelope_sender.lower().startswith("mailer-daemon@"):
            return "mailer_daemon"
        if mail.sender is None:
            return "no_usable_sender"
        if mail.sender == self.address:
            return "own_address"
        return None

    def _no_reply(self, mail: InboundMail) -> str | None:
        """Why an automatic reply must not be sent (it could start a mail loop)."""
        if mail.reply_address is None:
            return "no_envelope_sender"
        if mail.auto_submitted is not None:
            return "auto_submitted"
        if mail.bulk:
            return "bulk"
        if is_robot(mail.sender) or is_robot(mail.envelope_sender):
            return "robot_address"
        return None

    async def _ticket(self, ticket_id: str) -> TicketOnFile | None:
        """The ticket with this id (open or closed), or None if there is none."""
        client = await self.client()
        handle = client.get_workflow_handle(ticket_workflow_id(ticket_id))
        try:
            description = await handle.describe()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return None
            raise
        if description.workflow_type != names.TICKET_WORKFLOW:
            return None
        # Who the ticket belongs to, from its input (closed tickets answer no query).
        run = client.get_workflow_handle(handle.id, run_id=description.run_id)
        async for event in run.fetch_history_events(page_size=1):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            try:
                [ticket] = await client.data_converter.decode(list(payloads), [TicketInput])
            except Exception:
                return TicketOnFile(ticket_id, None, None)
            return TicketOnFile(ticket_id, ticket.customer_id, ticket.reporter_email)
        return None

    @staticmethod
    def _belongs(policy: Policy, sender: str | None, ticket: TicketOnFile) -> bool:
        """Only the ticket's reporter or someone at its customer's domains may add to it."""
        if sender is None:
            return False
        if ticket.reporter_email and ticket.reporter_email.lower() == sender.lower():
            return True
        customer = customer_for_sender(policy, sender)
        return customer is not None and customer[0] == ticket.customer_id

    async def _reply_to_ticket(
        self, mail: InboundMail, received: datetime, ticket: TicketOnFile
    ) -> str:
        handle = (await self.client()).get_workflow_handle(ticket_workflow_id(ticket.ticket_id))
        reply = CustomerReply(
            received_at=received,
            subject=mail.subject[:REPLY_SUBJECT_LIMIT],
            reference=mail.reference,
            via="email",
        )
        try:
            await handle.signal(names.CUSTOMER_REPLY, reply)
            log.info("mail reply recorded", ticket_id=ticket.ticket_id, message_key=mail.key)
            return f"{OK}: added to ticket {ticket.ticket_id}"
        except RPCError as err:
            if err.status is not RPCStatusCode.NOT_FOUND:
                raise
        # The workflow has completed: the ticket is closed, and a reply never reopens it.
        try:
            outcome = await self._reply_once(
                mail,
                f"closed:{ticket.ticket_id}:{mail.reply_address}",
                lambda smtp: closed_ticket_reply(
                    mail, ticket.ticket_id, smtp, self.address, self.contact_form_url
                ),
            )
        except REPLY_ERRORS as err:
            # Nobody would learn that the message went nowhere: let the sender retry.
            log.error(
                "mail deferred: closed-ticket note not sent",
                ticket_id=ticket.ticket_id,
                **_send_error(err),
            )
            return RETRY_LATER
        log.info("mail to a closed ticket", ticket_id=ticket.ticket_id, reply=outcome)
        return f"{OK}: ticket {ticket.ticket_id} is closed"

    async def _open(
        self,
        mail: InboundMail,
        received: datetime,
        policy: Policy,
        customer_id: str,
        contract: CustomerSpec,
    ) -> str:
        data = ticket_from_mail(mail, received, customer_id)
        if not mail.verified:
            return await self._open_unverified(mail, received, policy, customer_id, data)
        try:
            # The receipt time is the mailbox's clock: the open time is checked against it.
            prepared = prepare(data, MAILBOX, policy=policy, now=received)
        except (IntakeRefused, InvalidTicket) as err:
            if isinstance(err, IntakeRefused) and err.agreed_channels:
                return await self._agreed_path(mail, customer_id, err.agreed_channels)
            # The message's text is made valid when it is read: what fails here is the
            # contract's data (e.g. its customer id), which the sender must learn about.
            log.error("mail not opened", message_key=mail.key, problems=err.problems)
            return not_a_ticket("; ".join(err.problems))
        try:
            promise = await start(await self.client(), prepared, self.queue)
        except TicketConflict as err:
            log.error("mail not opened: ticket id in use", message_key=mail.key)
            return not_a_ticket(str(err))
        fields = {
            "ticket_id": promise.ticket_id,
            "customer_id": customer_id,
            "tier": promise.tier.value,
            "severity": promise.severity.value,
        }
        if not promise.created:
            log.info("mail ticket already open", state=promise.state, **fields)
            return f"{OK}: ticket {promise.ticket_id} exists"
        log.info("mail ticket opened", **fields)
        await self._acknowledge(mail, prepared, policy)
        return f"{OK}: ticket {promise.ticket_id} opened"

    async def _open_unverified(
        self,
        mail: InboundMail,
        received: datetime,
        policy: Policy,
        customer_id: str,
        data: dict[str, Any],
    ) -> str:
        """From a contract's domain, but the trusted MTA did not vouch for the sender: the
        ticket runs as Community until the sender confirms by a link (sent only when the
        envelope sender is the From address, so never to a forged From), and says why."""
        assert mail.sender is not None
        how = (
            "the trusted mail server reported no DMARC pass for it"
            if self.trusted_authserv_id
            else "no trusted mail server is configured to vouch for it"
        )
        reason = unverified_reason(customer_id, mail.sender, how)
        try:
            held = await open_unverified(
                await self.client(),
                self.guards,
                data,
                MAILBOX,
                customer_id=customer_id,
                address=mail.sender,
                reason=reason,
                policy=policy,
                now=received,
                queue=self.queue,
            )
        except (IntakeRefused, InvalidTicket) as err:
            if isinstance(err, IntakeRefused) and err.agreed_channels:
                return await self._agreed_path(mail, customer_id, err.agreed_channels)
            log.error("mail not opened", message_key=mail.key, problems=err.problems)
            return not_a_ticket("; ".join(err.problems))
        except TicketConflict as err:
            log.error("mail not opened: ticket id in use", message_key=mail.key)
            return not_a_ticket(str(err))
        promise = held.promise
        fields = {"ticket_id": promise.ticket_id, "customer_id": customer_id}
        if not promise.created:
            log.info("mail ticket already open", state=promise.state, **fields)
            return f"{OK}: ticket {promise.ticket_id} exists"
        link = None
        if held.token and self.public_url and mail.reply_address == mail.sender:
            link = f"{self.public_url}/support/confirm?token={held.token}"
        log.info("mail ticket opened unverified", confirmation=link is not None, **fields)
        why = self._no_reply(mail)
        if why is None:
            try:
                smtp = SmtpSettings.from_env()
                message = held_acknowledgement(
                    mail,
                    promise.ticket_id,
                    link,
                    smtp,
                    self.address,
                    self.contact_form_url,
                    self._reply_token(promise.ticket_id),
                )
                await send_mail(message, smtp)
            except Exception as err:
                log.error("acknowledgement not sent", **fields, **_send_error(err))
        return f"{OK}: ticket {promise.ticket_id} opened (Community until the sender confirms)"

    async def _agreed_path(
        self, mail: InboundMail, customer_id: str, agreed: tuple[str, ...]
    ) -> str:
        """A contract whose agreed intake path is not email: a polite reply naming it (at
        most once a day per sender), and no ticket."""
        answer = f"{OK}: not opened (the customer's agreed intake path is not email)"
        try:
            outcome = await self._reply_once(
                mail,
                f"path:{customer_id}:{mail.reply_address}",
                lambda smtp: agreed_path_reply(
                    mail, agreed, smtp, self.address, self.contact_form_url
                ),
            )
        except REPLY_ERRORS as err:
            # Nobody would learn that the message went nowhere: let the sender retry.
            log.error(
                "mail deferred: agreed-path reply not sent",
                message_key=mail.key,
                **_send_error(err),
            )
            return RETRY_LATER
        log.info("mail not opened: another agreed path", reply=outcome, message_key=mail.key)
        return answer

    async def _reply_once(
        self, mail: InboundMail, key: str, build: Callable[[SmtpSettings], EmailMessage]
    ) -> str:
        """Answer ``mail`` with ``build``'s message at most once a day per ``key`` (kept in
        the database): "sent", or why not (an auto-reply, "replied_recently", ...). A
        failed send forgets ``key`` (the sender's retry may be answered) and raises."""
        why = self._no_reply(mail)
        if why is None and not await self.guards.first_reply(key, utc_now()):
            why = "replied_recently"
        if why is not None:
            return why
        try:
            smtp = SmtpSettings.from_env()
            await send_mail(build(smtp), smtp)
        except REPLY_ERRORS:
            await self.guards.forget_reply(key)
            raise
        return "sent"

    async def _acknowledge(self, mail: InboundMail, prepared: Prepared, policy: Policy) -> None:
        """Tell the customer the ticket id and the response they are owed (the promise of
        the plan intake resolved). A failure is logged and changes nothing: the ticket is
        open and its clock runs."""
        ticket = prepared.ticket
        why = self._no_reply(mail)
        if why is not None:
            log.info("acknowledgement not sent", ticket_id=ticket.ticket_id, reason=why)
            return
        try:
            smtp = SmtpSettings.from_env()
            token = self._reply_token(ticket.ticket_id)
            message = acknowledgement(
                mail, ticket, prepared.plan, policy, smtp, self.address, token
            )
            await send_mail(message, smtp)
        except Exception as err:
            log.error("acknowledgement not sent", ticket_id=ticket.ticket_id, **_send_error(err))
            return
        log.info("acknowledgement sent", ticket_id=ticket.ticket_id)

    async def _unknown_sender(self, mail: InboundMail) -> str:
        try:
            outcome = await self._reply_once(
                mail,
                f"unknown:{mail.reply_address}",
                lambda smtp: unknown_sender_reply(mail, smtp, self.address, self.contact_form_url),
            )
        except REPLY_ERRORS as err:
            log.error(
                "mail from an unknown sender: reply not sent",
                message_key=mail.key,
                **_send_error(err),
            )
        else:
            log.info("mail from an unknown sender", reply=outcome, message_key=mail.key)
        return f"{OK}: no support contract for this sender"


def _name(err: BaseException) -> str:
    if isinstance(err, RPCError):
        return f"RPCError({err.status.name if err.status else 'unknown'})"
    return type(err).__name__


# --- the listener ------------------------------------------------------------------------


@dataclass
class _Gate:
    """The connections being served, against the limit."""

    limit: int
    active: int = 0


class _GatedSMTP(SMTP):
    """aiosmtpd's server, but a connection beyond the gate's limit is answered 421 and
    closed at once (the sending server tries again later)."""

    def __init__(self, gate: _Gate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._counted = False
        self._turned_away = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None and self._original_transport is None
        if first:
            if self._gate.active >= self._gate.limit:
                log.warning("connection refused: too many", limit=self._gate.limit)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(TOO_MANY_CONNECTIONS)
                transport.close()
                self._turned_away = True
                return
            self._gate.active += 1
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._gate.active -= 1
            self._counted = False
        if self._turned_away:
            return
        super().connection_lost(error)


@asynccontextmanager
async def listening(
    handler: MailboxHandler, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[asyncio.Server]:
    """An SMTP server for ``handler`` on this event loop (the Temporal client's loop);
    ``port=0`` takes a free port (``server.sockets[0].getsockname()[1]``)."""
    loop = asyncio.get_running_loop()
    hostname = handler.address.rpartition("@")[2]
    gate = _Gate(handler.max_connections)
    server = await loop.create_server(
        lambda: _GatedSMTP(
            gate,
            handler,
            data_size_limit=handler.max_bytes,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident="support mailbox",
            loop=loop,
        ),
        host=host,
        port=port,
    )
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def run(settings: MailboxSettings, stop: asyncio.Event) -> None:
    # With an OTLP endpoint set, a ticket opened by mail is traced from here through the
    # worker, like one opened through the API.
    interceptors = configure_tracing("support-mailbox")
    handler = MailboxHandler(
        lambda: connect(interceptors),
        address=settings.address,
        queue=task_queue(),
        contact_form_url=settings.contact_form_url,
        max_bytes=settings.max_bytes,
        guards=IntakeGuards.from_env(),
        trusted_authserv_id=settings.trusted_authserv_id,
        public_url=settings.public_url,
        max_connections=settings.max_connections,
        reply_tokens=settings.reply_tokens,
        trusted_mta=settings.trusted_mta,
    )
    try:
        # The database's tables must be there (rate limits, reply log, quarantine).
        await handler.guards.ready()
    except GuardsUnavailable as err:
        log.error("intake guards unavailable; mail is deferred until fixed", error=str(err))
    try:
        await handler.client()
    except TemporalUnavailable:
        # Keep listening: mail gets 451 (the sender retries) until Temporal is back.
        log.warning("temporal unavailable at start; mail is deferred until it is back")
    try:
        async with listening(handler, settings.host, settings.port):
            log.info(
                "mailbox listening",
                host=settings.host,
                port=settings.port,
                task_queue=handler.queue,
                max_bytes=settings.max_bytes,
                trusted_authserv_id=settings.trusted_authserv_id,
                trusted_mta=[str(network) for network in settings.trusted_mta],
                # Off without SUPPORT_LINK_SECRET: only verified senders' replies count.
                reply_tokens=settings.reply_tokens is not None,
            )
            await stop.wait()
    finally:
        await handler.guards.close()
        shutdown_tracing()
    log.info("mailbox stopped")


def main() -> None:
    configure_logging(os.environ.get("SUPPORT_LOG_LEVEL", "INFO"))
    # aiosmtpd logs every command line (addresses included) at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    forward_core_logs()
    try:
        settings = MailboxSettings.from_env()
        limits_from_env()  # names a rate limit that is not a positive number
        load_policy()  # refuse to start on a broken policy file, loudly
    except (ValueError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    run_until_stopped(lambda stop: run(settings, stop))


if __name__ == "__main__":
    main()
