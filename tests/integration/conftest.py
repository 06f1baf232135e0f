"""Fixtures of the integration tests only: ledgers on both backends (SQLite and a scratch
PostgreSQL database) and a check of what their triggers refuse, SMTP servers on loopback,
and the body of a valid intake request. The ones the workflow or end-to-end tests share
(the Temporal servers, the stack, the HTTP sink) are in ``tests/conftest.py``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy
from sqlalchemy.exc import DBAPIError

from harness.postgres import PostgresUnavailable, scratch_database
from harness.sinks import Mailbox, smtp_settings, smtp_sink
from ledger.store import SqlLedger
from tests.certs import Authority
from tests.conftest import POSTGRES_ADMIN_URL, REQUIRE_POSTGRES

# --- intake -------------------------------------------------------------------------------


def intake_body(ticket_id: str, **fields: Any) -> dict[str, Any]:
    """The JSON of a valid intake ticket (premium: its intake step goes out on every
    channel), ``fields`` overriding."""
    return {
        "ticket_id": ticket_id,
        "customer_id": "acme",
        "tier": "premium",
        "severity": "sev2",
        "subject": "Checkout API returns 500",
        "reporter_email": "ops@acme.example",
    } | fields


# --- the SLA ledger on both backends ------------------------------------------------------


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards; yields its URL."""
    async with AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(
                scratch_database(POSTGRES_ADMIN_URL, prefix="support_test")
            )
        except PostgresUnavailable as err:
            if REQUIRE_POSTGRES:
                pytest.fail(f"PostgreSQL is required (CI) but: {err}")
            pytest.skip(str(err))
        yield url.render_as_string(hide_password=False)


@pytest_asyncio.fixture(loop_scope="session", params=["sqlite", "postgresql"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty (unmigrated) ledger database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        async with postgres_database() as url:
            yield url


@pytest_asyncio.fixture(loop_scope="session")
async def any_ledger(ledger_url: str) -> AsyncIterator[SqlLedger]:
    """A migrated ledger on each backend."""
    ledger = SqlLedger.from_url(ledger_url)
    await ledger.migrate()
    yield ledger
    await ledger.close()


async def assert_refused(ledger: SqlLedger, match: str, *statements: str) -> None:
    """Each of ``statements`` (raw SQL) is refused by the database itself, with an error
    matching ``match`` (a trigger, not the ledger's code)."""
    for statement in statements:
        with pytest.raises(DBAPIError, match=match):
            async with ledger.engine.begin() as conn:
                await conn.execute(sqlalchemy.text(statement))


# --- SMTP servers on loopback (harness.sinks) ---------------------------------------------


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """A plain SMTP server on loopback, and the worker's SMTP settings pointing at it."""
    with smtp_sink() as box:
        for name, value in smtp_settings(box).items():
            monkeypatch.setenv(name, value)
        yield box


@pytest.fixture
def tls_mailbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Mailbox]:
    """An SMTP server that requires STARTTLS and then AUTH (user ``sla``, password ``s3cret``)."""
    authority = Authority(tmp_path)
    server = authority.issue("smtp", "localhost", server=True)  # also valid for 127.0.0.1
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    with smtp_sink(tls=context, login=("sla", "s3cret")) as box:
        settings = {
            **smtp_settings(box, security="starttls"),
            "SUPPORT_SMTP_CA_FILE": str(authority.pem),
            "SUPPORT_SMTP_USERNAME": "sla",
            "SUPPORT_SMTP_PASSWORD": "s3cret",
        }
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        yield box
