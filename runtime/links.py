"""The service's signing keys, and the signed acknowledge links made with them.

**Keys.** ``SUPPORT_LINK_SECRET`` holds the master secret, or a key ring of several:
``"k2:<secret>,k1:<older secret>"`` (``id:secret`` entries, newest first; a single value
without an id is the ring's only key, id ``0``). Nothing is signed with a master secret
itself: each purpose has its own key, derived from each master secret with HMAC-SHA256 and
a label (``derive``): acknowledge links, board sessions and CSRF tokens never share a key.
Everything is signed with the newest key and verified with any listed one, so a new key is
put first, and an old one removed once what it signed has expired (links: the link TTL,
sessions: 12 hours); what a removed key signed stops working. Every secret must be strong
(``check_strength``): the service refuses to start, and the worker makes no links, with a
weak one, and the error names the setting and the entry.

**Reply tokens.** The support mailbox's own mail about a ticket carries a token bound to
that ticket (``ReplyTokens``, HMAC-SHA256 with the mail-reply key): a reply that quotes it
proves its sender received that mail (docs/mailbox.md).

**Links.** An acknowledge link is signed (HMAC-SHA256 with the link key), bound to one
ticket and one agent, carries a unique id, and expires after ``SUPPORT_LINK_TTL_HOURS``
(default 24). It points to the board's acknowledge step under ``SUPPORT_PUBLIC_URL``.
The worker's notifications make them, the HTTP service reads them; both need the same ring.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import structlog
from itsdangerous import BadSignature, SignatureExpired, Signer, URLSafeTimedSerializer

log = structlog.get_logger("support.links")

LINK_SECRET_ENV = "SUPPORT_LINK_SECRET"
LINK_TTL_ENV = "SUPPORT_LINK_TTL_HOURS"
PUBLIC_URL_ENV = "SUPPORT_PUBLIC_URL"
DEFAULT_LINK_TTL_HOURS = "24"

# A secret shorter than this, or with less estimated entropy, is refused.
MIN_SECRET_LENGTH = 32
MIN_SECRET_BITS = 80
MIN_DISTINCT_CHARACTERS = 8
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The purposes keys are derived for; the label makes each key unrelated to the others.
LINK_KEY, SESSION_KEY, CSRF_KEY = "ack-link", "board-session", "csrf"
MAIL_REPLY_KEY = "mail-reply"
PURPOSES = (LINK_KEY, SESSION_KEY, CSRF_KEY, MAIL_REPLY_KEY)
NEW_SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def link_ttl_from_env() -> timedelta:
    return timedelta(hours=float(os.environ.get(LINK_TTL_ENV, DEFAULT_LINK_TTL_HOURS)))


class KeyConfigError(ValueError):
    """The key ring's setting is malformed or a secret is weak; the message names the
    setting and the entry."""


def estimated_bits(secret: str) -> float:
    """The secret's length times the Shannon entropy of its characters: a generous upper
    bound of its strength, enough to refuse the obviously guessable."""
    counts = Counter(secret)
    n = len(secret)
    return n * -sum(c / n * math.log2(c / n) for c in counts.values())


def check_strength(secret: str) -> str | None:
    """Why ``secret`` is too weak to sign with, or None when it is strong enough."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"it has {len(secret)} characters, at least {MIN_SECRET_LENGTH} are needed"
    # Repeated text compresses: random text of this length does not (zlib adds 8 bytes).
    repeated = len(zlib.compress(secret.encode(), 9)) - 8 < 0.7 * len(secret.encode())
    few = len(set(secret)) < MIN_DISTINCT_CHARACTERS
    if repeated or few or estimated_bits(secret) < MIN_SECRET_BITS:
        return "it is not random enough (too few different characters, or repeated text)"
    return None


