"""``list``, ``show``, ``ack`` / ``resolve`` / ``reply`` / ``wait`` and ``watch``: tickets
from visibility, one ticket's status, and the agent's actions through the ticket's
update."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import BaseModel
from rich.live import Live
from rich.table import Table
from temporalio.client import Client

from contract import names
from contract.client import (
    UPDATE_WAIT,
    Listing,
    TicketNotFound,
    apply_action,
    read_listing,
    ticket_details,
)
from contract.models import (
    Acknowledge,
    AgentReply,
    AwaitCustomer,
    Resolve,
    ticket_workflow_id,
)
from ops.common import EXIT_OK
from ops.output import print_json, status_lines, status_view, tickets_table, utc
from runtime.console import emit, make_console


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "state": args.state,
        "tier": args.tier,
        "severity": args.severity,
        "breached": args.breached,
        "customer": args.customer,
        "limit": args.limit,
    }


async def list_command(
    client: Client, args: argparse.Namespace, out: TextIO, err: TextIO | None = None
) -> int:
    """Open or acknowledged tickets (``--state``) ranked across all of them, page
    ``--page`` of ``--limit``; any other listing the newest ``--limit``, sorted. A cut
    listing says so: under the table, or with ``--json`` on stderr (stdout stays the
    tickets' JSON array)."""
    listing = await read_listing(client, **_filters(args), page=args.page)
    tickets, notice = listing.tickets, listing.notice()
    if args.json:
        print_json([t.model_dump(mode="json") for t in tickets], out)
        if notice:
            (err or sys.stderr).write(f"note: {notice}\n")
        return EXIT_OK
    console = make_console(out)
    if tickets:
        console.print(tickets_table(tickets, datetime.now(UTC), None))
    else:
        console.print("no tickets match")
    if notice:
        console.print(f"note: {notice}", highlight=False, markup=False)
    emit(console, out)
    return EXIT_OK


async def show_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    details = await ticket_details(client, args.ticket_id)
    if details is None:
        raise TicketNotFound(args.ticket_id)
    if args.json:
        print_json(details.status.model_dump(mode="json"), out)
        return EXIT_OK
    console = make_console(out)
    console.print(status_view(details.status, details.execution_status, datetime.now(UTC)))
    emit(console, out)
    return EXIT_OK


# The CLI's acting commands' payloads -> the update (and signal) each one is.
ACTION_OF: dict[type[BaseModel], str] = {
    Acknowledge: names.ACKNOWLEDGE,
    Resolve: names.RESOLVE,
    AgentReply: names.AGENT_REPLY,
    AwaitCustomer: names.AWAIT_CUSTOMER,
}


async def signal_command(
    client: Client, args: argparse.Namespace, payload: BaseModel, out: TextIO
) -> int:
    """``ack`` / ``resolve`` / ``reply`` / ``wait`` through the ticket's update: the status
    after the action, or "queued" when no worker answered (Temporal keeps it as a signal;
    the stamped ``at`` counts when a worker applies it)."""
    name = ACTION_OF[type(payload)]
    result = await apply_action(client, args.ticket_id, name, payload)
    who = getattr(payload, "agent", None) or getattr(payload, "by", "")
    workflow_id = ticket_workflow_id(args.ticket_id)
    if args.json:
        print_json(
            {
                "ticket_id": args.ticket_id,
                "workflow_id": workflow_id,
                "action": name,
                "payload": payload.model_dump(mode="json", exclude_none=True),
                "queued": result.queued,
                "status": result.status.model_dump(mode="json") if result.status else None,
            },
            out,
        )
    elif result.status is None:
        at = getattr(payload, "at", None)
        out.write(
            f"{name} queued for ticket {args.ticket_id} (workflow {workflow_id}) as {who}:"
            f" no worker answered within {UPDATE_WAIT.total_seconds():.0f} s; the ticket"
            f" applies it, as of {utc(at)} UTC, when a worker is back\n"
        )
    else:
        out.write(f"{name} applied to ticket {args.ticket_id} (workflow {workflow_id}) as {who}\n")
        out.write("".join(f"  {line}\n" for line in status_lines(result.status)))
    return EXIT_OK


def watch_title(now: datetime, interval: float, listing: Listing) -> str:
    """``Running tickets: 12 open or acknowledged, most urgent first | ...``: how many match
    (ranked: every one, whatever the table shows) and how they are ordered."""
    if listing.ranked:
        states = " or ".join(state.value for state in listing.states)
        count = f"{listing.total} {states}, most urgent first"
    else:
        count = str(listing.total)
    return (
        f"Running tickets: {count} | {utc(now)} UTC | refresh every {interval:g} s | Ctrl-C to stop"
    )


async def watch_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """What needs attention now: the running open and acknowledged tickets ranked across
    all of them (``read_listing``), the ``--limit`` most urgent; a ``--state`` the board
    does not hold is read newest first, and the table's caption says so, as it says when
    the table is cut."""
    console = make_console(out)
    filters = _filters(args)

    async def read() -> Listing:
        return await read_listing(client, running=True, attention=True, **filters)

    def view(listing: Listing) -> Table:
        now = datetime.now(UTC)
        title = watch_title(now, args.interval, listing)
        return tickets_table(listing.tickets, now, title, listing.notice(paged=False))

    refreshes = 0
    if not console.is_terminal:
        # Not a terminal (a pipe, a log file): one snapshot per refresh.
        while True:
            listing = await read()
            refreshes += 1
            console.print(view(listing))
            emit(console, out)
            if args.iterations is not None and refreshes >= args.iterations:
                return EXIT_OK
            out.write("\n")
            await asyncio.sleep(args.interval)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            listing = await read()
            fetched = time.monotonic()
            refreshes += 1
            # The countdowns tick every second between two reads of visibility.
            while True:
                live.update(view(listing), refresh=True)
                if args.iterations is not None and refreshes >= args.iterations:
                    return EXIT_OK
                remaining = args.interval - (time.monotonic() - fetched)
                if remaining <= 0:
                    break
                await asyncio.sleep(min(1.0, remaining))
