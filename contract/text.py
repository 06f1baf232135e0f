"""Text that the worker's messages and the support mailbox's replies write the same way:
instants for people, customer text made safe for a mail header, and the reference that
threads a ticket's mail; and durations as people write them (policy, report, plan
changes)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

SPAN_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def when(instant: datetime, time_zone: str) -> str:
    """``2026-11-26 09:15 CST (2026-11-26 15:15 UTC)``; UTC alone for UTC."""
    utc = instant.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M UTC")
    if time_zone == "UTC":
        return utc
    local = instant.astimezone(ZoneInfo(time_zone))
    return f"{local.strftime('%Y-%m-%d %H:%M %Z')} ({utc})"


def span(duration: timedelta, days: bool = True) -> str:
    """``4h``, ``15m``, ``1h 30m``, ``20s``, ``2d 3h``, ``0s``: a duration as people write
    it, to the nearest second. ``days=False`` counts in hours (``64h``): business time in
    days would read as calendar days."""
    left = round(duration.total_seconds())
    parts = []
    for unit, size in SPAN_UNITS if days else SPAN_UNITS[1:]:
        amount, left = divmod(left, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts) or "0s"


def header_text(text: str) -> str:
    """Customer text made inert for a mail header: one line (a line break would end the
    header), and no RFC 2047 encoded word, which the email package decodes when the header
    is set: ``=?utf-8?q?=0D=0ABcc:_x@evil.example?=`` would become a Bcc header."""
    return " ".join(text.split()).replace("=?", "=\N{ZERO WIDTH SPACE}?")


def thread_reference(workflow_id: str) -> str:
    """``<ticket-T-1001@support-sla>``: in the References of every mail about the ticket
    (notifications, the mailbox's acknowledgement), so that a reply names its ticket."""
    return f"<{workflow_id}@support-sla>"
