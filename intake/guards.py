"""What the public intake paths (the contact form and the support mailbox) keep in the
database, so that it survives a restart and holds across processes (docs/intake.md):

- **rate limits**: submissions per requester address, per email domain and per client
  (the form's remote address, the mailbox's connecting server), counted in fixed windows
  (``intake_counts``), each source apart (keys ``form:<value>``, ``mail:<value>``). Over a
  limit the form answers 429 and the mailbox 451.
- **the reply log**: the mailbox answers one sender for one reason at most once a day
  (``intake_replies``), so a redelivered message or a flood never becomes a stream of
  mail from the company's relay.
- **requester confirmations**: a ticket from an address that is not verified runs as
  Community; the link mailed to the address carries a random token whose SHA-256 is kept
  here with what the ticket would be under its contract (``requester_confirmations``).
- **the mail quarantine**: a message the mailbox refuses because its MIME cannot be
  parsed is kept, raw, for inspection (``mail_quarantine``).

The tables live in the SLA ledger's database (``SUPPORT_LEDGER_URL``) and are created by
its migration ``0004_intake_guards`` (``python -m ledger migrate``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.schema import UtcDateTime

metadata = MetaData()

intake_counts = Table(
    "intake_counts",
    metadata,
    # "address", "domain" or "client", what is counted, and the window's start.
    Column("scope", String(16), primary_key=True),
    Column("key", String(320), primary_key=True),
    Column("window_start", UtcDateTime(), primary_key=True),
    Column("count", Integer, nullable=False),
)

intake_replies = Table(
    "intake_replies",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("sent_at", UtcDateTime(), nullable=False),
)

requester_confirmations = Table(
    "requester_confirmations",
    metadata,
    Column("token_digest", String(64), primary_key=True),
    # The Community ticket that runs until the requester confirms.
    Column("ticket_id", String(128), nullable=False, unique=True),
    Column("customer_id", String(128), nullable=False),
    Column("address", String(320), nullable=False),
    Column("submitted_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    # The ticket as it opens under the contract once confirmed (TicketInput as JSON).
    Column("ticket", JSON, nullable=False),
    Column("reason", Text, nullable=False),
    Column("confirmed_at", UtcDateTime()),
    Column("moved_to", String(128)),
)

mail_quarantine = Table(
    "mail_quarantine",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("envelope_sender", String(320), nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", LargeBinary, nullable=False),
)

TABLES = (intake_counts, intake_replies, requester_confirmations, mail_quarantine)

# --- the limits --------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    scope: str  # address | domain | client
    count: int  # submissions allowed per window
    window: timedelta

    def describe(self) -> str:
        minutes = int(self.window.total_seconds() // 60)
        per = "hour" if minutes == 60 else f"{minutes} minutes"
        return f"{self.count} per {per} per {self.scope}"


LIMIT_ENV = {
    "address": "SUPPORT_INTAKE_LIMIT_PER_ADDRESS",
    "domain": "SUPPORT_INTAKE_LIMIT_PER_DOMAIN",
    "client": "SUPPORT_INTAKE_LIMIT_PER_CLIENT",
}
DEFAULT_LIMITS = {"address": 10, "domain": 50, "client": 30}
WINDOW = timedelta(hours=1)
# Where a submission comes from. Each counts under keys of its own ("form:<value>",
# "mail:<value>"), so no value typed into one (an address at "mail:bank.example") can
# reach the other's counter: a flood through the form never defers a customer's mail.
FORM = "form"
MAIL = "mail"
SOURCES = (FORM, MAIL)
CONFIRMATION_TTL = timedelta(days=7)
REPLY_WINDOW = timedelta(days=1)


class LimitConfigError(ValueError):
    """A ``SUPPORT_INTAKE_LIMIT_*`` setting that is not a positive whole number; the
    message names it. The service and the mailbox check them at start."""


def limits_from_env(environ: dict[str, str] | None = None) -> tuple[Limit, ...]:
    """The three limits (per hour); each a positive integer, else LimitConfigError naming
    it."""
    env = os.environ if environ is None else environ
    found = []
    for scope, name in LIMIT_ENV.items():
        raw = env.get(name, str(DEFAULT_LIMITS[scope]))
        if not raw.strip().isdigit() or int(raw) < 1:
            raise LimitConfigError(f"{name}: {raw!r} is not a positive whole number of submissions")
        found.append(Limit(scope, int(raw), WINDOW))
    return tuple(found)


@dataclass(frozen=True)
class Refusal:
    """A submission over one of the limits: which one, and when the window ends."""

    limit: Limit
    retry_after: timedelta

    def describe(self) -> str:
        minutes = max(1, int(self.retry_after.total_seconds() // 60) + 1)
        return (
            f"too many requests from this {self.limit.scope} ({self.limit.describe()});"
            f" try again in {minutes} minute{'s' if minutes != 1 else ''}"
        )


@dataclass(frozen=True)
class Confirmation:
    ticket_id: str
    customer_id: str
    address: str
    submitted_at: datetime
    expires_at: datetime
    ticket: dict[str, Any]
    reason: str
    confirmed_at: datetime | None
    moved_to: str | None


class GuardsUnavailable(RuntimeError):
    """The guards' tables are missing or the database cannot be reached."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _window_start(now: datetime, window: timedelta) -> datetime:
    seconds = int(window.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


class IntakeGuards:
    """The tables above on one engine (the ledger's)."""

    def __init__(self, engine: AsyncEngine, limits: tuple[Limit, ...] | None = None) -> None:
        self.engine = engine
        self.limits = limits if limits is not None else limits_from_env()
        self.dialect = engine.dialect.name
        self._lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def from_url(cls, url: str | None = None) -> IntakeGuards:
        """On ``url``, else ``SUPPORT_LEDGER_URL`` (the embedded SQLite file by default)."""
        from ledger.store import SqlLedger

        return cls(SqlLedger.from_url(url).engine)

    @classmethod
    def from_env(cls) -> IntakeGuards:
        return cls.from_url()

    async def ready(self) -> None:
        """GuardsUnavailable, naming what to do, unless the database is at the head
        revision. It never migrates: the worker (or ``python -m ledger migrate``) does, so
        that processes starting together never race on a migration."""
        from ledger.store import SqlLedger, head_revision

        try:
            found = await SqlLedger(self.engine).schema_revision()
        except Exception as err:
            raise GuardsUnavailable(
                f"the ledger's database cannot be read ({type(err).__name__})"
            ) from err
        if found != head_revision():
            raise GuardsUnavailable(
                f"the ledger's database is at revision {found or 'none'}, this code needs"
                f" {head_revision()}: run `python -m ledger migrate` (the worker does at start)"
            )

    async def close(self) -> None:
        await self.engine.dispose()

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    async def _write(self, work: Any) -> Any:
        if self._lock is None:
            async with self.engine.begin() as conn:
                return await work(conn)
        async with self._lock, self.engine.begin() as conn:
            return await work(conn)

    # rate limits

    async def admit(
        self, keys: dict[str, str | None], now: datetime, *, source: str = FORM
    ) -> Refusal | None:
        """Count one submission from ``source`` (``FORM``, the contact form, or ``MAIL``)
        under each of ``keys`` (scope -> what is counted, as given; None counts nothing),
        stored as ``<source>:<value>`` so the sources never share a counter, and answer the
        first limit it goes over, or None. A refused submission counts nowhere: one address
        refused again and again spends none of its domain's or its client's allowance."""
        if source not in SOURCES:
            raise ValueError(f"unknown intake source {source!r} (one of {', '.join(SOURCES)})")

        async def count(conn: Any) -> Refusal | None:
            refused: Refusal | None = None
            counted: list[tuple[str, str, datetime]] = []
            for limit in self.limits:
                value = keys.get(limit.scope)
                if not value:
                    continue
                key = f"{source}:{value}"[:320].lower()
                start = _window_start(now, limit.window)
                statement = self._insert(intake_counts).values(
                    scope=limit.scope, key=key, window_start=start, count=1
                )
                statement = statement.on_conflict_do_update(
                    index_elements=["scope", "key", "window_start"],
                    set_={"count": intake_counts.c.count + 1},
                )
                await conn.execute(statement)
                counted.append((limit.scope, key, start))
                seen = await conn.scalar(
                    select(intake_counts.c.count).where(
                        intake_counts.c.scope == limit.scope,
                        intake_counts.c.key == key,
                        intake_counts.c.window_start == start,
                    )
                )
                if refused is None and seen is not None and seen > limit.count:
                    refused = Refusal(limit, start + limit.window - now)
            if refused is not None:
                # Taken back in the same transaction (the upsert's row lock keeps it exact).
                for scope, counted_key, window_start in counted:
                    await conn.execute(
                        update(intake_counts)
                        .where(
                            intake_counts.c.scope == scope,
                            intake_counts.c.key == counted_key,
                            intake_counts.c.window_start == window_start,
                        )
                        .values(count=intake_counts.c.count - 1)
                    )
            # Old windows are of no use: drop them as we go.
            await conn.execute(
                delete(intake_counts).where(intake_counts.c.window_start < now - 2 * WINDOW)
            )
            return refused

        result: Refusal | None = await self._write(count)
        return result

    # the once-a-day reply log

    async def first_reply(self, key: str, now: datetime) -> bool:
        """True (and the reply recorded) unless ``key`` was answered within a day."""

        async def record(conn: Any) -> bool:
            await conn.execute(
                delete(intake_replies).where(
                    intake_replies.c.key == key[:400],
                    intake_replies.c.sent_at <= now - REPLY_WINDOW,
                )
            )
            result = await conn.execute(
                self._insert(intake_replies)
                .values(key=key[:400], sent_at=now)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            return bool(result.rowcount and result.rowcount > 0)

        answer: bool = await self._write(record)
        return answer

    async def forget_reply(self, key: str) -> None:
        async def drop(conn: Any) -> None:
            await conn.execute(delete(intake_replies).where(intake_replies.c.key == key[:400]))

        await self._write(drop)

    # the quarantine

    async def quarantine(self, raw: bytes, envelope_sender: str, reason: str, now: datetime) -> str:
        """Keep a refused message; its key (SHA-256 of the bytes, 16 hex digits)."""
        key = hashlib.sha256(raw).hexdigest()[:16]

        async def keep(conn: Any) -> None:
            await conn.execute(
                self._insert(mail_quarantine)
                .values(
                    key=key,
                    received_at=now,
                    envelope_sender=envelope_sender[:320],
                    reason=reason[:2000],
                    raw=raw,
                )
                .on_conflict_do_nothing(index_elements=["key"])
            )

        await self._write(keep)
        return key

    async def quarantined(self, key: str) -> tuple[str, bytes] | None:
        """(reason, raw bytes) of a kept message, or None."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(mail_quarantine.c.reason, mail_quarantine.c.raw).where(
                        mail_quarantine.c.key == key
                    )
                )
            ).first()
        return None if row is None else (str(row.reason), bytes(row.raw))

    # requester confirmations

    async def request_confirmation(
        self,
        ticket_id: str,
        customer_id: str,
        address: str,
        submitted_at: datetime,
        ticket: dict[str, Any],
        reason: str,
        now: datetime,
    ) -> str | None:
        """A new token for the Community ticket ``ticket_id`` (only its digest is kept);
        None when the ticket already has one (a resubmitted form, a redelivered mail)."""
        token = secrets.token_urlsafe(32)

        async def store(conn: Any) -> bool:
            result = await conn.execute(
                self._insert(requester_confirmations)
                .values(
                    token_digest=digest(token),
                    ticket_id=ticket_id,
                    customer_id=customer_id,
                    address=address,
                    submitted_at=submitted_at,
                    expires_at=now + CONFIRMATION_TTL,
                    ticket=ticket,
                    reason=reason,
                )
                .on_conflict_do_nothing(index_elements=["ticket_id"])
            )
            return bool(result.rowcount and result.rowcount > 0)

        stored: bool = await self._write(store)
        return token if stored else None

    async def confirmation(self, token: str) -> Confirmation | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(requester_confirmations).where(
                        requester_confirmations.c.token_digest == digest(token)
                    )
                )
            ).first()
        if row is None:
            return None
        return Confirmation(
            ticket_id=row.ticket_id,
            customer_id=row.customer_id,
            address=row.address,
            submitted_at=row.submitted_at,
            expires_at=row.expires_at,
            ticket=dict(row.ticket),
            reason=row.reason,
            confirmed_at=row.confirmed_at,
            moved_to=row.moved_to,
        )

    async def confirmed(self, token: str, at: datetime, moved_to: str | None) -> None:
        async def mark(conn: Any) -> None:
            await conn.execute(
                update(requester_confirmations)
                .where(requester_confirmations.c.token_digest == digest(token))
                .values(confirmed_at=at, moved_to=moved_to)
            )

        await self._write(mark)
