"""Who may call the HTTP service, and the signed acknowledge links.

- Intake integrations (web form back ends, a customer's portal, scripts) authenticate with
  a per-integration API token: ``SUPPORT_INTAKE_TOKENS="acme-portal:<token>,..."``. What
  each may assert and read is its scope (``intake.core.Scope``), from
  ``SUPPORT_INTAKE_SCOPES="acme-portal=customers:acme|acme-eu;max_tier:premium,..."``
  (``parse_scopes``; docs/intake.md). Without an entry: any customer without a contract,
  at Community only.
- Agents authenticate with their own token: ``SUPPORT_AGENT_TOKENS="ana:<token>,..."``; the
  agent's name is what the ticket records as who acknowledged or resolved.
- Acknowledge links in notifications are signed, bound to one ticket and one agent, carry
  a unique id, and expire (``SUPPORT_LINK_TTL_HOURS``, default 24): ``runtime.links``,
  which the worker's notifications use to make them. A link acknowledges at most once: only
  an open ticket can be acknowledged, and a ticket is acknowledged once (docs/intake.md
  says why no store of used links is needed).
- ``SUPPORT_LINK_SECRET`` is the key ring (``runtime.links.KeyRing``: one secret, or
  ``id:secret`` entries newest first) from which the link, session and CSRF keys are
  derived; a weak or malformed one is refused at start (``KeyConfigError``, naming the
  setting and the entry).
- Board sessions live in the ledger's database (``SUPPORT_LEDGER_URL``; ``service.sessions``).

Tokens are compared in constant time. A missing link secret is replaced by a random one
(links and board sessions then stop working when the service restarts; the service warns).
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache

import structlog

from contract.client import CUSTOMER_FILTER_PATTERN
from contract.models import Tier
from intake.core import DEFAULT_SCOPE, Scope
from runtime.links import (
    LINK_SECRET_ENV,
    PUBLIC_URL_ENV,
    KeyConfigError,
    KeyRing,
    link_ttl_from_env,
)

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


SCOPE_KEYS = ("customers", "max_tier")


def parse_scopes(variable: str, value: str | None, integrations: set[str]) -> dict[str, Scope]:
    """``name=customers:a|b|*;max_tier:premium,...`` -> {integration: Scope}.

    ``customers``: the customer ids the integration serves, ``|``-separated; ``*`` stands
    for every customer without a contract (default: ``*`` alone). ``max_tier``: the highest
    tier it may claim for a customer without a contract (default: community). Every name
    must be an integration of ``SUPPORT_INTAKE_TOKENS``; errors name the variable and the
    entry."""
    scopes: dict[str, Scope] = {}
    for i, entry in enumerate(filter(None, (e.strip() for e in (value or "").split(",")))):
        name, sep, rest = (part.strip() for part in entry.partition("="))
        where = f"{variable}: entry {i + 1}" + (f" ({name})" if name else "")

        def refuse(why: str, where: str = where) -> TokenConfigError:
            return TokenConfigError(f"{where}: {why}")

        if not sep or not _NAME.match(name):
            raise refuse("must be name=customers:a|b;max_tier:<tier> with a lower-case name")
        if name not in integrations:
            raise refuse(f"{name!r} is not an integration of SUPPORT_INTAKE_TOKENS")
        if name in scopes:
            raise refuse(f"{name!r} has a scope already")
        given: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in rest.split(";"))):
            key, colon, setting = (x.strip() for x in part.partition(":"))
            if not colon or key not in SCOPE_KEYS:
                raise refuse(f"{part!r} is not one of customers:<ids> or max_tier:<tier>")
            if key in given:
                raise refuse(f"{key} is given twice")
            given[key] = setting
        customers = [c.strip() for c in given.get("customers", "*").split("|")]
        for customer in customers:
            if customer != "*" and not re.fullmatch(CUSTOMER_FILTER_PATTERN, customer):
                raise refuse(
                    f"customers: {customer!r} is not a customer id (letters, digits,"
                    " . _ : @ + -) or *"
                )
        try:
            max_tier = Tier(given.get("max_tier", Tier.COMMUNITY.value))
        except ValueError:
            tiers = ", ".join(t.value for t in Tier)
            raise refuse(f"max_tier: {given['max_tier']!r} is not one of {tiers}") from None
        scopes[name] = Scope(
            customers=frozenset(c for c in customers if c != "*"),
            others="*" in customers,
            max_tier=max_tier,
        )
    return scopes


@dataclass(frozen=True)
class Settings:
    intake_tokens: dict[str, str] = field(default_factory=dict)
    agent_tokens: dict[str, str] = field(default_factory=dict)
    # integration name -> what it may assert and read (DEFAULT_SCOPE when not listed)
    intake_scopes: dict[str, Scope] = field(default_factory=dict)
    # The key ring (runtime.links.KeyRing): links, sessions and CSRF tokens are signed with
    # keys derived from it. Checked for strength by from_env (tests may pass a short one).
    link_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    link_ttl: timedelta = timedelta(hours=24)
    public_url: str = "http://localhost:8000"
    # The database of the board's sessions: the SLA ledger's (None: SUPPORT_LEDGER_URL, else
    # the embedded SQLite file).
    ledger_url: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment; TokenConfigError (a KeyConfigError for the key
        ring) naming the variable and the entry when one is malformed or too weak."""
        secret = os.environ.get(LINK_SECRET_ENV)
        if not secret:
            log.warning(
                f"{LINK_SECRET_ENV} not set: acknowledge links and board sessions last"
                " until a restart"
            )
            secret = secrets.token_urlsafe(32)
        try:
            KeyRing.parse(secret, LINK_SECRET_ENV, strict=True)
        except KeyConfigError as err:
            raise TokenConfigError(str(err)) from None
        intake_tokens = parse_tokens(
            "SUPPORT_INTAKE_TOKENS", os.environ.get("SUPPORT_INTAKE_TOKENS")
        )
        return cls(
            intake_tokens=intake_tokens,
            intake_scopes=parse_scopes(
                "SUPPORT_INTAKE_SCOPES",
                os.environ.get("SUPPORT_INTAKE_SCOPES"),
                set(intake_tokens.values()),
            ),
            agent_tokens=parse_tokens(
                "SUPPORT_AGENT_TOKENS", os.environ.get("SUPPORT_AGENT_TOKENS")
            ),
            link_secret=secret,
            link_ttl=link_ttl_from_env(),
            public_url=os.environ.get(PUBLIC_URL_ENV, "http://localhost:8000").rstrip("/"),
            ledger_url=os.environ.get("SUPPORT_LEDGER_URL") or None,
        )

    @property
    def keys(self) -> KeyRing:
        return _key_ring(self.link_secret)

    @property
    def agent_fingerprints(self) -> dict[str, str]:
        """Fingerprint of each agent token -> the agent (``service.sessions``)."""
        return _fingerprints(tuple(self.agent_tokens.items()))

    def integration(self, token: str) -> str | None:
        return _lookup(self.intake_tokens, token)

    def agent(self, token: str) -> str | None:
        return _lookup(self.agent_tokens, token)

    def scope(self, integration: str) -> Scope:
        return self.intake_scopes.get(integration, DEFAULT_SCOPE)

    def bearer_refusal(self, authorization: str | None) -> str | None:
        """Why an ``Authorization`` header names no caller of the API (None: an agent's
        or an integration's token; the route still checks which kind it needs). The
        body limit asks this before it reads an ``/api/`` body (service/limits.py)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "send the token as 'Authorization: Bearer <token>'"
        if self.agent(token) is None and self.integration(token) is None:
            return "the token is not valid"
        return None


@lru_cache(maxsize=8)
def _key_ring(value: str) -> KeyRing:
    return KeyRing.parse(value, LINK_SECRET_ENV, strict=False)


@lru_cache(maxsize=8)
def _fingerprints(tokens: tuple[tuple[str, str], ...]) -> dict[str, str]:
    from service.sessions import token_fingerprint

    return {token_fingerprint(token): name for token, name in tokens}


def _lookup(tokens: dict[str, str], presented: str) -> str | None:
    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            found = name
    return found
