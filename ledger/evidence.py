"""Evidence export for one ticket: its ledger row and every SLA event, as JSON or CSV.

JSON: ``{"ticket_id", "ticket": <ledger row>, "events": [{at, kind, source, key, detail}]}``
with ISO 8601 timestamps and the overrun in seconds (``overrun_seconds``). CSV: columns
``record, at, kind, source, key, detail``; the first line is the ledger row
(``record=ticket``, ``at`` = opened, ``key`` = the workflow id, ``detail`` = the row as
JSON), then one ``record=event`` line per event in time order (``detail`` as JSON).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import Any, TextIO

from contract.models import SlaEvent, TicketOutcome
from ledger.render import iso, seconds
from ledger.store import SqlLedger

EVIDENCE_CSV_COLUMNS = ("record", "at", "kind", "source", "key", "detail")


@dataclass(frozen=True)
class Evidence:
    ticket_id: str
    ticket: TicketOutcome | None
    events: list[SlaEvent]


async def collect_evidence(ledger: SqlLedger, ticket_id: str) -> Evidence | None:
    """The ticket's row and events, or None when the ledger knows nothing of it."""
    ticket = await ledger.outcome(ticket_id)
    events = await ledger.events(ticket_id)
    if ticket is None and not events:
        return None
    return Evidence(ticket_id, ticket, events)


def ticket_record(ticket: TicketOutcome) -> dict[str, Any]:
    record = ticket.model_dump(mode="json", exclude={"overrun"})
    record["overrun_seconds"] = seconds(ticket.overrun)
    return record


def event_record(event: SlaEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "kind": event.kind,
        "source": event.source,
        "key": event.key,
        "detail": event.model_dump(mode="json")["detail"],
    }


def evidence_record(evidence: Evidence) -> dict[str, Any]:
    return {
        "ticket_id": evidence.ticket_id,
        "ticket": ticket_record(evidence.ticket) if evidence.ticket else None,
        "events": [event_record(e) for e in evidence.events],
    }


def render_evidence_json(evidence: Evidence, out: TextIO) -> None:
    json.dump(evidence_record(evidence), out, indent=2, ensure_ascii=False)
    out.write("\n")


def _compact(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def render_evidence_csv(evidence: Evidence, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EVIDENCE_CSV_COLUMNS)
    if evidence.ticket is not None:
        t = evidence.ticket
        writer.writerow(
            [
                "ticket",
                iso(t.opened_at),
                "ticket",
                "ledger",
                t.workflow_id,
                _compact(ticket_record(t)),
            ]
        )
    for e in evidence.events:
        r = event_record(e)
        writer.writerow(["event", r["at"], r["kind"], r["source"], r["key"], _compact(r["detail"])])
