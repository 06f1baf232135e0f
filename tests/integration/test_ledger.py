"""The SLA ledger on SQLite and PostgreSQL: migrations, idempotent appends, append-only
events, newest-revision-wins ticket rows. Every test runs on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from temporalio.testing import WorkflowEnvironment

from contract.models import Acknowledge, Resolve, SlaEvent, TicketOutcome
from ledger.store import LedgerSchemaError, SqlLedger, head_revision
from tests.conftest import (
    advance_to,
    now_second,
    open_ticket_at,
    running_stack,
    ticket,
)
from tests.integration.conftest import assert_refused, postgres_database

T0 = datetime(2026, 11, 26, 12, tzinfo=UTC)


def event(key: str, kind: str = "opened", minutes: int = 0, ticket: str = "T1") -> SlaEvent:
    return SlaEvent(
        key=key,
        ticket_id=ticket,
        kind=kind,
        at=T0 + timedelta(minutes=minutes),
        source="workflow",
        detail={"n": minutes, "targets": ["duty-engineer"], "note": "naïve ≠ 'quoted'"},
    )


def outcome(revision: int, state: str, **fields: object) -> TicketOutcome:
    data: dict[str, object] = {
        "ticket_id": "T1",
        "workflow_id": "ticket-T1",
        "revision": revision,
        "customer_id": "acme",
        "tier": "premium",
        "severity": "sev2",
        "category": "incident",
        "state": state,
        "opened_at": T0,
        "response_due_at": T0 + timedelta(hours=1),
    }
    return TicketOutcome.model_validate(data | fields)


async def test_migrations_bring_an_empty_database_to_head_and_are_idempotent(
    ledger_url: str,
) -> None:
    ledger = SqlLedger.from_url(ledger_url)
    try:
        with pytest.raises(LedgerSchemaError, match="python -m ledger migrate"):
            await ledger.check_schema()
        await ledger.migrate()
        await ledger.migrate()  # a second run changes nothing
        assert await ledger.schema_revision() == head_revision()
        await ledger.check_schema()
        async with ledger.engine.connect() as conn:
            names = await conn.run_sync(lambda c: sqlalchemy.inspect(c).get_table_names())
        tables = ("sla_events", "tickets", "deliveries", "policy_versions", "alembic_version")
        assert set(tables) <= set(names)
    finally:
        await ledger.close()


async def test_a_ledger_at_the_first_revision_keeps_its_rows_and_gains_the_policy_archive(
    ledger_url: str,
) -> None:
    ledger = SqlLedger.from_url(ledger_url)
    try:
        await ledger.migrate("0001")
        await ledger.append([event("ticket-T1/opened")])
        with pytest.raises(
            LedgerSchemaError, match=f"revision 0001, this code needs {head_revision()}"
        ):
            await ledger.check_schema()
        await ledger.migrate()
        await ledger.check_schema()
        assert [e.key for e in await ledger.events("T1")] == ["ticket-T1/opened"]
        assert await ledger.policy_versions() == []
    finally:
        await ledger.close()


async def test_events_are_appended_once_per_key(any_ledger: SqlLedger) -> None:
    ledger = any_ledger
    assert (
        await ledger.append([event("ticket-T1/opened"), event("ticket-T1/intake", "notified", 1)])
        == 2
    )
    assert (
        await ledger.append([event("ticket-T1/opened"), event("ticket-T1/ack", "acknowledged", 5)])
        == 1
    )
    events = await ledger.events("T1")
    assert [(e.key, e.kind, e.at) for e in events] == [
        ("ticket-T1/opened", "opened", T0),
        ("ticket-T1/intake", "notified", T0 + timedelta(minutes=1)),
        ("ticket-T1/ack", "acknowledged", T0 + timedelta(minutes=5)),
    ]
    assert all(e.at.tzinfo is not None for e in events)
    assert events[1].detail == {"n": 1, "targets": ["duty-engineer"], "note": "naïve ≠ 'quoted'"}


async def test_concurrent_retries_of_the_same_event_store_it_once(any_ledger: SqlLedger) -> None:
    import asyncio

    results = await asyncio.gather(
        *(any_ledger.append([event("ticket-T1/breach", "breached", 60)]) for _ in range(8))
    )
    assert sum(results) == 1
    assert [e.key for e in await any_ledger.events("T1")] == ["ticket-T1/breach"]


async def test_events_are_append_only_in_the_database_itself(any_ledger: SqlLedger) -> None:
    await any_ledger.append([event("ticket-T1/opened")])
    await assert_refused(
        any_ledger,
        "append-only",
        "UPDATE sla_events SET kind = 'forged'",
        "DELETE FROM sla_events",
    )
    assert [e.kind for e in await any_ledger.events("T1")] == ["opened"]


async def test_a_late_write_never_overwrites_a_newer_ticket_row(any_ledger: SqlLedger) -> None:
    ledger = any_ledger
    acked = T0 + timedelta(minutes=70)
    assert await ledger.save_outcome(
        outcome(
            3,
            "acknowledged",
            acknowledged_at=acked,
            acknowledged_by="ana",
            response_breached=True,
            overrun=timedelta(minutes=10),
            escalations_fired=4,
        )
    )
    assert not await ledger.save_outcome(outcome(2, "open")), "older revision is ignored"
    assert not await ledger.save_outcome(outcome(3, "acknowledged")), "a retry is a no-op"
    stored = await ledger.outcome("T1")
    assert stored is not None
    assert (stored.revision, stored.state, stored.acknowledged_at) == (3, "acknowledged", acked)
    assert stored.overrun == timedelta(minutes=10)
    assert await ledger.save_outcome(outcome(4, "resolved", resolved_at=T0 + timedelta(hours=2)))
    stored = await ledger.outcome("T1")
    assert stored is not None and (stored.revision, stored.state.value) == (4, "resolved")
    assert await ledger.outcome("nope") is None
    async with ledger.engine.connect() as conn:
        row = (
            await conn.execute(sqlalchemy.text("SELECT state, overrun_seconds FROM tickets"))
        ).one()
    assert tuple(row) == ("resolved", None), "the columns follow the newest revision too"


async def test_a_delivery_record_is_idempotent_and_keeps_the_newest_ticket_row(
    any_ledger: SqlLedger,
) -> None:
    """``record_delivery`` (the worker's per-delivery write, its statements compiled once
    per ledger): the new events are counted and a retried one is not; the delivery log
    takes a key once; an older revision of the ticket's row does not overwrite a newer."""
    ledger = any_ledger
    marks = [("ticket-T1/breach/eng", "T1", "chat"), ("ticket-T1/breach/lead", "T1", "email")]
    breach = [event("ticket-T1/breach", "breached", 60), event("ticket-T1/warn", "warned", 45)]
    assert await ledger.record_delivery(marks, breach, outcome(3, "open", escalations_fired=2)) == 2
    assert await ledger.record_delivery(marks, breach, outcome(3, "open")) == 0, "a retry"
    ack = event("ticket-T1/ack", "acknowledged", 70)
    late = outcome(2, "open", escalations_fired=1)
    assert await ledger.record_delivery([marks[0]], [breach[0], ack], late) == 1
    assert [e.key for e in await ledger.events("T1")] == [
        "ticket-T1/warn",
        "ticket-T1/breach",
        "ticket-T1/ack",
    ]
    stored = await ledger.outcome("T1")
    assert stored is not None and (stored.revision, stored.escalations_fired) == (3, 2)
    assert await ledger.record_delivery([], [], outcome(4, "acknowledged")) == 0
    stored = await ledger.outcome("T1")
    assert stored is not None and (stored.revision, stored.state.value) == (4, "acknowledged")
    assert await ledger.was_delivered("ticket-T1/breach/eng")
    assert await ledger.was_delivered("ticket-T1/breach/lead")
    assert not await ledger.was_delivered("ticket-T1/ack/eng")
    async with ledger.engine.connect() as conn:
        rows = await conn.execute(
            sqlalchemy.text("SELECT key, ticket_id, channel FROM deliveries ORDER BY key")
        )
        assert [tuple(r) for r in rows] == [
            ("ticket-T1/breach/eng", "T1", "chat"),
            ("ticket-T1/breach/lead", "T1", "email"),
        ]


