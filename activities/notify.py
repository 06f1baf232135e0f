"""Notify an escalation step's recipients on their channels, exactly once per key.

Each delivery is keyed ``<workflow id>/<step>/<recipient>``. Before sending, the ledger's
delivery log is checked; after the sink accepted, the key is stored. Webhooks also carry
the key as ``Idempotency-Key`` so a sink can drop the rare duplicate from a crash between
"accepted" and "stored". Channels in this module: ``log`` (a structured log line) and
``webhook`` (HTTP POST of Slack-compatible JSON).

Error classes: a sink's 5xx, timeout or connection error is transient and the activity
retries (already-delivered recipients are skipped); a configuration error (4xx, missing
URL) is permanent for that recipient: it is reported in the result, logged loudly and
recorded, and the other recipients still get the message.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger import SlaLedger
from support.models import (
    Channel,
    ChannelKind,
    DeliveryFailure,
    Recipient,
    StepDelivery,
    StepDeliveryResult,
)

log = structlog.get_logger("support.notify")

TIER_LABELS = {
    "community": "Community",
    "standard": "Standard",
    "premium": "Premium",
    "mission_critical": "Mission Critical",
}
STEP_HEADLINES = {
    "intake": "New ticket",
    "warning": "SLA warning: response due soon",
    "breach": "SLA BREACHED: response target missed",
    "repeat": "SLA breached, still unacknowledged",
    "sow": "Statement of work",
}


class ChannelConfigError(Exception):
    """A recipient's channel is misconfigured; retrying cannot help."""


class TransientDeliveryError(Exception):
    pass


def slack_escape(text: str) -> str:
    """Slack mrkdwn control characters; customer text must never ping or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(instant: datetime, time_zone: str) -> str:
    local = instant.astimezone(ZoneInfo(time_zone))
    utc = instant.strftime("%Y-%m-%d %H:%M UTC")
    if time_zone == "UTC":
        return utc
    return f"{local.strftime('%Y-%m-%d %H:%M %Z')} ({utc})"


def render_text(request: StepDelivery) -> str:
    """The notification body shared by every channel (plain text, customer text escaped)."""
    tier = TIER_LABELS.get(request.tier.value, request.tier.value)
    headline = STEP_HEADLINES.get(request.kind, request.kind)
    lines = [
        f"{headline} [{tier} {request.severity.value.upper()}] ticket {request.ticket_id}"
        f" for customer {request.customer_id}",
        f"Subject: {request.subject or '(none)'}",
        f"Step: {request.step}",
    ]
    if request.response_due_at is not None:
        lines.append(f"Response due: {_when(request.response_due_at, request.time_zone)}")
    if request.message:
        lines.append(request.message)
    if request.kind in ("intake", "warning", "breach", "repeat"):
        lines.append(
            f"Acknowledge: temporal workflow signal --workflow-id {request.workflow_id}"
            ' --name acknowledge --input \'{"agent": "<your name>"}\''
        )
    return "\n".join(lines)


class NotifyActivities:
    def __init__(self, ledger: SlaLedger, http: httpx.AsyncClient) -> None:
        self.ledger = ledger
        self.http = http

    @activity.defn(name="deliver_step")
    async def deliver_step(self, request: StepDelivery) -> StepDeliveryResult:
        text = render_text(request)
        outcomes = await asyncio.gather(
            *(self._deliver_to(recipient, request, text) for recipient in request.recipients)
        )
        delivered = [
            r.name
            for r, outcome in zip(request.recipients, outcomes, strict=True)
            if outcome is None
        ]
        failures = [o for o in outcomes if isinstance(o, DeliveryFailure)]
        transient = [o for o in outcomes if isinstance(o, str)]
        if transient:
            # Raised after trying everyone (concurrently, so one hanging sink cannot eat the
            # others' time); the retry skips those already delivered. The details tell the
            # workflow who did get the message if every attempt fails.
            raise ApplicationError(
                "delivery failed for " + "; ".join(transient),
                {"delivered": delivered},
                type="TransientDeliveryError",
            )
        if request.event is not None:
            event = request.event.model_copy(
                update={
                    "detail": {
                        **request.event.detail,
                        "delivered": delivered,
                        "failed": [f.model_dump() for f in failures],
                    }
                }
            )
            await self.ledger.append([event])
        if request.summary is not None:
            await self.ledger.save_outcome(request.summary)
        return StepDeliveryResult(delivered=delivered, failed=failures)

    async def _deliver_to(
        self, recipient: Recipient, request: StepDelivery, text: str
    ) -> DeliveryFailure | str | None:
        """None when delivered (now or by an earlier attempt), a DeliveryFailure for a
        configuration error, a message for a transient error."""
        key = f"{request.workflow_id}/{request.step}/{recipient.name}"
        if await self.ledger.was_delivered(key):
            return None
        try:
            channel = await self._send_first_working(recipient, key, text, request)
        except ChannelConfigError as err:
            log.error(
                "notification not deliverable: channel misconfigured",
                ticket_id=request.ticket_id,
                step=request.step,
                recipient=recipient.name,
                error=str(err),
            )
            return DeliveryFailure(recipient=recipient.name, channel="config", error=str(err))
        except TransientDeliveryError as err:
            return f"{recipient.name}: {err}"
        await self.ledger.mark_delivered(key, request.ticket_id, channel)
        return None

    async def _send_first_working(
        self, recipient: Recipient, key: str, text: str, request: StepDelivery
    ) -> str:
        """Send on the recipient's channels in order, falling over on configuration errors;
        returns the channel that took it."""
        errors: list[str] = []
        for channel in recipient.channels:
            try:
                await self._send(channel, recipient, key, text, request)
                return channel.type.value
            except ChannelConfigError as err:
                errors.append(f"{channel.type.value}: {err}")
        raise ChannelConfigError("; ".join(errors))

    async def _send(
        self, channel: Channel, recipient: Recipient, key: str, text: str, request: StepDelivery
    ) -> None:
        if channel.type is ChannelKind.LOG:
            log.warning(
                "notification",
                channel="log",
                recipient=recipient.name,
                idempotency_key=key,
                ticket_id=request.ticket_id,
                step=request.step,
                kind=request.kind,
                tier=request.tier.value,
                severity=request.severity.value,
                response_due_at=(
                    request.response_due_at.isoformat() if request.response_due_at else None
                ),
                text=text,
            )
            return
        url = channel.url or (os.environ.get(channel.url_env) if channel.url_env else None)
        if not url:
            raise ChannelConfigError(
                f"webhook URL missing: environment variable {channel.url_env} is not set"
            )
        try:
            response = await self.http.post(
                url,
                json={"text": slack_escape(text)},
                headers={"Idempotency-Key": key},
            )
        except httpx.HTTPError as err:
            raise TransientDeliveryError(f"webhook {type(err).__name__}: {err}") from err
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise ChannelConfigError(
                f"webhook answered {response.status_code}: {response.text[:200]}"
            )
        if response.status_code >= 300:
            raise TransientDeliveryError(f"webhook answered {response.status_code}")
