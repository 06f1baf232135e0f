"""Who may call the HTTP service, and the signed acknowledge links.

- Intake integrations (web form back ends, a customer's portal, scripts) authenticate with
  a per-integration API token: ``SUPPORT_INTAKE_TOKENS="acme-portal:<token>,..."``.
- Agents authenticate with their own token: ``SUPPORT_AGENT_TOKENS="ana:<token>,..."``; the
  agent's name is what the ticket records as who acknowledged or resolved.
- Acknowledge links in notifications are signed (``SUPPORT_LINK_SECRET``), bound to one
  ticket and one agent, and expire (``SUPPORT_LINK_TTL_HOURS``, default 24).

Tokens are compared in constant time. A missing link secret is replaced by a random one
(links then stop working when the service restarts; the service warns).
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

log = structlog.get_logger("support.service")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class TokenConfigError(ValueError):
    """A token variable is malformed; the message names the variable and the entry."""


def parse_tokens(variable: str, value: str | None) -> dict[str, str]:
    """``name:token,name:token`` -> {token: name}."""
    tokens: dict[str, str] = {}
    for i, entry in enumerate(filter(None, (e.strip() for e in (value or "").split(",")))):
        name, sep, token = entry.partition(":")
        if not sep or not _NAME.match(name) or len(token) < 16:
            raise TokenConfigError(
                f"{variable}: entry {i + 1} must be name:token with a lower-case name and a"
                " token of at least 16 characters"
            )
        tokens[token] = name
    return tokens


@dataclass(frozen=True)
class Settings:
    intake_tokens: dict[str, str] = field(default_factory=dict)
    agent_tokens: dict[str, str] = field(default_factory=dict)
    link_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    link_ttl: timedelta = timedelta(hours=24)
    public_url: str = "http://localhost:8000"

    @classmethod
    def from_env(cls) -> Settings:
        secret = os.environ.get("SUPPORT_LINK_SECRET")
        if not secret:
            log.warning("SUPPORT_LINK_SECRET not set: acknowledge links last until a restart")
            secret = secrets.token_urlsafe(32)
        return cls(
            intake_tokens=parse_tokens(
                "SUPPORT_INTAKE_TOKENS", os.environ.get("SUPPORT_INTAKE_TOKENS")
            ),
            agent_tokens=parse_tokens(
                "SUPPORT_AGENT_TOKENS", os.environ.get("SUPPORT_AGENT_TOKENS")
            ),
            link_secret=secret,
            link_ttl=timedelta(hours=float(os.environ.get("SUPPORT_LINK_TTL_HOURS", "24"))),
            public_url=os.environ.get("SUPPORT_PUBLIC_URL", "http://localhost:8000").rstrip("/"),
        )

    def integration(self, token: str) -> str | None:
        return _lookup(self.intake_tokens, token)

    def agent(self, token: str) -> str | None:
        return _lookup(self.agent_tokens, token)


def _lookup(tokens: dict[str, str], presented: str) -> str | None:
    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            found = name
    return found


class AckLinks:
    """Expiring, signed acknowledge links bound to a ticket and an agent."""

    SALT = "support-ack-link"

    def __init__(self, secret: str, ttl: timedelta, public_url: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=self.SALT)
        self.ttl = ttl
        self.public_url = public_url.rstrip("/")

    def token(self, ticket_id: str, agent: str) -> str:
        return self._serializer.dumps({"t": ticket_id, "a": agent})

    def url(self, ticket_id: str, agent: str) -> str:
        return f"{self.public_url}/board/ack/{self.token(ticket_id, agent)}"

    def read(self, token: str) -> tuple[str, str]:
        """(ticket_id, agent); raises LinkError saying why the link is refused."""
        try:
            data = self._serializer.loads(token, max_age=int(self.ttl.total_seconds()))
        except SignatureExpired as err:
            raise LinkError("this acknowledge link has expired") from err
        except BadSignature as err:
            raise LinkError("this acknowledge link is not valid") from err
        if not isinstance(data, dict) or not {"t", "a"} <= set(data):
            raise LinkError("this acknowledge link is not valid")
        return str(data["t"]), str(data["a"])


class LinkError(ValueError):
    pass
