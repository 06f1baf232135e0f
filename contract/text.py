"""Text that the worker's messages and the support mailbox's replies write the same way:
instants for people, customer text made safe for a mail header, and the reference that
threads a ticket's mail."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def when(instant: datetime, time_zone: str) -> str:
    """``2026-11-26 09:15 CST (2026-11-26 15:15 UTC)``; UTC alone for UTC."""
    utc = instant.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M UTC")
    if time_zone == "UTC":
        return utc
    local = instant.astimezone(ZoneInfo(time_zone))
    return f"{local.strftime('%Y-%m-%d %H:%M %Z')} ({utc})"


def header_text(text: str) -> str:
    """Customer text made inert for a mail header: one line (a line break would end the
    header), and no RFC 2047 encoded word, which the email package decodes when the header
    is set: ``=?utf-8?q?=0D=0ABcc:_x@evil.example?=`` would become a Bcc header."""
    return " ".join(text.split()).replace("=?", "=\N{ZERO WIDTH SPACE}?")


def thread_reference(workflow_id: str) -> str:
    """``<ticket-T-1001@support-sla>``: in the References of every mail about the ticket
    (notifications, the mailbox's acknowledgement), so that a reply names its ticket."""
    return f"<{workflow_id}@support-sla>"
