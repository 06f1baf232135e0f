"""How the ops CLI prints: times (UTC, local with UTC), durations and countdowns, the
tickets table, a ticket's status and JSON (its console: ``runtime.console``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich import box
from rich.console import ConsoleRenderable, Group
from rich.table import Table
from rich.text import Text

from contract.client import TicketSummary
from contract.models import DeliveryFailure, TicketState, TicketStatus, ticket_workflow_id

# The countdown turns yellow this close to the deadline.
SOON = timedelta(minutes=15)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def utc(instant: datetime | None) -> str:
    return "-" if instant is None else instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def local_and_utc(instant: datetime | None, time_zone: str) -> str:
    """``2026-11-26 10:00:00 CST (America/Chicago) = 2026-11-26 16:00:00 UTC``."""
    if instant is None:
        return "-"
    zone = _zone(time_zone)
    if zone is None or time_zone == "UTC":
        return f"{utc(instant)} UTC"
    local = instant.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({time_zone}) = {utc(instant)} UTC"


def duration(delta: timedelta) -> str:
    """``1h 05m``, ``45m 10s``, ``2d 03h``, ``4h``, ``12s``: at most the two largest units,
    unsigned (the caller says "in" or "overdue")."""
    left = abs(round(delta.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, left = divmod(left, size)
        if amount or parts:
            parts.append(f"{amount:02d}{unit}" if parts else f"{amount}{unit}")
    shown = parts[:2]
    if len(shown) == 2 and int(shown[1][:-1]) == 0:
        shown = shown[:1]
    return " ".join(shown) or "0s"


def next_due(ticket: TicketSummary) -> str:
    """The nearest deadline that runs (the countdown names its target); ``-`` when none
    runs (acknowledged with no target running, Community, closed)."""
    return "-" if ticket.deadline is None else utc(ticket.deadline[0])


def countdown(ticket: TicketSummary, now: datetime) -> Text:
    """Time to the nearest deadline that runs, naming its target unless it is the first
    response (``in 2h 10m (resolution)``)."""
    if ticket.deadline is None:
        return Text("-")
    due, metric = ticket.deadline
    left = due - now
    which = "" if metric == "first_response" else f" ({metric.replace('_', ' ')})"
    if left <= timedelta(0):
        return Text(f"overdue {duration(left)}{which}", style="bold red")
    return Text(f"in {duration(left)}{which}", style="yellow" if left <= SOON else "")


def _breached(value: bool | None) -> Text:
    if value is None:
        return Text("-")
    return Text("yes", style="bold red") if value else Text("no")


def _state(ticket: TicketSummary) -> str:
    state = ticket.state.value if ticket.state else "?"
    if ticket.closed and ticket.execution_status != "completed":
        return f"{state} ({ticket.execution_status})"
    return state


def _value(value: Any) -> str:
    if value is None:
        return "-"
    return str(getattr(value, "value", value))


def tickets_table(
    tickets: Sequence[TicketSummary], now: datetime, title: str | None, caption: str | None = None
) -> Table:
    """The tickets as rows; ``caption`` under them (a cut or unranked listing says so)."""
    table = Table(
        title=title,
        caption=None if caption is None else Text(caption),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    for name in ("ticket", "customer", "tier", "severity", "state", "started (UTC)"):
        table.add_column(name)
    table.add_column("next due (UTC)")
    table.add_column("to breach", justify="right")
    table.add_column("breached")
    for ticket in tickets:
        overdue = ticket.deadline is not None and ticket.deadline[0] <= now
        table.add_row(
            ticket.ticket_id,
            _value(ticket.customer_id),
            _value(ticket.tier),
            _value(ticket.severity),
            _state(ticket),
            utc(ticket.opened_at),
            next_due(ticket),
            countdown(ticket, now),
            _breached(ticket.breached),
            style="red" if ticket.breached or overdue else None,
        )
    return table


def _failures(failed: list[DeliveryFailure]) -> str:
    return "; ".join(
        f"{f.recipient} via {f.channel}: {f.error}"
        + (f" (fell over to {f.fell_over_to})" if f.fell_over_to else "")
        for f in failed
    )


def status_view(status: TicketStatus, execution: str, now: datetime) -> Group:
    zone = status.time_zone
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()

    def row(label: str, value: str | Text) -> None:
        header.add_row(label, value)

    workflow_id = ticket_workflow_id(status.ticket_id)
    row("ticket", f"{status.ticket_id} (workflow {workflow_id}, {execution})")
    state = Text(status.state.value, style="bold")
    row("state", state)
    row("tier", status.tier.value + ("" if status.commercial_sla else " (no commercial SLA)"))
    row("severity", status.severity.value)
    row("customer", status.customer_id)
    row("category", status.category)
    row("opened", local_and_utc(status.opened_at, zone))
    if status.response_target is not None:
        row("response target", duration(status.response_target))
    if status.response_due_at is None:
        row("response due", "no response target")
    else:
        due = local_and_utc(status.response_due_at, zone)
        if status.state is TicketState.OPEN and execution == "running":
            left = status.response_due_at - now
            due += f" ({'overdue ' if left <= timedelta(0) else 'in '}{duration(left)})"
        row("response due", due)
    if status.acknowledged_at is not None:
        row(
            "acknowledged",
            f"{local_and_utc(status.acknowledged_at, zone)} by {status.acknowledged_by}",
        )
    else:
        row("acknowledged", "no")
    if not status.commercial_sla:
        row("breached", "n/a (no SLA)")
    elif status.response_breached:
        breached_at = local_and_utc(status.breached_at, zone) if status.breached_at else ""
        row("breached", Text(f"yes {breached_at}".rstrip(), style="bold red"))
    else:
        row("breached", "no")
    for line in target_lines(status):
        row(*line)
    if status.next_step is not None:
        row("next step", f"{status.next_step} at {local_and_utc(status.next_step_due_at, zone)}")
    else:
        row("next step", "-")
    if status.sow is not None:
        row("statement of work", f"{status.sow.workflow_id}: {status.sow.outcome.value}")
    if status.resolved_at is not None:
        row("resolved", f"{local_and_utc(status.resolved_at, zone)} by {status.resolved_by}")
    if status.closed_at is not None:
        row("closed", local_and_utc(status.closed_at, zone))
    row("policy", _value(status.policy_version))

    history = Table(
        title="History (UTC)", box=box.SIMPLE_HEAD, show_edge=False, title_justify="left"
    )
    for name in ("at", "kind", "by", "detail"):
        history.add_column(name)
    for entry in status.history:
        alarming = ("breach", "missed", "failed", "rejected")
        style = "red" if any(word in entry.kind for word in alarming) else None
        history.add_row(
            utc(entry.at), entry.kind, _value(entry.by), entry.detail or "", style=style
        )

    escalations = Table(
        title="Escalations (UTC)", box=box.SIMPLE_HEAD, show_edge=False, title_justify="left"
    )
    for name in ("step", "kind", "due", "fired", "targets", "failed"):
        escalations.add_column(name)
    for step in status.escalations:
        escalations.add_row(
            step.step,
            step.kind.value,
            utc(step.due_at),
            utc(step.fired_at),
            ", ".join(step.targets),
            _failures(step.failed),
            style="red" if step.failed else None,
        )
    parts: list[ConsoleRenderable] = [header, Text(""), history, Text("")]
    parts.append(escalations if status.escalations else Text("No escalations yet."))
    return Group(*parts)


def target_lines(status: TicketStatus) -> list[tuple[str, str]]:
    """The targets beyond the first response (next reply, resolution) and a wait on the
    customer, one ``(label, value)`` each (docs/ticket-life.md#targets)."""
    zone = status.time_zone
    rows: list[tuple[str, str]] = []
    for t in status.targets:
        if t.metric.value == "first_response":
            continue
        due = local_and_utc(t.due_at, zone) if t.due_at else "-"
        if t.met_at is not None:
            state = f"met {local_and_utc(t.met_at, zone)}" + (" (late)" if t.breached else "")
        elif t.paused_since is not None:
            state = "paused"
        else:
            state = "breached" if t.breached else "running"
        paused = f", paused {duration(t.paused)}" if t.paused else ""
        label = t.metric.value.replace("_", " ") + (f" {t.cycle}" if t.cycle > 1 else "")
        rows.append((label, f"due {due}: {state}{paused}"))
    if status.awaiting_customer_since is not None:
        since = local_and_utc(status.awaiting_customer_since, zone)
        rows.append(("waiting on customer", f"since {since}: {status.awaiting_customer_reason}"))
    return rows


def status_lines(status: TicketStatus) -> list[str]:
    """The part of a ticket's status an action changes, one ``label  value`` line each."""
    zone = status.time_zone
    rows = [("state", status.state.value)]
    if status.response_due_at is not None:
        rows.append(("response due", local_and_utc(status.response_due_at, zone)))
    if status.acknowledged_at is not None:
        rows.append(
            (
                "acknowledged",
                f"{local_and_utc(status.acknowledged_at, zone)} by {status.acknowledged_by}",
            )
        )
    if status.commercial_sla:
        rows.append(("breached", "yes" if status.response_breached else "no"))
    if status.resolved_at is not None:
        rows.append(
            ("resolved", f"{local_and_utc(status.resolved_at, zone)} by {status.resolved_by}")
        )
    rows += target_lines(status)
    rows.append(("policy", _value(status.policy_version)))
    width = max(len(label) for label, _ in rows) + 2
    return [f"{label.ljust(width)}{value}" for label, value in rows]


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
