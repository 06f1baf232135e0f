"""Alembic environment for the SLA ledger (async engines: aiosqlite and asyncpg).

Run through ``python -m ledger migrate`` (or ``SqlLedger.migrate()``), which hands a live
connection in ``config.attributes["connection"]``; plain ``alembic -c ledger/alembic.ini``
also works and connects to ``SUPPORT_LEDGER_URL`` through the ledger's own engine, so a
SQLite file it has to create is the owner's only (0600) from its creation, as the
ledger's is.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from ledger.schema import metadata
from ledger.store import SqlLedger
from ledger.url import ledger_url

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    ledger = SqlLedger.from_url()
    async with ledger.engine.connect() as connection:
        await connection.run_sync(_run)
    await ledger.close()


if context.is_offline_mode():
    context.configure(url=ledger_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    _run(shared)
else:
    asyncio.run(_run_async())
