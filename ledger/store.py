"""The SLA ledger store: SQLAlchemy 2 (async) on SQLite or PostgreSQL.

``SqlLedger`` implements the ``SlaLedger`` interface the activities use, plus the reads the
reports need. Every write is idempotent: events by their unique key (``ON CONFLICT DO
NOTHING``), the ticket row by revision (``ON CONFLICT DO UPDATE ... WHERE newer``), the
delivery log by key, an archived policy version by its version (first text wins; a
different text is reported, never stored). The schema is owned by Alembic (``migrate``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, event, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from contract.models import SlaEvent, TicketOutcome
from ledger.policy_archive import ArchivedPolicy
from ledger.schema import deliveries, policy_versions, sla_events, tickets
from ledger.url import create_private_sqlite_file, ledger_url, redacted

if TYPE_CHECKING:
    from alembic.config import Config

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


# Tickets per query when the report reads the waits on the customer (bound parameters).
WAIT_QUERY_CHUNK = 500


class SlaLedger(Protocol):
    async def append(self, events: list[SlaEvent]) -> int:
        """Store events not stored before (by key); return how many were new."""
        ...

    async def save_outcome(self, outcome: TicketOutcome) -> bool:
        """Store the ticket's row unless a newer revision is already there."""
        ...

    async def was_delivered(self, key: str) -> bool: ...

    async def mark_delivered(self, key: str, ticket_id: str, channel: str) -> None: ...

    async def record_delivery(
        self,
        delivered: Sequence[tuple[str, str, str]],
        events: Sequence[SlaEvent],
        outcome: TicketOutcome | None,
    ) -> int:
        """The delivery log's rows, events and the ticket's row together (one transaction
        where the store has them); returns how many events were new."""
        ...

    async def events(self, ticket_id: str) -> list[SlaEvent]: ...

    async def outcome(self, ticket_id: str) -> TicketOutcome | None: ...

    # The policy archive (ledger.policy_archive.PolicyStore).

    async def archive_policy(
        self, version: str, digest: str, document: str, source: str = ""
    ) -> str | None:
        """Store a policy version's text unless the version is archived already; return the
        archived digest when it differs from ``digest`` (the text was changed), else None."""
        ...

    async def policy_document(self, version: str) -> str | None: ...

    async def policy_versions(self) -> list[ArchivedPolicy]: ...


class LedgerSchemaError(RuntimeError):
    """The database's schema is not at the revision this code needs."""


# Alembic is imported where it is used: reports and the worker's hot path never need it.


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_INI.with_name("migrations")))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


