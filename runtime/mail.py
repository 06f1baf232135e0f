"""The SMTP relay of every process that sends mail: the worker's email channel and the
support mailbox's replies use the same ``SUPPORT_SMTP_*`` settings
(docs/notifications.md#email-settings).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib


class ChannelConfigError(Exception):
    """A recipient's channel is misconfigured; retrying cannot help.

    Raised here for a missing or malformed SMTP setting, and by the worker's other channels
    (``activities.channels``) for theirs."""


@dataclass(frozen=True)
class SmtpSettings:
    """The SMTP relay, from the environment (read at send time)."""

    host: str
    port: int
    security: str  # starttls | tls | none
    username: str | None
    password: str | None
    sender: str
    timeout: float
    ca_file: str | None

    @classmethod
    def from_env(cls) -> SmtpSettings:
        host = os.environ.get("SUPPORT_SMTP_HOST")
        if not host:
            raise ChannelConfigError("SMTP not configured: SUPPORT_SMTP_HOST is not set")
        security = os.environ.get("SUPPORT_SMTP_SECURITY", "starttls").lower()
        if security not in ("starttls", "tls", "none"):
            raise ChannelConfigError(
                f"SUPPORT_SMTP_SECURITY: {security!r} is not one of starttls, tls, none"
            )
        default_port = {"starttls": 587, "tls": 465, "none": 25}[security]
        try:
            port = int(os.environ.get("SUPPORT_SMTP_PORT", default_port))
            timeout = float(os.environ.get("SUPPORT_SMTP_TIMEOUT", "10"))
        except ValueError as err:
            raise ChannelConfigError(f"SUPPORT_SMTP_PORT / SUPPORT_SMTP_TIMEOUT: {err}") from err
        return cls(
            host=host,
            port=port,
            security=security,
            username=os.environ.get("SUPPORT_SMTP_USERNAME") or None,
            password=os.environ.get("SUPPORT_SMTP_PASSWORD") or None,
            sender=os.environ.get("SUPPORT_SMTP_FROM", "Support SLA <support-sla@localhost>"),
            timeout=timeout,
            ca_file=os.environ.get("SUPPORT_SMTP_CA_FILE") or None,
        )

    async def send(self, message: EmailMessage) -> None:
        """Send through the relay with its security settings (aiosmtplib's errors pass)."""
        context = (
            ssl.create_default_context(cafile=self.ca_file) if self.security != "none" else None
        )
        await aiosmtplib.send(
            message,
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=context,
            timeout=self.timeout,
        )


def confirmation_request(
    smtp: SmtpSettings, to: str, ticket_id: str, link: str, valid_for: timedelta
) -> EmailMessage:
    """The contact form's request to confirm an address at a contract's domain
    (docs/intake.md#verified-requesters). Fixed text: it repeats nothing the requester
    typed, so a form filled in with someone else's address carries no one's words to
    them."""
    days = max(1, round(valid_for.total_seconds() / 86_400))
    message = EmailMessage()
    message["Subject"] = f"[{ticket_id}] Please confirm your support request"
    message["From"] = smtp.sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="support-sla")
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(
        "\n".join(
            [
                "Hello,",
                "",
                f"a support request (ticket {ticket_id}) was sent with this address through our"
                " contact form. The address is at the email domain of an organisation with a"
                " support contract.",
                "",
                "To have it handled under that contract, confirm that you sent it:",
                "",
                f"  {link}",
                "",
                "Until you confirm, it is handled as Community support (no guaranteed response"
                " time). Once confirmed, its response time counts from when you sent it."
                f" The link is valid for {days} day{'s' if days != 1 else ''}.",
                "",
                "If you did not send this request, ignore this message: nothing else happens.",
                "",
                "This message was sent automatically by the support system.",
                "",
            ]
        )
    )
    return message
