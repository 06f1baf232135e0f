"""Signed acknowledge links: the worker's notifications make them, the HTTP service reads them.

A link is signed with ``SUPPORT_LINK_SECRET`` (the same in the worker and the service),
bound to one ticket and one agent, carries a unique id, and expires after
``SUPPORT_LINK_TTL_HOURS`` (default 24). It points to the board's acknowledge step under
``SUPPORT_PUBLIC_URL``.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from typing import NamedTuple

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

LINK_SECRET_ENV = "SUPPORT_LINK_SECRET"
LINK_TTL_ENV = "SUPPORT_LINK_TTL_HOURS"
PUBLIC_URL_ENV = "SUPPORT_PUBLIC_URL"
DEFAULT_LINK_TTL_HOURS = "24"


def link_ttl_from_env() -> timedelta:
    return timedelta(hours=float(os.environ.get(LINK_TTL_ENV, DEFAULT_LINK_TTL_HOURS)))


class AckLink(NamedTuple):
    ticket_id: str
    agent: str
    # The link's unique id: recorded with the acknowledgement it makes ("" for a link
    # made before links carried one).
    nonce: str


class LinkError(ValueError):
    pass


class AckLinks:
    """Expiring, signed acknowledge links bound to a ticket and an agent, each with its own
    unique id."""

    SALT = "support-ack-link"

    def __init__(self, secret: str, ttl: timedelta, public_url: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=self.SALT)
        self.ttl = ttl
        self.public_url = public_url.rstrip("/")

    @classmethod
    def from_env(cls) -> AckLinks | None:
        """The links the worker's notifications carry: None unless both the secret and the
        service's public URL are set (read when called)."""
        secret, public = os.environ.get(LINK_SECRET_ENV), os.environ.get(PUBLIC_URL_ENV)
        if not (secret and public):
            return None
        return cls(secret, link_ttl_from_env(), public)

    def token(self, ticket_id: str, agent: str) -> str:
        return self._serializer.dumps({"t": ticket_id, "a": agent, "n": secrets.token_hex(8)})

    def url(self, ticket_id: str, agent: str) -> str:
        return f"{self.public_url}/board/ack/{self.token(ticket_id, agent)}"

    def read(self, token: str) -> AckLink:
        """The link's ticket, agent and id; raises LinkError saying why it is refused."""
        try:
            data = self._serializer.loads(token, max_age=int(self.ttl.total_seconds()))
        except SignatureExpired as err:
            raise LinkError("this acknowledge link has expired") from err
        except BadSignature as err:
            raise LinkError("this acknowledge link is not valid") from err
        if not isinstance(data, dict) or not {"t", "a"} <= set(data):
            raise LinkError("this acknowledge link is not valid")
        return AckLink(str(data["t"]), str(data["a"]), str(data.get("n", "")))
