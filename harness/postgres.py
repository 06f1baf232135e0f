"""PostgreSQL for the tests and the ledger drill: a scratch database, and a loopback TCP
proxy in front of the server that a drill can cut (the ledger "goes away") and restore.

The server is ``SUPPORT_TEST_POSTGRES_URL``, by default
``postgresql://postgres@127.0.0.1:5432/postgres`` with trust authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import URL, make_url

from harness.processes import HarnessError, free_port

ADMIN_URL = os.environ.get(
    "SUPPORT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class PostgresUnavailable(HarnessError):
    """The PostgreSQL server cannot be reached."""


@asynccontextmanager
async def scratch_database(
    admin_url: str = ADMIN_URL, prefix: str = "support_scratch"
) -> AsyncIterator[URL]:
    """A fresh database on the server, dropped afterwards; yields its URL (PostgresUnavailable
    when the server cannot be reached)."""
    import asyncpg

    admin = make_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(
            host=admin.host,
            port=admin.port,
            user=admin.username,
            password=admin.password,
            database=admin.database,
            timeout=5,
        )
    except (OSError, asyncpg.PostgresError) as err:
        raise PostgresUnavailable(f"PostgreSQL not reachable at {admin_url}: {err}") from err
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield admin.set(database=name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


class TcpProxy:
    """Forwards a loopback port to ``host:port``. ``cut()`` drops every open connection and
    refuses new ones; ``restore()`` listens again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    def url(self, database: URL) -> URL:
        """``database``'s URL, reached through this proxy."""
        return database.set(host="127.0.0.1", port=self.port)

    async def restore(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def close(self) -> None:
        await self.cut()
        for pipe in list(self._pipes):
            pipe.cancel()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            client.transport.abort()
            return
        self._open |= {client, upstream}
        for source, sink in ((client_reader, upstream), (upstream_reader, client)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
        self._open.discard(sink)
