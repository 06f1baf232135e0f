"""The design users would pick instead: a database-polling SLA checker.

One table of tickets with their due instant; a checker wakes every ``interval`` seconds,
selects the rows that fell due and are not yet notified, posts each one's notification
(the same HTTP post to the same sink as the tickets' webhooks, 32 at a time) and marks it
notified. This is what a cron job or a helpdesk's SLA sweep does; its lateness is bounded
below by the interval, whatever the machine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

SCHEMA = """
CREATE TABLE IF NOT EXISTS sla_checks (
    ticket_id TEXT PRIMARY KEY,
    due_at REAL NOT NULL,          -- epoch seconds
    notified_at REAL
);
CREATE INDEX IF NOT EXISTS sla_checks_due ON sla_checks (due_at) WHERE notified_at IS NULL;
"""


class PollingChecker:
    def __init__(self, database: Path, sink_url: str, interval: float) -> None:
        self.db = sqlite3.connect(database)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.sink_url = sink_url
        self.interval = interval

    def load(self, due: Sequence[tuple[str, datetime]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO sla_checks (ticket_id, due_at) VALUES (?, ?)",
                [(ticket_id, at.timestamp()) for ticket_id, at in due],
            )

    def pending(self) -> int:
        row = self.db.execute("SELECT count(*) FROM sla_checks WHERE notified_at IS NULL")
        return int(row.fetchone()[0])

    async def sweep(self, http: httpx.AsyncClient) -> int:
        """One pass: notify every row due now; returns how many."""
        now = time.time()
        rows = self.db.execute(
            "SELECT ticket_id, due_at FROM sla_checks WHERE notified_at IS NULL AND due_at <= ?",
            (now,),
        ).fetchall()
        semaphore = asyncio.Semaphore(32)

        async def notify(ticket_id: str, due_at: float) -> None:
            async with semaphore:
                due = datetime.fromtimestamp(due_at, UTC).isoformat()
                response = await http.post(
                    f"{self.sink_url}/polling",
                    json={"idempotency_key": ticket_id, "due_at": due},
                    headers={"Idempotency-Key": ticket_id},
                )
                response.raise_for_status()

        await asyncio.gather(*(notify(t, d) for t, d in rows))
        with self.db:
            self.db.executemany(
                "UPDATE sla_checks SET notified_at = ? WHERE ticket_id = ?",
                [(time.time(), t) for t, _ in rows],
            )
        return len(rows)

    async def run_until_done(self, on_sweep: Callable[[int], None] | None = None) -> None:
        """Sweep every ``interval`` seconds (on a fixed cadence, like cron) until no row is
        left; ``on_sweep(count)`` is told each pass's count."""
        async with httpx.AsyncClient(timeout=10.0) as http:
            next_at = time.monotonic()
            while self.pending():
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += self.interval
                count = await self.sweep(http)
                if on_sweep is not None:
                    on_sweep(count)

    def close(self) -> None:
        self.db.close()
