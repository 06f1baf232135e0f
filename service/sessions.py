"""The agents' board sessions, kept server-side in the SLA ledger's database, and their CSRF
tokens.

A session is a row (migration ``0003_sessions``): the SHA-256 of its random id, the agent,
the fingerprint of the agent token it signed in with, and its expiry (12 hours after
sign-in). The browser's cookie carries the id signed with the session key (HMAC-SHA256,
``runtime.links.KeyRing``); the database never holds the id itself. A session counts only
while its row exists, has not expired, and the agent still has the token it signed in with:
logout deletes the row (a copied cookie stops working), and changing or removing an agent's
token in ``SUPPORT_AGENT_TOKENS`` ends every session made with it.

The CSRF token of a session is the HMAC (CSRF key) of its id: one per session, useless for
any other. The sign-in form, which has no session yet, gets a pre-session: a random nonce in
a SameSite=Strict cookie of its own, and the form's token is the HMAC of that nonce.

The database is the ledger's (``SUPPORT_LEDGER_URL``, else the embedded SQLite file); the
service brings it to the head revision on first use, or only checks it with
``SUPPORT_LEDGER_MIGRATE=0`` (migrations then run as a job of their own).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from itsdangerous import BadSignature
from sqlalchemy import Column, Index, MetaData, String, Table, delete, select
from sqlalchemy.exc import SQLAlchemyError

from ledger.schema import UtcDateTime
from ledger.store import LedgerSchemaError, SqlLedger
from runtime.links import CSRF_KEY, SESSION_KEY, KeyRing
from service.api import ApiError

log = structlog.get_logger("support.service")

SESSION_MAX_AGE = timedelta(hours=12)
LOGIN_FORM_MAX_AGE = timedelta(hours=1)
MIGRATE_ENV = "SUPPORT_LEDGER_MIGRATE"
SESSION_SALT = "support-board-session/v2"
CSRF_SALT = "support-csrf/v2"

agent_sessions = Table(
    "agent_sessions",
    MetaData(),
    Column("id_digest", String(64), primary_key=True),
    Column("agent", String(128), nullable=False),
    Column("token_fingerprint", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("agent_sessions_agent", "agent"),
    Index("agent_sessions_expires_at", "expires_at"),
)


def token_fingerprint(token: str) -> str:
    """What a session remembers of the token it was made with: an HMAC keyed by the token,
    so the database holds nothing that signs in."""
    return hmac.new(token.encode(), b"support-sla/agent-session", hashlib.sha256).hexdigest()


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    id: str
    agent: str
    expires_at: datetime


UNAVAILABLE = (
    "board sessions are unavailable: the ledger's database cannot be used right now;"
    " try again shortly"
)


@asynccontextmanager
async def _available() -> AsyncIterator[None]:
    """A database that cannot be reached or is not at its revision is a 503 (the reason
    goes to the log, not to the browser)."""
    try:
        yield
    except (SQLAlchemyError, OSError, LedgerSchemaError) as err:
        log.error("board sessions: the database failed", error=str(err))
        raise ApiError(503, "sessions_unavailable", UNAVAILABLE) from err


class SessionStore:
    def __init__(self, url: str | None = None, migrate: bool | None = None) -> None:
        self.url = url
        self.migrate = os.environ.get(MIGRATE_ENV, "1") != "0" if migrate is None else migrate
        self._ledger: SqlLedger | None = None
        self._ready = asyncio.Lock()

    async def _db(self) -> SqlLedger:
        """The database, at the head revision (migrated on first use, or checked)."""
        if self._ledger is not None:
            return self._ledger
        async with self._ready, _available():
            if self._ledger is None:
                ledger = SqlLedger.from_url(self.url)
                try:
                    await self._bring_to_head(ledger)
                except BaseException:
                    await ledger.close()
                    raise
                self._ledger = ledger
        return self._ledger

    async def _bring_to_head(self, ledger: SqlLedger) -> None:
        if not self.migrate:
            await ledger.check_schema()
            return
        try:
            await ledger.migrate()
        except Exception as err:  # the worker may be migrating the same database now
            log.warning("sessions: migrating the ledger failed, checking again", error=str(err))
            await asyncio.sleep(1)
            try:
                await ledger.check_schema()
            except LedgerSchemaError:
                await ledger.migrate()

    async def close(self) -> None:
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    async def create(self, agent: str, token: str, now: datetime | None = None) -> Session:
        db = await self._db()
        now = now or datetime.now(UTC)
        session = Session(secrets.token_urlsafe(32), agent, now + SESSION_MAX_AGE)
        async with _available(), db._writing() as conn:
            # Expired sessions go as new ones come.
            await conn.execute(delete(agent_sessions).where(agent_sessions.c.expires_at <= now))
            await conn.execute(
                agent_sessions.insert().values(
                    id_digest=_digest(session.id),
                    agent=agent,
                    token_fingerprint=token_fingerprint(token),
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return session

    async def find(self, session_id: str, fingerprints: dict[str, str]) -> Session | None:
        """The live session with this id: it exists, has not expired, and its agent still
        has the token it signed in with (``fingerprints``: fingerprint -> agent)."""
        db = await self._db()
        async with _available(), db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(agent_sessions).where(agent_sessions.c.id_digest == _digest(session_id))
                )
            ).first()
        if row is None or row.expires_at <= datetime.now(UTC):
            return None
        if fingerprints.get(row.token_fingerprint) != row.agent:
            return None
        return Session(session_id, row.agent, row.expires_at)

    async def end(self, session_id: str) -> bool:
        db = await self._db()
        async with _available(), db._writing() as conn:
            result = await conn.execute(
                delete(agent_sessions).where(agent_sessions.c.id_digest == _digest(session_id))
            )
        return result.rowcount > 0

    async def end_all(self, agent: str) -> int:
        """End every session of ``agent``; how many there were."""
        db = await self._db()
        async with _available(), db._writing() as conn:
            result = await conn.execute(
                delete(agent_sessions).where(agent_sessions.c.agent == agent)
            )
        return int(result.rowcount)


# --- cookies and CSRF tokens -----------------------------------------------------------------


def session_cookie(keys: KeyRing, session_id: str) -> str:
    return keys.signer(SESSION_KEY, SESSION_SALT).sign(session_id).decode()


def session_id_of(keys: KeyRing, cookie: str) -> str | None:
    """The session id a cookie carries, when signed by a listed key."""
    try:
        return keys.signer(SESSION_KEY, SESSION_SALT).unsign(cookie).decode()
    except (BadSignature, UnicodeDecodeError):
        return None


def csrf_token(keys: KeyRing, scope: str, value: str) -> str:
    """The CSRF token of a session (``scope`` "session") or of a sign-in form ("login")."""
    signature = keys.signer(CSRF_KEY, CSRF_SALT).get_signature(f"{scope}:{value}")
    return signature.decode()


def csrf_valid(keys: KeyRing, scope: str, value: str, token: str) -> bool:
    if not token or not value:
        return False
    signer = keys.signer(CSRF_KEY, CSRF_SALT)
    return bool(signer.verify_signature(f"{scope}:{value}".encode(), token.encode()))