class SqlLedger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite has one writer at a time; queue writers here rather than on its file lock.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # The hot statements, compiled once for this engine's dialect (on first use, when
        # the dialect has met its database).
        self._prepared: _Statements | None = None

    @classmethod
    def from_url(cls, url: str | None = None) -> SqlLedger:
        url = ledger_url(url)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            create_private_sqlite_file(parsed.database or "")  # 0600 from creation
            engine = create_async_engine(url, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
        return cls(engine)

    def describe(self) -> str:
        return redacted(self.engine.url.render_as_string(hide_password=False))

    async def close(self) -> None:
        await self.engine.dispose()

    # --- schema ----------------------------------------------------------------------------

    async def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (Alembic upgrade); a no-op when it is there."""

        from alembic import command

        def upgrade(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def schema_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        def current(connection: Connection) -> str | None:
            return MigrationContext.configure(connection).get_current_revision()

        async with self.engine.connect() as conn:
            return await conn.run_sync(current)

    async def check_schema(self) -> None:
        found, head = await self.schema_revision(), head_revision()
        if found != head:
            raise LedgerSchemaError(
                f"the SLA ledger at {self.describe()} is at schema revision {found or 'none'},"
                f" this code needs {head}: run `python -m ledger migrate`"
            )

    # --- writes ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
        else:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    async def append(self, events: Sequence[SlaEvent]) -> int:
        added, _ = await self._write((), events, None)
        return added

    async def save_outcome(self, outcome: TicketOutcome) -> bool:
        _, saved = await self._write((), (), outcome)
        return saved

    async def mark_delivered(self, key: str, ticket_id: str, channel: str) -> None:
        await self._write([(key, ticket_id, channel)], (), None)

    async def record_delivery(
        self,
        delivered: Sequence[tuple[str, str, str]],
        events: Sequence[SlaEvent],
        outcome: TicketOutcome | None,
    ) -> int:
        """A step delivery's whole record in one transaction: the delivery log's rows
        (key, ticket id, channel), the step's events and the ticket's row. One commit per
        delivery instead of one per row (the ledger was a sixth of the worker's time in a
        burst: the profile in bench/results/README.md). Returns how many events were new."""
        added, _ = await self._write(delivered, events, outcome)
        return added

    async def _write(
        self,
        delivered: Sequence[tuple[str, str, str]],
        events: Sequence[SlaEvent],
        outcome: TicketOutcome | None,
    ) -> tuple[int, bool]:
        """The delivery log's rows, the events and the ticket's row, in that order and in
        one transaction; returns how many events were new and whether the ticket's row was
        written. The rows are made here, on the event loop; the statements run in one
        ``run_sync`` (one greenlet switch for the transaction, not one per statement)."""
        now = _now()
        marks = [
            {"key": key, "ticket_id": ticket_id, "channel": channel, "delivered_at": now}
            for key, ticket_id, channel in delivered
        ]
        rows = [_event_row(e, now) for e in events]
        ticket = _outcome_row(outcome, now) if outcome is not None else None

        def write(conn: Connection) -> tuple[int, bool]:
            statements = self._statements(conn.dialect)
            for mark in marks:
                statements.mark.run(conn, mark)
            # One execution per event, not executemany: each one's rowcount says whether
            # that event was new (a conflict is 0), on SQLite and PostgreSQL alike.
            added = sum(max(statements.event.run(conn, row).rowcount, 0) for row in rows)
            saved = ticket is not None and statements.outcome.run(conn, ticket).rowcount > 0
            return added, saved

        async with self._writing() as conn:
            return await conn.run_sync(write)

    def _statements(self, dialect: Dialect) -> _Statements:
        if self._prepared is None:
            self._prepared = _Statements(dialect)
        return self._prepared

    async def archive_policy(
        self, version: str, digest: str, document: str, source: str = ""
    ) -> str | None:
        async with self._writing() as conn:
            await conn.execute(
                self._insert(policy_versions)
                .values(
                    version=version,
                    digest=digest,
                    document=document,
                    source=source[:500],
                    recorded_at=_now(),
                )
                .on_conflict_do_nothing(index_elements=["version"])
            )
            # Read in the same transaction: a concurrent first writer's row is visible here
            # once our insert has given way to it.
            archived = await conn.scalar(
                select(policy_versions.c.digest).where(policy_versions.c.version == version)
            )
        return archived if archived is not None and archived != digest else None

    # --- reads -----------------------------------------------------------------------------

    async def policy_document(self, version: str) -> str | None:
        async with self.engine.connect() as conn:
            found = await conn.scalar(
                select(policy_versions.c.document).where(policy_versions.c.version == version)
            )
        return None if found is None else str(found)

    async def policy_versions(self) -> list[ArchivedPolicy]:
        """Every archived version (without its text), oldest first."""
        query = select(
            policy_versions.c.version,
            policy_versions.c.digest,
            policy_versions.c.recorded_at,
            policy_versions.c.source,
        ).order_by(policy_versions.c.recorded_at, policy_versions.c.version)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [ArchivedPolicy(r.version, r.digest, r.recorded_at, r.source) for r in rows]

    async def was_delivered(self, key: str) -> bool:
        def find(conn: Connection) -> bool:
            found = self._statements(conn.dialect).delivered.run(conn, {"key": key})
            return found.first() is not None

        async with self.engine.connect() as conn:
            return await conn.run_sync(find)

    async def wait_events(self, ticket_ids: Sequence[str]) -> dict[str, list[SlaEvent]]:
        """The waits on the customer of ``ticket_ids`` as their ledger events record them
        (``awaiting-customer-<n>`` and ``customer_resumed``), by ticket, in order: one
        query per 500 tickets, for the report (``ledger.report.wait_spans``)."""
        found: dict[str, list[SlaEvent]] = {ticket_id: [] for ticket_id in ticket_ids}
        ids = list(found)
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), WAIT_QUERY_CHUNK):
                rows = await conn.execute(
                    select(sla_events)
                    .where(
                        sla_events.c.ticket_id.in_(ids[start : start + WAIT_QUERY_CHUNK]),
                        or_(
                            sla_events.c.kind.startswith("awaiting-customer-", autoescape=True),
                            sla_events.c.kind == "customer_resumed",
                        ),
                    )
                    .order_by(sla_events.c.at, sla_events.c.id)
                )
                for row in rows.mappings():
                    event = _event(row)
                    found[event.ticket_id].append(event)
        return found

    async def events(self, ticket_id: str) -> list[SlaEvent]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(sla_events)
                .where(sla_events.c.ticket_id == ticket_id)
                .order_by(sla_events.c.at, sla_events.c.id)
            )
            return [_event(r) for r in rows.mappings()]

    async def outcome(self, ticket_id: str) -> TicketOutcome | None:
        async with self.engine.connect() as conn:
            data = await conn.scalar(
                select(tickets.c.outcome).where(tickets.c.ticket_id == ticket_id)
            )
        return TicketOutcome.model_validate(data) if data is not None else None

    async def outcomes(
        self,
        opened_from: datetime | None = None,
        opened_to: datetime | None = None,
        customer_id: str | None = None,
        tier: str | None = None,
    ) -> list[TicketOutcome]:
        """Ticket rows opened in ``[opened_from, opened_to)``, oldest first."""
        query = select(tickets.c.outcome).order_by(tickets.c.opened_at, tickets.c.ticket_id)
        if opened_from is not None:
            query = query.where(tickets.c.opened_at >= opened_from)
        if opened_to is not None:
            query = query.where(tickets.c.opened_at < opened_to)
        if customer_id is not None:
            query = query.where(tickets.c.customer_id == customer_id)
        if tier is not None:
            query = query.where(tickets.c.tier == tier)
        async with self.engine.connect() as conn:
            rows = await conn.scalars(query)
            return [TicketOutcome.model_validate(data) for data in rows]


class _Prepared:
    """One statement compiled once for a dialect, then run as its SQL
    (``exec_driver_sql``) with its parameters put through their columns' bind processing
    (aware UTC datetimes, JSON): what executing the statement would send, without
    compiling it again.

    SQLAlchemy 2.0's dialect ``insert`` has no cache key once it has an ON CONFLICT clause
    (``inherit_cache = False``), so every execution of one was compiled afresh, however it
    was built: most of the ledger's time in a burst of deliveries (issue 17)."""

    __slots__ = ("names", "processors", "sql")

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        # Both drivers (aiosqlite: qmark, asyncpg: numeric_dollar) take positional
        # parameters, in the order the compiled statement names them.
        assert dialect.positional and compiled.positiontup is not None, dialect.paramstyle
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup)
        self.processors = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self.names
        )

    def run(self, conn: Connection, values: dict[str, Any]) -> CursorResult[Any]:
        parameters = tuple(
            values[name] if process is None else process(values[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )
        return conn.exec_driver_sql(self.sql, parameters)


class _Statements:
    """The per-delivery writes and ``was_delivered``'s read, compiled for one dialect.
    Inserts are ``inline`` (no RETURNING of the new id: nothing reads it)."""

    def __init__(self, dialect: Dialect) -> None:
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert

        def values(table: Any, columns: Sequence[str]) -> Any:
            return insert(table).values({name: bindparam(name) for name in columns}).inline()

        self.mark = _Prepared(
            values(deliveries, DELIVERY_COLUMNS).on_conflict_do_nothing(index_elements=["key"]),
            dialect,
        )
        self.event = _Prepared(
            values(sla_events, EVENT_COLUMNS).on_conflict_do_nothing(index_elements=["key"]),
            dialect,
        )
        ticket = values(tickets, TICKET_COLUMNS)
        self.outcome = _Prepared(
            ticket.on_conflict_do_update(
                index_elements=["ticket_id"],
                set_={k: ticket.excluded[k] for k in TICKET_COLUMNS if k != "ticket_id"},
                where=tickets.c.revision < ticket.excluded.revision,
            ),
            dialect,
        )
        self.delivered = _Prepared(
            select(deliveries.c.key).where(deliveries.c.key == bindparam("key")), dialect
        )


# The columns each write sets (every column but the events' id): the keys of its rows.
DELIVERY_COLUMNS = tuple(c.name for c in deliveries.columns)
EVENT_COLUMNS = tuple(c.name for c in sla_events.columns if c.name != "id")
TICKET_COLUMNS = tuple(c.name for c in tickets.columns)


def _event_row(e: SlaEvent, now: datetime) -> dict[str, Any]:
    return {
        "key": e.key,
        "ticket_id": e.ticket_id,
        "kind": e.kind,
        "at": e.at,
        "source": e.source,
        "detail": e.model_dump(mode="json", include={"detail"})["detail"],
        "recorded_at": now,
    }


def _outcome_row(outcome: TicketOutcome, now: datetime) -> dict[str, Any]:
    return {
        "ticket_id": outcome.ticket_id,
        "workflow_id": outcome.workflow_id,
        "revision": outcome.revision,
        "customer_id": outcome.customer_id,
        "tier": outcome.tier.value,
        "severity": outcome.severity.value,
        "category": outcome.category,
        "state": outcome.state.value,
        "opened_at": outcome.opened_at,
        "response_due_at": outcome.response_due_at,
        "acknowledged_at": outcome.acknowledged_at,
        "acknowledged_by": outcome.acknowledged_by,
        "response_breached": outcome.response_breached,
        "overrun_seconds": outcome.overrun.total_seconds() if outcome.overrun else None,
        "escalations_fired": outcome.escalations_fired,
        "out_of_scope": outcome.out_of_scope,
        "sow_outcome": outcome.sow_outcome.value if outcome.sow_outcome else None,
        "resolved_at": outcome.resolved_at,
        "closed_at": outcome.closed_at,
        "policy_version": outcome.policy_version,
        "outcome": outcome.model_dump(mode="json"),
        "updated_at": now,
    }


def _event(row: Any) -> SlaEvent:
    return SlaEvent(
        key=row["key"],
        ticket_id=row["ticket_id"],
        kind=row["kind"],
        at=row["at"],
        source=row["source"],
        detail=row["detail"],
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _now() -> datetime:
    return datetime.now(UTC)
