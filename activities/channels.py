"""The notification channels: what each message says and how it reaches its sink.

``Notification`` is one step's message for one recipient (deadline in the recipient's time
zone and in UTC, what step this is, how to acknowledge). ``ChannelSender`` sends it:

- ``log``: a structured log line (an acknowledge link in it redacted: ``runtime.logs``);
- ``webhook``: generic JSON (every field plus the text) for any HTTP endpoint;
- ``chat``: a Slack-compatible incoming webhook (``text`` plus ``blocks``);
- ``pager``: a PagerDuty Events API v2 ``trigger`` (``dedup_key`` = the ticket's workflow
  id, so every step of one ticket is one incident, and an ack or resolve clears it);
- ``email``: SMTP, STARTTLS / implicit TLS / auth from the worker's environment
  (``runtime.mail``, the relay the support mailbox's replies use too).

Errors are classified for the caller: ``ChannelConfigError`` (``runtime.mail``: a 4xx, a
missing setting, a refused address: retrying cannot help) or ``TransientDeliveryError``
(5xx, 408/429, timeouts, connection errors: retry).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from functools import cached_property
from typing import Any

import aiosmtplib
import httpx
import structlog

from contract.labels import tier_label
from contract.models import Channel, ChannelKind, PageUpdate, Recipient, StepDelivery
from contract.text import header_text, thread_reference, when
from runtime.links import AckLinks, ReplyTokens
from runtime.logs import redact
from runtime.mail import ChannelConfigError, SmtpSettings

log = structlog.get_logger("support.notify")

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
STEP_HEADLINES = {
    "intake": "New ticket",
    "warning": "SLA warning: response due soon",
    "breach": "SLA BREACHED: response target missed",
    "repeat": "SLA breached, still unacknowledged",
    "sow": "Statement of work",
    "retriage": "Severity raised",
    "verified": "Requester verified: now under contract",
    "customer_reply": "Customer replied",
}
EMAIL_TAGS = {
    "intake": "New",
    "warning": "SLA warning",
    "breach": "SLA BREACH",
    "repeat": "SLA BREACH, unacknowledged",
    "sow": "Statement of work",
    "retriage": "Severity raised",
    "verified": "Under contract",
    "customer_reply": "Customer reply",
}
# A step of another target's ladder (next reply, resolution): "<Target> due soon" ...
TARGET_HEADLINES = {
    "warning": "SLA warning: {target} due soon",
    "breach": "SLA BREACHED: {target} target missed",
    "repeat": "SLA breached, {target} still missing",
}
PAGER_SEVERITY = {"sev1": "critical", "sev2": "error", "sev3": "warning", "sev4": "info"}


class TransientDeliveryError(Exception):
    """The sink is down, slow or busy; retry later."""


def slack_escape(text: str) -> str:
    """Slack mrkdwn control characters; customer text must never ping or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def ack_command(workflow_id: str) -> str:
    return (
        f"temporal workflow signal --workflow-id {workflow_id} --name acknowledge"
        ' --input \'{"agent": "<your name>"}\''
    )


