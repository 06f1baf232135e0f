"""The SLA ledger's tables (SQLAlchemy Core), shared by the store, migrations and reports.

``sla_events`` is append-only (a database trigger refuses UPDATE and DELETE) and every row
has a unique idempotency key, so a retried write never doubles an event. ``tickets`` holds
one row per ticket with its SLA outcome, replaced only by a newer revision. ``deliveries``
is the notification log that makes each delivery key exactly-once at our side.
``policy_versions`` is the policy archive: the text of every policy version a worker loaded
(or ``support-ops policy archive`` recorded), by version, so a ticket's pinned rules stay
available after the file changes; like the events, it is insert-only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text, so normalise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Detail: Any = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData()

sla_events = Table(
    "sla_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("key", String(400), nullable=False, unique=True),
    Column("ticket_id", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("source", String(200), nullable=False),
    Column("detail", Detail, nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Index("sla_events_ticket_at", "ticket_id", "at"),
)

tickets = Table(
    "tickets",
    metadata,
    Column("ticket_id", String(128), primary_key=True),
    Column("workflow_id", String(200), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("tier", String(32), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("category", String(64), nullable=False),
    Column("state", String(32), nullable=False),
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("response_due_at", UtcDateTime()),
    Column("acknowledged_at", UtcDateTime()),
    Column("acknowledged_by", String(128)),
    Column("response_breached", Boolean, nullable=False),
    Column("overrun_seconds", Float),
    Column("escalations_fired", Integer, nullable=False),
    Column("out_of_scope", Boolean, nullable=False),
    Column("sow_outcome", String(32)),
    Column("resolved_at", UtcDateTime()),
    Column("closed_at", UtcDateTime()),
    Column("policy_version", String(64)),
    Column("outcome", Detail, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("tickets_opened_at", "opened_at"),
    Index("tickets_customer_opened_at", "customer_id", "opened_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("ticket_id", String(128), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=False),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", String(64), primary_key=True),
    # sha256 of the document, hex: the same version must always be the same text.
    Column("digest", String(64), nullable=False),
    Column("document", Text, nullable=False),
    # Who archived it first: ``<host>:<file>`` for a worker, ``support-ops ...`` for the CLI.
    Column("source", String(500), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
)