def derive(master: bytes, purpose: str) -> bytes:
    """The key for ``purpose``: HMAC-SHA256 of a fixed label under the master secret."""
    return hmac.new(master, f"support-sla/{purpose}/v1".encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class KeyRing:
    """Master secrets by id, newest first."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, value: str, variable: str = LINK_SECRET_ENV, strict: bool = True) -> KeyRing:
        """``id:secret,id:secret`` (newest first) or one plain secret. ``strict``: refuse
        weak secrets (the settings of a running service or worker always are)."""
        entries = [e.strip() for e in value.split(",") if e.strip()]
        if not entries:
            raise KeyConfigError(f"{variable}: no secret given")
        keys: list[tuple[str, bytes]] = []
        for i, entry in enumerate(entries):
            key_id, sep, secret = entry.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                if len(entries) > 1:
                    raise KeyConfigError(
                        f"{variable}: entry {i + 1} must be id:secret (an id of letters,"
                        " digits, _ or -) when several keys are listed"
                    )
                key_id, secret = "0", entry
            if any(key_id == known for known, _ in keys):
                raise KeyConfigError(f"{variable}: key id {key_id!r} is listed twice")
            if strict and (why := check_strength(secret)):
                raise KeyConfigError(
                    f"{variable}: the secret of key {key_id!r} (entry {i + 1}) is too weak:"
                    f" {why}; make one with {NEW_SECRET_HINT}"
                )
            keys.append((key_id, secret.encode()))
        return cls(tuple(keys))

    @classmethod
    def random(cls) -> KeyRing:
        return cls((("0", secrets.token_urlsafe(32).encode()),))

    @property
    def ids(self) -> list[str]:
        return [key_id for key_id, _ in self.keys]

    def derived(self, purpose: str) -> list[bytes]:
        """The purpose's keys, oldest first (itsdangerous signs with the last one and
        verifies with any)."""
        if purpose not in PURPOSES:
            raise ValueError(f"no key purpose {purpose!r}")
        return [derive(master, purpose) for _, master in reversed(self.keys)]

    def signer(self, purpose: str, salt: str) -> Signer:
        return Signer(self.derived(purpose), salt=salt, digest_method=hashlib.sha256)


class AckLink(NamedTuple):
    ticket_id: str
    agent: str
    # The link's unique id: recorded with the acknowledgement it makes.
    nonce: str


class LinkError(ValueError):
    pass


class AckLinks:
    """Expiring, signed acknowledge links bound to a ticket and an agent, each with its own
    unique id."""

    SALT = "support-ack-link/v2"

    def __init__(self, keys: KeyRing | str, ttl: timedelta, public_url: str) -> None:
        ring = keys if isinstance(keys, KeyRing) else KeyRing.parse(keys, strict=False)
        self._serializer = URLSafeTimedSerializer(
            ring.derived(LINK_KEY),
            salt=self.SALT,
            signer_kwargs={"digest_method": hashlib.sha256},
        )
        self.ttl = ttl
        self.public_url = public_url.rstrip("/")

    @classmethod
    def from_env(cls) -> AckLinks | None:
        """The links the worker's notifications carry: None unless both the key ring and
        the service's public URL are set (read when called). A weak or malformed ring makes
        no links, and says why in the log."""
        secret, public = os.environ.get(LINK_SECRET_ENV), os.environ.get(PUBLIC_URL_ENV)
        if not (secret and public):
            return None
        try:
            ring = KeyRing.parse(secret)
        except KeyConfigError as err:
            log.error("acknowledge links are off: the key ring is refused", error=str(err))
            return None
        return cls(ring, link_ttl_from_env(), public)

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
        if not isinstance(data, dict) or not {"t", "a", "n"} <= set(data):
            raise LinkError("this acknowledge link is not valid")
        return AckLink(str(data["t"]), str(data["a"]), str(data["n"]))


class ReplyTokens:
    """A ticket's reply token, ``<ticket id>.<signature>``: the mailbox puts it in the
    Message-ID of the mail it sends about the ticket, which a reply quotes in its
    ``In-Reply-To`` and ``References``. Bound to one ticket; it ends when its key leaves
    the ring."""

    SALT = "support-mail-reply/v1"

    def __init__(self, keys: KeyRing) -> None:
        self._signer = keys.signer(MAIL_REPLY_KEY, self.SALT)

    @classmethod
    def from_env(cls) -> ReplyTokens | None:
        """None without ``SUPPORT_LINK_SECRET``; KeyConfigError for a weak or malformed one."""
        secret = os.environ.get(LINK_SECRET_ENV)
        return cls(KeyRing.parse(secret)) if secret else None

    def token(self, ticket_id: str) -> str:
        return self._signer.sign(ticket_id).decode()

    def reference(self, ticket_id: str) -> str:
        """``<reply-<token>@support-sla>``: a message id carrying the ticket's token, for a
        mail's Message-ID or References (a reply quotes both)."""
        return f"<reply-{self.token(ticket_id)}@support-sla>"

    def ticket(self, token: str) -> str | None:
        """The ticket ``token`` was made for, or None when it is not a valid token."""
        try:
            return self._signer.unsign(token).decode()
        except BadSignature:
            return None