async def test_a_delivery_record_is_one_transaction(any_ledger: SqlLedger) -> None:
    """The database refuses the step's event (its source is NULL): the delivery log's row
    written before it in the same record is rolled back with it."""
    broken = SlaEvent.model_construct(
        key="ticket-T1/breach", ticket_id="T1", kind="breached", at=T0, source=None, detail={}
    )
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        await any_ledger.record_delivery([("ticket-T1/breach/eng", "T1", "chat")], [broken], None)
    assert not await any_ledger.was_delivered("ticket-T1/breach/eng")
    assert await any_ledger.events("T1") == []
    # The ledger writes on after the failure.
    assert await any_ledger.record_delivery([("ticket-T1/breach/eng", "T1", "chat")], [], None) == 0
    assert await any_ledger.was_delivered("ticket-T1/breach/eng")


async def test_outcomes_filter_by_open_time_customer_and_tier(any_ledger: SqlLedger) -> None:
    for i, (customer, tier) in enumerate(
        [("acme", "premium"), ("acme", "standard"), ("globex", "premium"), ("acme", "premium")]
    ):
        await any_ledger.save_outcome(
            outcome(
                1,
                "open",
                ticket_id=f"T{i}",
                customer_id=customer,
                tier=tier,
                opened_at=T0 + timedelta(days=i),
            )
        )
    ids = lambda found: [o.ticket_id for o in found]  # noqa: E731
    assert ids(await any_ledger.outcomes()) == ["T0", "T1", "T2", "T3"]
    assert ids(await any_ledger.outcomes(T0 + timedelta(days=1), T0 + timedelta(days=3))) == [
        "T1",
        "T2",
    ]
    assert ids(await any_ledger.outcomes(customer_id="acme", tier="premium")) == ["T0", "T3"]