@dataclass(frozen=True)
class Notification:
    """One step's message for one recipient, rendered per channel."""

    key: str
    request: StepDelivery
    recipient: Recipient

    @classmethod
    def of(cls, request: StepDelivery, recipient: Recipient, key: str) -> Notification:
        return cls(key=key, request=request, recipient=recipient)

    @property
    def time_zone(self) -> str:
        return self.recipient.time_zone or self.request.time_zone

    @property
    def tier(self) -> str:
        return tier_label(self.request.tier)

    @property
    def headline(self) -> str:
        r = self.request
        return (
            f"{self.what} [{self.tier} {r.severity.value.upper()}]"
            f" ticket {r.ticket_id} for customer {r.customer_id}"
        )

    @property
    def what(self) -> str:
        r = self.request
        if r.metric is not None and r.kind in TARGET_HEADLINES:
            return TARGET_HEADLINES[r.kind].format(target=r.metric.value.replace("_", " "))
        return STEP_HEADLINES.get(r.kind, r.kind)

    @property
    def acknowledgeable(self) -> bool:
        """Whether the message says how to acknowledge (a link, the raw signal): only to the
        vendor's responders. A customer's contact is told of the ticket and its deadline."""
        return (
            self.recipient.role == "responder"
            and self.request.metric is None
            and self.request.kind
            in (
                "intake",
                "warning",
                "breach",
                "repeat",
                "retriage",
                "verified",
            )
        )

    @cached_property
    def ack_link(self) -> str | None:
        """A signed link to the board's acknowledge step, bound to this ticket and this
        recipient, with its own id (it acknowledges once), for a responder, when the worker
        knows the service (SUPPORT_PUBLIC_URL and SUPPORT_LINK_SECRET, shared with the HTTP
        service)."""
        links = AckLinks.from_env() if self.acknowledgeable else None
        return links.url(self.request.ticket_id, self.recipient.name) if links else None

    @property
    def message(self) -> str | None:
        """The step's free text: the customer's version for a customer's contact."""
        r = self.request
        if self.recipient.role == "customer" and r.customer_message is not None:
            return r.customer_message
        return r.message

    @property
    def due(self) -> str | None:
        """The response deadline, for a step of the first response's ladder (another
        target's step says its own deadline in its message)."""
        due = self.request.response_due_at
        if due is None or self.request.metric is not None:
            return None
        return when(due, self.time_zone)

    def text(self) -> str:
        """Plain text shared by every channel (customer text is inert in plain text)."""
        r = self.request
        lines = [self.headline, f"Subject: {r.subject or '(none)'}", f"Step: {r.step}"]
        if self.due is not None:
            lines.append(f"Response due: {self.due}")
        if self.message:
            lines.append(self.message)
        if self.acknowledgeable:
            if self.ack_link:
                lines.append(f"Acknowledge in the browser: {self.ack_link}")
            lines.append(f"Acknowledge: {ack_command(r.workflow_id)}")
        return "\n".join(lines)

    def fields(self) -> dict[str, Any]:
        r = self.request
        return {
            "idempotency_key": self.key,
            "workflow_id": r.workflow_id,
            "ticket_id": r.ticket_id,
            "customer_id": r.customer_id,
            "tier": r.tier.value,
            "severity": r.severity.value,
            "step": r.step,
            "kind": r.kind,
            "due_at": r.due_at.isoformat(),
            "response_due_at": r.response_due_at.isoformat() if r.response_due_at else None,
            "subject": r.subject,
            "recipient": self.recipient.name,
            "acknowledge": ack_command(r.workflow_id) if self.acknowledgeable else None,
            "acknowledge_url": self.ack_link,
        }

    def webhook_payload(self) -> dict[str, Any]:
        return {**self.fields(), "text": self.text()}

    def slack_payload(self) -> dict[str, Any]:
        r = self.request
        facts = [
            f"*Ticket*\n{slack_escape(r.ticket_id)}",
            f"*Customer*\n{slack_escape(r.customer_id)}",
            f"*Tier / severity*\n{self.tier} {r.severity.value.upper()}",
            f"*Step*\n{slack_escape(r.step)}",
        ]
        if self.due is not None:
            facts.append(f"*Response due*\n{self.due}")
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": self.headline[:150], "emoji": False},
            },
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in facts]},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Subject:* {slack_escape(r.subject or '(none)')}",
                },
            },
        ]
        if self.message:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(self.message)}}
            )
        if self.ack_link:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Acknowledge"},
                            "style": "primary",
                            "url": self.ack_link,
                        }
                    ],
                }
            )
        if self.acknowledgeable:
            blocks.append(
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": f"Acknowledge: `{ack_command(r.workflow_id)}`"}
                    ],
                }
            )
        return {"text": slack_escape(self.text()), "blocks": blocks}

    def pagerduty_event(self, routing_key: str) -> dict[str, Any]:
        r = self.request
        return {
            "routing_key": routing_key,
            "event_action": "trigger",
            # One incident per ticket: later steps add to it; an ack or resolve clears it.
            "dedup_key": r.workflow_id,
            "payload": {
                "summary": f"{self.headline}: {r.subject}"[:1024],
                "source": "support-sla",
                "severity": PAGER_SEVERITY[r.severity.value],
                "timestamp": r.due_at.isoformat(),
                "component": r.customer_id,
                "group": r.tier.value,
                "class": r.kind,
                "custom_details": self.fields(),
            },
            "client": "support-sla",
        }

    def email(self, sender: str, to: list[str]) -> EmailMessage:
        r = self.request
        message = EmailMessage()
        tag = EMAIL_TAGS.get(r.kind, r.kind) if r.metric is None else self.what.split(":")[0]
        message["Subject"] = header_text(
            f"[{tag}] {self.tier} {r.severity.value.upper()} ticket {r.ticket_id}"
            f" ({r.customer_id}): {r.subject}"
        )[:250]
        message["From"] = sender
        message["To"] = ", ".join(to)
        message["Date"] = formatdate(localtime=False)
        # The same key always gives the same Message-ID: a mailbox that keeps one message
        # per Message-ID drops the copy a retry after a lost "250 OK" would send.
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@support-sla>"
        references = [thread_reference(r.workflow_id)]
        tokens = ReplyTokens.from_env() if self.recipient.role == "customer" else None
        if tokens is not None:
            # A customer's reply to this mail quotes it: the mailbox counts the reply as the
            # customer's without a DMARC pass (docs/mailbox.md#replies-need-proof).
            references.append(tokens.reference(r.ticket_id))
        message["References"] = " ".join(references)
        message["X-Support-Idempotency-Key"] = self.key
        message["X-Support-Ticket"] = r.ticket_id
        lines = [
            self.headline,
            "",
            f"Tier:      {self.tier}",
            f"Severity:  {r.severity.value.upper()}",
            f"Customer:  {r.customer_id}",
            f"Subject:   {r.subject or '(none)'}",
            f"Step:      {r.step} ({r.kind})",
        ]
        if self.due is not None:
            lines.append(f"Deadline:  {self.due}")
        if self.message:
            lines += ["", self.message]
        if self.acknowledgeable:
            lines += [
                "",
                *([f"To acknowledge in the browser: {self.ack_link}", ""] if self.ack_link else []),
                "To acknowledge (this stops the escalation), run:",
                f"  {ack_command(r.workflow_id)}",
            ]
        lines += ["", f"Delivery key: {self.key}"]
        message.set_content("\n".join(lines) + "\n")
        return message


