"""The SLA ledger: the system of record that outlives Temporal's retention.

Append-only events, each with a unique idempotency key, one summary row per ticket, and
the delivery log that makes notifications exactly-once at our side. ``SlaLedger`` is the
small repository interface; ``SqliteLedger`` is the embedded default (a file under
``.data/``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from temporalio import activity

from support.models import SlaEvent, SlaEvents, TicketOutcome

LEDGER_PATH_ENV = "SUPPORT_LEDGER_PATH"
DEFAULT_LEDGER_PATH = Path(".data") / "ledger.sqlite3"

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sla_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    ticket_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sla_events_ticket ON sla_events (ticket_id, at);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    state TEXT NOT NULL,
    tier TEXT NOT NULL,
    severity TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    response_due_at TEXT,
    acknowledged_at TEXT,
    response_breached INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    ticket_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    delivered_at TEXT NOT NULL
);
"""


class SlaLedger(Protocol):
    async def append(self, events: list[SlaEvent]) -> int:
        """Store events not stored before (by key); return how many were new."""
        ...

    async def save_outcome(self, outcome: TicketOutcome) -> bool:
        """Store the ticket's row unless a newer revision is already there."""
        ...

    async def was_delivered(self, key: str) -> bool: ...

    async def mark_delivered(self, key: str, ticket_id: str, channel: str) -> None: ...

    async def events(self, ticket_id: str) -> list[SlaEvent]: ...

    async def outcome(self, ticket_id: str) -> TicketOutcome | None: ...


class SqliteLedger:
    """SQLite in WAL mode; one connection guarded by a lock, calls run off the event loop."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> SqliteLedger:
        return cls(os.environ.get(LEDGER_PATH_ENV) or DEFAULT_LEDGER_PATH)

    def close(self) -> None:
        self._conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._conn)

        return await asyncio.to_thread(locked)

    async def append(self, events: list[SlaEvent]) -> int:
        now = _now()

        def write(conn: sqlite3.Connection) -> int:
            with conn:
                conn.execute("BEGIN")
                cursor = conn.executemany(
                    "INSERT OR IGNORE INTO sla_events"
                    " (key, ticket_id, kind, at, source, detail, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.key,
                            e.ticket_id,
                            e.kind,
                            e.at.isoformat(),
                            e.source,
                            json.dumps(e.detail, sort_keys=True, default=str),
                            now,
                        )
                        for e in events
                    ],
                )
                return cursor.rowcount

        return await self._run(write)

    async def save_outcome(self, outcome: TicketOutcome) -> bool:
        now = _now()

        def write(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO tickets (ticket_id, revision, outcome, state, tier, severity,"
                " customer_id, opened_at, response_due_at, acknowledged_at, response_breached,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (ticket_id) DO UPDATE SET revision = excluded.revision,"
                " outcome = excluded.outcome, state = excluded.state, tier = excluded.tier,"
                " severity = excluded.severity, customer_id = excluded.customer_id,"
                " opened_at = excluded.opened_at, response_due_at = excluded.response_due_at,"
                " acknowledged_at = excluded.acknowledged_at,"
                " response_breached = excluded.response_breached,"
                " updated_at = excluded.updated_at"
                " WHERE excluded.revision > tickets.revision",
                (
                    outcome.ticket_id,
                    outcome.revision,
                    outcome.model_dump_json(),
                    outcome.state.value,
                    outcome.tier.value,
                    outcome.severity.value,
                    outcome.customer_id,
                    outcome.opened_at.isoformat(),
                    _iso(outcome.response_due_at),
                    _iso(outcome.acknowledged_at),
                    int(outcome.response_breached),
                    now,
                ),
            )
            return cursor.rowcount > 0

        return await self._run(write)

    async def was_delivered(self, key: str) -> bool:
        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT 1 FROM deliveries WHERE key = ?", (key,)).fetchone()
            return row is not None

        return await self._run(read)

    async def mark_delivered(self, key: str, ticket_id: str, channel: str) -> None:
        now = _now()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO deliveries (key, ticket_id, channel, delivered_at)"
                " VALUES (?, ?, ?, ?)",
                (key, ticket_id, channel, now),
            )

        await self._run(write)

    async def events(self, ticket_id: str) -> list[SlaEvent]:
        def read(conn: sqlite3.Connection) -> list[SlaEvent]:
            rows = conn.execute(
                "SELECT key, ticket_id, kind, at, source, detail FROM sla_events"
                " WHERE ticket_id = ? ORDER BY at, id",
                (ticket_id,),
            ).fetchall()
            return [
                SlaEvent(
                    key=r[0],
                    ticket_id=r[1],
                    kind=r[2],
                    at=datetime.fromisoformat(r[3]),
                    source=r[4],
                    detail=json.loads(r[5]),
                )
                for r in rows
            ]

        return await self._run(read)

    async def outcome(self, ticket_id: str) -> TicketOutcome | None:
        def read(conn: sqlite3.Connection) -> TicketOutcome | None:
            row = conn.execute(
                "SELECT outcome FROM tickets WHERE ticket_id = ?", (ticket_id,)
            ).fetchone()
            return TicketOutcome.model_validate_json(row[0]) if row else None

        return await self._run(read)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class LedgerActivities:
    def __init__(self, ledger: SlaLedger) -> None:
        self.ledger = ledger

    @activity.defn(name="record_sla_events")
    async def record_sla_events(self, batch: SlaEvents) -> int:
        """Append events and update the ticket's row; safe to retry (keys, revisions)."""
        added = await self.ledger.append(batch.events)
        if batch.summary is not None:
            await self.ledger.save_outcome(batch.summary)
        activity.logger.info(
            "ledger write",
            extra={"events": [e.key for e in batch.events], "new_events": added},
        )
        return added
