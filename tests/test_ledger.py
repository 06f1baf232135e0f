"""The SQLite SLA ledger: idempotent appends, newest-revision-wins ticket rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from activities.ledger import SqliteLedger
from support.models import SlaEvent, TicketOutcome

T0 = datetime(2026, 11, 26, 12, tzinfo=UTC)


def event(key: str, kind: str = "opened", minutes: int = 0) -> SlaEvent:
    return SlaEvent(
        key=key,
        ticket_id="T1",
        kind=kind,
        at=T0 + timedelta(minutes=minutes),
        source="workflow",
        detail={"n": minutes},
    )


def outcome(revision: int, state: str) -> TicketOutcome:
    return TicketOutcome(
        ticket_id="T1",
        workflow_id="ticket-T1",
        revision=revision,
        customer_id="acme",
        tier="premium",
        severity="sev2",
        category="incident",
        state=state,
        opened_at=T0,
    )


async def test_events_are_appended_once_per_key(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite3")
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
    assert events[1].detail == {"n": 1}


async def test_a_late_write_never_overwrites_a_newer_ticket_row(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite3")
    assert await ledger.save_outcome(outcome(3, "acknowledged"))
    assert not await ledger.save_outcome(outcome(2, "open")), "older revision is ignored"
    assert not await ledger.save_outcome(outcome(3, "acknowledged")), "a retry is a no-op"
    assert await ledger.save_outcome(outcome(4, "resolved"))
    stored = await ledger.outcome("T1")
    assert stored is not None and (stored.revision, stored.state.value) == (4, "resolved")
    assert await ledger.outcome("nope") is None


async def test_the_ledger_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    first = SqliteLedger(path)
    await first.append([event("ticket-T1/opened")])
    await first.mark_delivered("ticket-T1/intake/eng", "T1", "webhook")
    first.close()
    second = SqliteLedger(path)
    assert [e.key for e in await second.events("T1")] == ["ticket-T1/opened"]
    assert await second.was_delivered("ticket-T1/intake/eng")
    assert not await second.was_delivered("ticket-T1/intake/lead")