class ChannelSender:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def send(self, channel: Channel, message: Notification) -> None:
        if channel.type is ChannelKind.LOG:
            r = message.request
            log.warning(
                "notification",
                channel="log",
                recipient=message.recipient.name,
                idempotency_key=message.key,
                ticket_id=r.ticket_id,
                step=r.step,
                kind=r.kind,
                tier=r.tier.value,
                severity=r.severity.value,
                response_due_at=r.response_due_at.isoformat() if r.response_due_at else None,
                # The log is no place for a link that acknowledges: its token is redacted
                # (the other channels carry it to the responder).
                text=redact(message.text()),
            )
        elif channel.type is ChannelKind.WEBHOOK:
            await self._post("webhook", _url(channel), message.webhook_payload(), message.key)
        elif channel.type is ChannelKind.CHAT:
            await self._post("chat", _url(channel), message.slack_payload(), message.key)
        elif channel.type is ChannelKind.PAGER:
            event = message.pagerduty_event(_routing_key(channel))
            await self._post("pager", _url(channel), event, message.key)
        elif channel.type is ChannelKind.EMAIL:
            await self._email(channel, message)
        else:  # pragma: no cover - the enum is exhaustive
            raise ChannelConfigError(f"unknown channel {channel.type}")

    async def update_page(self, channel: Channel, update: PageUpdate, key: str) -> None:
        event = {
            "routing_key": _routing_key(channel),
            "event_action": update.action,
            "dedup_key": update.workflow_id,
        }
        await self._post("pager", _url(channel), event, key)

    async def _post(self, kind: str, url: str, body: dict[str, Any], key: str) -> None:
        try:
            response = await self.http.post(url, json=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as err:
            raise TransientDeliveryError(f"{type(err).__name__}: {err}") from err
        status = response.status_code
        if 400 <= status < 500 and status not in (408, 429):
            raise ChannelConfigError(f"{kind} answered {status}: {response.text[:200]}")
        if status >= 300:
            raise TransientDeliveryError(f"{kind} answered {status}")

    async def _email(self, channel: Channel, message: Notification) -> None:
        to = list(channel.to)
        if channel.to_env:
            value = os.environ.get(channel.to_env, "")
            to += [a.strip() for a in value.split(",") if a.strip()]
            if not value:
                raise ChannelConfigError(
                    f"email addresses missing: environment variable {channel.to_env} is not set"
                )
        smtp = SmtpSettings.from_env()
        try:
            await smtp.send(message.email(smtp.sender, to))
        except aiosmtplib.SMTPAuthenticationError as err:
            raise ChannelConfigError(f"SMTP authentication refused: {err.message}") from err
        except aiosmtplib.SMTPRecipientsRefused as err:
            refused = "; ".join(f"{e.recipient}: {e.code} {e.message}" for e in err.recipients)
            if all(e.code >= 500 for e in err.recipients):
                raise ChannelConfigError(f"SMTP refused the recipients: {refused}") from err
            raise TransientDeliveryError(f"SMTP deferred the recipients: {refused}") from err
        except aiosmtplib.SMTPResponseException as err:
            if err.code >= 500 and not isinstance(err, aiosmtplib.SMTPServerDisconnected):
                raise ChannelConfigError(f"SMTP refused: {err.code} {err.message}") from err
            raise TransientDeliveryError(f"SMTP answered {err.code} {err.message}") from err
        except aiosmtplib.SMTPNotSupported as err:
            raise ChannelConfigError(f"SMTP server: {err}") from err
        except (aiosmtplib.SMTPException, OSError) as err:
            raise TransientDeliveryError(f"SMTP {type(err).__name__}: {err}") from err


def _url(channel: Channel) -> str:
    url = channel.url or (os.environ.get(channel.url_env) if channel.url_env else None)
    if url:
        return url
    if channel.type is ChannelKind.PAGER:
        return PAGERDUTY_EVENTS_URL
    raise ChannelConfigError(
        f"{channel.type.value} URL missing: environment variable {channel.url_env} is not set"
    )


def _routing_key(channel: Channel) -> str:
    key = channel.routing_key or (
        os.environ.get(channel.routing_key_env) if channel.routing_key_env else None
    )
    if not key:
        raise ChannelConfigError(
            f"pager routing key missing: environment variable {channel.routing_key_env} is not set"
        )
    return key