async def test_the_delivery_log_survives_reopening(ledger_url: str) -> None:
    first = SqlLedger.from_url(ledger_url)
    await first.migrate()
    await first.append([event("ticket-T1/opened")])
    await first.mark_delivered("ticket-T1/intake/eng", "T1", "chat")
    await first.mark_delivered("ticket-T1/intake/eng", "T1", "chat")  # retried: no error
    await first.close()
    second = SqlLedger.from_url(ledger_url)
    try:
        assert [e.key for e in await second.events("T1")] == ["ticket-T1/opened"]
        assert await second.was_delivered("ticket-T1/intake/eng")
        assert not await second.was_delivered("ticket-T1/intake/lead")
    finally:
        await second.close()


def test_ledger_urls_get_their_async_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger.url import ledger_url

    monkeypatch.delenv("SUPPORT_LEDGER_URL", raising=False)
    assert ledger_url() == "sqlite+aiosqlite:///.data/sla-ledger.sqlite3"
    assert ledger_url("postgresql://u@db:5432/sla") == "postgresql+asyncpg://u@db:5432/sla"
    assert ledger_url("sqlite:////var/x.db") == "sqlite+aiosqlite:////var/x.db"
    monkeypatch.setenv("SUPPORT_LEDGER_URL", "mysql://root@localhost/x")
    with pytest.raises(ValueError, match="SUPPORT_LEDGER_URL: 'mysql' is not supported"):
        ledger_url()


async def test_the_sqlite_file_goes_where_the_url_says(tmp_path: Path) -> None:
    ledger = SqlLedger.from_url(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'l.sqlite3'}")
    await ledger.migrate()
    await ledger.close()
    assert (tmp_path / "nested" / "dir" / "l.sqlite3").exists()


async def test_a_ticket_run_leaves_the_same_ledger_on_sqlite_and_postgresql(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """The same scenario, run by the real workflow on the time-skipping server, once per
    backend: the events (kinds, keys, sources, instants relative to opening, details) and
    the ticket's row are identical."""
    runs = {}
    async with postgres_database() as pg_url:
        for backend, url in (("sqlite", f"sqlite:///{tmp_path / 'l.sqlite3'}"), ("pg", pg_url)):
            async with running_stack(env, ledger_url=url) as stack:
                t0 = await now_second(env)
                data = ticket()
                handle = await open_ticket_at(stack, data, t0)
                await advance_to(env, t0 + timedelta(minutes=61))  # warnings and the breach
                await handle.signal("acknowledge", Acknowledge(agent="ana"))
                await handle.signal("resolve", Resolve(by="ana", summary="fixed"))
                await handle.result()
                outcome = await stack.ledger.outcome(data.ticket_id)
                runs[backend] = (
                    normalise(await stack.ledger.events(data.ticket_id), data.ticket_id, t0),
                    outcome,
                    t0,
                )
    (sqlite_events, sqlite_row, t_sqlite), (pg_events, pg_row, t_pg) = runs.values()
    assert sqlite_events == pg_events
    assert [kind for kind, *_ in sqlite_events] == [
        "opened",
        "notified",
        "warned",
        "warned",
        "breached",
        "acknowledged",
        "resolved",
    ]
    assert sqlite_row is not None and pg_row is not None
    fields = ("state", "response_breached", "escalations_fired", "acknowledged_by", "revision")
    assert [getattr(sqlite_row, f) for f in fields] == [getattr(pg_row, f) for f in fields]
    assert (
        sqlite_row.response_due_at - t_sqlite == pg_row.response_due_at - t_pg == timedelta(hours=1)
    )
    assert (sqlite_row.state, sqlite_row.response_breached) == ("resolved", True)


def normalise(events: list[SlaEvent], ticket_id: str, t0: datetime) -> list[tuple[object, ...]]:
    """Events with the ticket id and absolute instants taken out."""

    def clean(value: object) -> object:
        if isinstance(value, str):
            value = value.replace(ticket_id, "<id>")
            try:
                return round((datetime.fromisoformat(value) - t0).total_seconds())
            except ValueError:
                return value
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k != "overrun_seconds"}
        return value

    # A step's event is stamped when it fired (milliseconds after its instant, and up to a
    # second after opening for intake): compare its exact due instant instead.
    return [
        (
            e.kind,
            clean(e.key),
            e.source,
            clean(e.detail["due_at"])
            if "due_at" in e.detail
            else round((e.at - t0).total_seconds()),
            clean(e.detail),
        )
        for e in events
    ]
