"""Ops CLI: list, inspect, acknowledge, resolve and watch support tickets.

    python -m ops list [--state S] [--tier T] [--severity S] [--breached | --not-breached]
                       [--customer C] [--limit N] [--json]
    python -m ops show TICKET_ID [--json]
    python -m ops ack TICKET_ID [--agent NAME] [--note TEXT] [--json]
    python -m ops resolve TICKET_ID [--agent NAME] [--summary TEXT] [--json]
    python -m ops watch [filters] [--interval SECONDS] [--iterations N]
    python -m ops replay [--limit N] [--json]
    python -m ops policy diff FILE [--limit N] [--json]
    python -m ops policy adopt --version V (--ticket ID [ID ...] | --all-open) --by NAME
                               [--reason TEXT] [--json]
    python -m ops policy archive [FILE]
    python -m ops policy versions [--json]

Connects as Temporal's environment configuration says (``TEMPORAL_ADDRESS``, ...). Lists come
from visibility (search attributes), sorted by time to breach; ``show`` reads the ticket's
``status``; ``ack`` and ``resolve`` act through the ticket's update and print the status
after it. ``policy`` commands also read the SLA ledger's policy archive (``--ledger-url``,
default ``SUPPORT_LEDGER_URL``; docs/policy-versions.md). Exit codes: 0 done, 2 bad
arguments or an invalid policy file, 1 no such ticket, ticket closed, an action refused, or
Temporal or the ledger unreachable (one line on stderr); ``policy diff``: 3 when a ticket
would change (or could not be compared).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from contract.client import (
    MAX_LIMIT,
    UPDATE_WAIT,
    ActionRefused,
    ActionResult,
    InvalidArgument,
    TicketDetails,
    TicketError,
    TicketNotFound,
    TicketSummary,
    TicketUnavailable,
    apply_action,
    check_customer,
    check_ticket_id,
    list_tickets,
    send_acknowledge,
    send_resolve,
    ticket_details,
)
from contract.models import (
    Acknowledge,
    AdoptPolicy,
    DeliveryFailure,
    Resolve,
    Severity,
    TicketState,
    TicketStatus,
    Tier,
    describe_validation_error,
    ticket_workflow_id,
)
from ledger.policy_archive import (
    PlanChange,
    PolicyArchive,
    PolicyVersionConflict,
    document_digest,
    plan_changes,
    plan_under,
)
from policy.load import parse_policy, policy_path
from policy.schema import Policy, PolicyError
from runtime.codec import CodecConfigError, DecryptionError
from runtime.connection import connect

if TYPE_CHECKING:
    from ledger.store import SqlLedger

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# `policy diff`: some open ticket's deadline or ladder would change (or could not be compared).
EXIT_CHANGES = 3
AGENT_ENV = "SUPPORT_AGENT"
# The countdown turns yellow this close to the deadline.
SOON = timedelta(minutes=15)
# `replay`: running executions of this project's workflow types, newest first.
REPLAY_DEFAULT = 200
REPLAY_QUERY = (
    "WorkflowType IN ('SupportTicket', 'StatementOfWork') AND ExecutionStatus = 'Running'"
)


class Failed(Exception):
    """A one-line error for stderr, exit code 1."""


class BadInput(Exception):
    """Bad input found after parsing (an invalid policy file): exit 2, one line per problem."""


# --- arguments ----------------------------------------------------------------------------


def _argument(check: Any) -> Any:
    """An argparse ``type`` from a ``contract.client`` check (bad value: exit 2)."""

    def parse(value: str) -> str:
        try:
            return str(check(value))
        except InvalidArgument as problem:
            raise argparse.ArgumentTypeError(str(problem).split(": ", 1)[-1]) from None

    return parse


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", choices=[s.value for s in TicketState])
    parser.add_argument("--tier", choices=[t.value for t in Tier])
    parser.add_argument("--severity", choices=[s.value for s in Severity])
    breach = parser.add_mutually_exclusive_group()
    breach.add_argument(
        "--breached",
        dest="breached",
        action="store_const",
        const=True,
        default=None,
        help="only tickets whose response target was missed",
    )
    breach.add_argument(
        "--not-breached",
        dest="breached",
        action="store_const",
        const=False,
        help="only tickets with a target not missed (Community tickets have none)",
    )
    parser.add_argument("--customer", metavar="ID", type=_argument(check_customer))
    parser.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=500,
        help="read at most N tickets, newest first, then sort (default 500)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="support-ops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ticket_id = _argument(check_ticket_id)

    listing = sub.add_parser("list", help="tickets from visibility, soonest breach first")
    _add_filters(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable JSON")

    show = sub.add_parser("show", help="a ticket's state, deadlines and SLA timeline")
    show.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    show.add_argument("--json", action="store_true", help="the status query's JSON")

    ack = sub.add_parser("ack", help="acknowledge a ticket (stops its SLA clock)")
    ack.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    ack.add_argument("--agent", metavar="NAME", help=f"who acknowledges (default ${AGENT_ENV})")
    ack.add_argument("--note", metavar="TEXT")
    ack.add_argument("--json", action="store_true")

    resolve = sub.add_parser("resolve", help="resolve a ticket")
    resolve.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    resolve.add_argument("--agent", metavar="NAME", help=f"who resolves (default ${AGENT_ENV})")
    resolve.add_argument("--summary", metavar="TEXT")
    resolve.add_argument("--json", action="store_true")

    watch = sub.add_parser("watch", help="a live table of running tickets and countdowns")
    _add_filters(watch)
    watch.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="seconds between reads of visibility (default 5); countdowns tick every second",
    )
    watch.add_argument("--iterations", metavar="N", type=int, help="stop after N reads")

    replay = sub.add_parser(
        "replay",
        help="replay running tickets' histories with this release's workflow code"
        " (before deploying it)",
    )
    replay.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=REPLAY_DEFAULT,
        help=f"at most N running executions, newest first (default {REPLAY_DEFAULT})",
    )
    replay.add_argument("--json", action="store_true")
    _add_policy_commands(sub, ticket_id)
    return parser


def _add_ledger_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger-url",
        metavar="URL",
        help="the SLA ledger holding the policy archive (default $SUPPORT_LEDGER_URL,"
        " else .data/sla-ledger.sqlite3)",
    )


def _add_policy_commands(sub: Any, ticket_id: Any) -> None:
    policy = sub.add_parser(
        "policy",
        help="policy versions: dry-run a new file, archive it, move open tickets to it",
        description="Tickets keep the policy version they started under (docs/policy-versions.md).",
    )
    commands = policy.add_subparsers(dest="policy_command", required=True)

    diff = commands.add_parser(
        "diff",
        help="dry run: every open ticket whose deadline or ladder FILE would change",
    )
    diff.add_argument("file", metavar="FILE", help="the new policy file")
    diff.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=MAX_LIMIT,
        help=f"read at most N running tickets, newest first (default {MAX_LIMIT})",
    )
    diff.add_argument("--json", action="store_true")
    _add_ledger_url(diff)

    adopt = commands.add_parser(
        "adopt", help="move tickets to an archived policy version (recorded on each ticket)"
    )
    adopt.add_argument("--version", required=True, metavar="V", help="an archived version")
    which = adopt.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--ticket",
        dest="tickets",
        metavar="ID",
        nargs="+",
        action="extend",
        type=ticket_id,
        help="these tickets (the flag may be repeated)",
    )
    which.add_argument(
        "--all-open",
        action="store_true",
        help="every running ticket, open or acknowledged, not already on V",
    )
    adopt.add_argument("--by", metavar="NAME", help=f"who decided (default ${AGENT_ENV})")
    adopt.add_argument("--reason", metavar="TEXT")
    adopt.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=MAX_LIMIT,
        help=f"--all-open: read at most N running tickets (default {MAX_LIMIT})",
    )
    adopt.add_argument("--json", action="store_true")
    _add_ledger_url(adopt)

    archive = commands.add_parser(
        "archive", help="validate a policy file and archive its version (before adopting it)"
    )
    archive.add_argument(
        "file", metavar="FILE", nargs="?", help="default $SUPPORT_POLICY_FILE, else the shipped one"
    )
    _add_ledger_url(archive)

    versions = commands.add_parser("versions", help="the archived policy versions")
    versions.add_argument("--json", action="store_true")
    _add_ledger_url(versions)


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= getattr(args, "limit", 1) <= MAX_LIMIT:
        parser.error(f"--limit: must be from 1 to {MAX_LIMIT}")
    if getattr(args, "interval", 1.0) <= 0:
        parser.error("--interval: must be more than 0")
    iterations = getattr(args, "iterations", None)
    if iterations is not None and iterations < 1:
        parser.error("--iterations: must be at least 1")


def _signal_payload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BaseModel:
    """The action's payload, checked before anything is contacted; ack and resolve are
    stamped with the instant the agent acted (now), which counts even if no worker is up."""
    adopting = args.command == "policy"
    given = args.by if adopting else args.agent
    agent = given if given is not None else os.environ.get(AGENT_ENV)
    flag = "--by" if adopting else "--agent"
    if not agent:
        command = "policy adopt" if adopting else args.command
        missing = flag if adopting else "agent"
        parser.error(f"{command}: no {missing} given: pass {flag} NAME (or set {AGENT_ENV})")
    try:
        if adopting:
            return AdoptPolicy(version=args.version, by=agent, reason=args.reason)
        if args.command == "ack":
            return Acknowledge(agent=agent, note=args.note, at=datetime.now(UTC))
        return Resolve(by=agent, summary=args.summary, at=datetime.now(UTC))
    except ValidationError as err:
        flags = {
            "agent": flag,
            "by": flag,
            "note": "--note",
            "summary": "--summary",
            "version": "--version",
            "reason": "--reason",
        }
        problems = []
        for problem in describe_validation_error(err, top="(signal)"):
            name, _, message = problem.partition(": ")
            problems.append(f"{flags.get(name, name)}: {message}")
        parser.error("; ".join(problems))


# --- rendering ----------------------------------------------------------------------------


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


def countdown(ticket: TicketSummary, now: datetime) -> Text:
    left = ticket.time_to_breach(now)
    if left is None:
        return Text("-")
    if left <= timedelta(0):
        return Text(f"overdue {duration(left)}", style="bold red")
    return Text(f"in {duration(left)}", style="yellow" if left <= SOON else "")


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


def tickets_table(tickets: Sequence[TicketSummary], now: datetime, title: str | None) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, title_justify="left")
    for name in ("ticket", "customer", "tier", "severity", "state", "started (UTC)"):
        table.add_column(name)
    table.add_column("response due (UTC)")
    table.add_column("to breach", justify="right")
    table.add_column("breached")
    for ticket in tickets:
        left = ticket.time_to_breach(now)
        overdue = left is not None and left <= timedelta(0)
        table.add_row(
            ticket.ticket_id,
            _value(ticket.customer_id),
            _value(ticket.tier),
            _value(ticket.severity),
            _state(ticket),
            utc(ticket.opened_at),
            utc(ticket.response_due_at),
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


def make_console(out: TextIO) -> Console:
    """Colour and the terminal's width on a terminal; plain text without a width limit
    otherwise. Markup and emoji off: ids and notes are data, printed as they are."""
    terminal = out.isatty()
    return Console(
        file=out if terminal else io.StringIO(),
        width=None if terminal else 1000,
        no_color=not terminal,
        markup=False,
        emoji=False,
        highlight=False,
    )


def emit(console: Console, out: TextIO) -> None:
    """Write what a plain (non-terminal) console recorded, trailing blanks trimmed."""
    if isinstance(console.file, io.StringIO):
        text = console.file.getvalue()
        console.file.seek(0)
        console.file.truncate()
        out.write("\n".join(line.rstrip() for line in text.split("\n")))
        out.flush()


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# --- commands -----------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "state": args.state,
        "tier": args.tier,
        "severity": args.severity,
        "breached": args.breached,
        "customer": args.customer,
        "limit": args.limit,
    }


async def list_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    tickets = await list_tickets(client, **_filters(args))
    if args.json:
        print_json([t.model_dump(mode="json") for t in tickets], out)
        return EXIT_OK
    console = make_console(out)
    if tickets:
        console.print(tickets_table(tickets, datetime.now(UTC), None))
    else:
        console.print("no tickets match")
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
    rows.append(("policy", _value(status.policy_version)))
    width = max(len(label) for label, _ in rows) + 2
    return [f"{label.ljust(width)}{value}" for label, value in rows]


async def signal_command(
    client: Client, args: argparse.Namespace, payload: BaseModel, out: TextIO
) -> int:
    """``ack`` / ``resolve`` through the ticket's update: the status after the action, or
    "queued" when no worker answered (Temporal keeps it as a signal; the stamped ``at``
    counts when a worker applies it)."""
    result: ActionResult
    if isinstance(payload, Acknowledge):
        result = await send_acknowledge(client, args.ticket_id, payload)
        name, who = "acknowledge", payload.agent
    else:
        assert isinstance(payload, Resolve)
        result = await send_resolve(client, args.ticket_id, payload)
        name, who = "resolve", payload.by
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


def watch_title(now: datetime, interval: float, count: int) -> str:
    return (
        f"Running tickets: {count} | {utc(now)} UTC | refresh every {interval:g} s | Ctrl-C to stop"
    )


async def replay_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Replay the histories of running tickets (and their statements of work) with the
    workflow code of this checkout: what a worker of this release would do with them. A
    nondeterminism error here is a change that needs ``workflow.patched``. The histories
    are decoded with the client's converter, so encrypted ones replay where keys are set."""
    # Imported here: the workflow code and the replayer are for this command only.
    from temporalio.runtime import Runtime, TelemetryConfig
    from temporalio.worker import Replayer

    from workflows import ALL_WORKFLOWS

    replayer = Replayer(
        workflows=ALL_WORKFLOWS,
        data_converter=client.data_converter,
        # The failures are reported below; the SDK core would also log them on stdout.
        runtime=Runtime(telemetry=TelemetryConfig(logging=None)),
    )
    histories = client.list_workflows(REPLAY_QUERY, limit=args.limit).map_histories()
    replayed: list[str] = []
    failed: dict[str, str] = {}
    async with replayer.workflow_replay_iterator(histories) as results:
        async for result in results:
            replayed.append(result.history.workflow_id)
            if result.replay_failure is not None:
                failed[result.history.workflow_id] = " ".join(str(result.replay_failure).split())
    if args.json:
        print_json({"replayed": len(replayed), "failed": failed}, out)
    else:
        for workflow_id, problem in sorted(failed.items()):
            print(f"FAILED {workflow_id}: {problem}", file=out)
        print(
            f"replayed {len(replayed)} running executions with this release:"
            f" {len(replayed) - len(failed)} ok, {len(failed)} failed",
            file=out,
        )
    return EXIT_FAILED if failed else EXIT_OK


async def watch_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    console = make_console(out)
    filters = _filters(args)

    def view(tickets: list[TicketSummary]) -> Table:
        now = datetime.now(UTC)
        return tickets_table(tickets, now, watch_title(now, args.interval, len(tickets)))

    refreshes = 0
    if not console.is_terminal:
        # Not a terminal (a pipe, a log file): one snapshot per refresh.
        while True:
            tickets = await list_tickets(client, running=True, **filters)
            refreshes += 1
            console.print(view(tickets))
            emit(console, out)
            if args.iterations is not None and refreshes >= args.iterations:
                return EXIT_OK
            out.write("\n")
            await asyncio.sleep(args.interval)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            tickets = await list_tickets(client, running=True, **filters)
            fetched = time.monotonic()
            refreshes += 1
            # The countdowns tick every second between two reads of visibility.
            while True:
                live.update(view(tickets), refresh=True)
                if args.iterations is not None and refreshes >= args.iterations:
                    return EXIT_OK
                remaining = args.interval - (time.monotonic() - fetched)
                if remaining <= 0:
                    break
                await asyncio.sleep(min(1.0, remaining))


# --- policy versions (docs/policy-versions.md) ----------------------------------------------

T = TypeVar("T")
# Tickets queried or acted on at once by the policy commands.
CONCURRENCY = 8


async def bounded(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` at most ``CONCURRENCY`` at a time; results in the calls' order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


def read_policy_file(file: str | None) -> tuple[Path, str, Policy]:
    """The file's path, text and policy; BadInput (exit 2) naming file and field."""
    path = Path(file) if file else policy_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInput(f"{path}: cannot read the policy file: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise BadInput(f"{path}: not UTF-8 text: {err.reason}") from err
    try:
        return path, text, parse_policy(text, str(path))
    except PolicyError as err:
        raise BadInput(str(err)) from err


@asynccontextmanager
async def ledger_for(args: argparse.Namespace) -> AsyncIterator[SqlLedger]:
    """The SLA ledger (``--ledger-url``, else ``SUPPORT_LEDGER_URL``), migrated to this
    release's schema; any database problem is one line, exit 1."""
    from ledger.__main__ import LedgerError, UsageError, opened_ledger, resolve_url

    try:
        url = resolve_url(args.ledger_url)
    except UsageError as err:
        raise BadInput(str(err).replace("--url: ", "--ledger-url: ", 1)) from err
    try:
        async with opened_ledger(url, must_exist=True) as ledger:
            yield ledger
    except LedgerError as err:
        raise Failed(str(err)) from err


def _due(instant: datetime | None) -> str:
    return "none" if instant is None else f"{utc(instant)} UTC"


async def policy_archive_command(args: argparse.Namespace, out: TextIO) -> int:
    path, text, policy = read_policy_file(args.file)
    digest = document_digest(text)[:12]
    async with ledger_for(args) as ledger:
        before = await ledger.policy_document(policy.version)
        source = f"support-ops@{socket.gethostname()}:{path.resolve()}"
        try:
            await PolicyArchive(ledger).archive_text(text, str(path), source)
        except PolicyVersionConflict as err:
            raise Failed(str(err)) from err
        except PolicyError as err:
            raise BadInput(str(err)) from err
        where = ledger.describe()
    done = "is already archived with this text" if before == text else f"archived from {path}"
    out.write(f"policy {policy.version} {done} (sha256 {digest}) in the SLA ledger at {where}\n")
    return EXIT_OK


async def policy_versions_command(args: argparse.Namespace, out: TextIO) -> int:
    async with ledger_for(args) as ledger:
        rows = await ledger.policy_versions()
    if args.json:
        print_json(
            [
                {
                    "version": r.version,
                    "digest": r.digest,
                    "recorded_at": r.recorded_at.isoformat(),
                    "source": r.source,
                }
                for r in rows
            ],
            out,
        )
        return EXIT_OK
    console = make_console(out)
    if not rows:
        console.print("no policy version is archived yet")
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for name in ("version", "archived (UTC)", "sha256", "source"):
            table.add_column(name)
        for r in rows:
            table.add_row(r.version, utc(r.recorded_at), r.digest[:12], r.source)
        console.print(table)
    emit(console, out)
    return EXIT_OK


@dataclass
class TicketDiff:
    """One open ticket in a dry run: what FILE would change, or why it was not compared."""

    ticket_id: str
    tier: str | None = None
    severity: str | None = None
    policy_version: str | None = None
    changes: list[PlanChange] = field(default_factory=list)
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "ticket_id": self.ticket_id,
            "tier": self.tier,
            "severity": self.severity,
            "policy_version": self.policy_version,
        }
        if self.problem is not None:
            return found | {"problem": self.problem}
        return found | {
            "changes": [
                {"what": c.what, "before": c.before, "after": c.after} for c in self.changes
            ]
        }


async def _details(client: Client, ticket_id: str) -> TicketDetails | str | None:
    """The ticket's status, or why it cannot be had now (None: gone meanwhile)."""
    try:
        return await ticket_details(client, ticket_id)
    except TicketError as err:
        return str(err)


async def policy_diff_command(
    client: Client, args: argparse.Namespace, file: tuple[Path, str, Policy], out: TextIO
) -> int:
    """Dry run: each open ticket's plan under its pinned version (from the archive) and under
    FILE, from its original open time; lists every ticket whose response deadline or ladder
    would differ. Acknowledged tickets keep their deadline on adoption and have no pending
    steps, so only open ones are compared."""
    path, text, new = file
    running = await list_tickets(client, running=True, limit=args.limit)
    found = await bounded([partial(_details, client, t.ticket_id) for t in running])
    diffs: list[TicketDiff] = []
    to_compare: list[tuple[TicketDiff, TicketStatus]] = []
    not_open = 0
    for summary, details in zip(running, found, strict=True):
        if details is None:
            continue  # gone since it was listed
        if isinstance(details, str):
            diffs.append(TicketDiff(summary.ticket_id, problem=details))
            continue
        status = details.status
        if status.state is not TicketState.OPEN:
            not_open += 1
            continue
        diff = TicketDiff(
            status.ticket_id, status.tier.value, status.severity.value, status.policy_version
        )
        diffs.append(diff)
        if status.policy_version is None:
            diff.problem = "no policy version yet"
        else:
            to_compare.append((diff, status))
    pinned: dict[str, Policy | str] = {}
    async with ledger_for(args) as ledger:
        archive = PolicyArchive(ledger)
        for version in sorted({s.policy_version for _, s in to_compare if s.policy_version}):
            try:
                policy = await archive.version(version)
                pinned[version] = policy or f"policy {version} is not in the policy archive"
            except PolicyError as err:
                pinned[version] = f"policy {version} does not load with this release: {err}"
        archived = await ledger.policy_document(new.version)
    conflict = (
        f"version {new.version} is already archived with other rules: give {path} a new"
        " version before a worker loads it or it is archived"
        if archived is not None and archived != text
        else None
    )
    for diff, status in to_compare:
        before = pinned[status.policy_version or ""]
        if isinstance(before, str):
            diff.problem = before
            continue
        try:
            diff.changes = plan_changes(plan_under(before, status), plan_under(new, status))
        except (ValueError, KeyError) as err:
            diff.problem = f"cannot compute its plan: {' '.join(str(err).split())}"
    changed = [d for d in diffs if d.problem is None and d.changes]
    unchanged = [d.ticket_id for d in diffs if d.problem is None and not d.changes]
    uncompared = [d for d in diffs if d.problem is not None]
    if args.json:
        print_json(
            {
                "file": str(path),
                "version": new.version,
                "version_conflict": conflict,
                "changed": [d.as_json() for d in changed],
                "unchanged": unchanged,
                "not_compared": [d.as_json() for d in uncompared],
                "not_open": not_open,
            },
            out,
        )
    else:
        lines = [f"policy diff: {path} (version {new.version}) against the open tickets"]
        if conflict:
            lines.append(f"warning: {conflict}")
        for d in changed:
            lines.append(f"{d.ticket_id}  {d.tier} {d.severity}  policy {d.policy_version}")
            width = max(len(c.what) for c in d.changes) + 2
            lines += [f"  {c.what.ljust(width)}{c.before} -> {c.after}" for c in d.changes]
        for d in uncompared:
            lines.append(f"{d.ticket_id}  not compared: {d.problem}")
        lines.append(
            f"{len(changed)} would change, {len(unchanged)} unchanged,"
            f" {len(uncompared)} not compared; {not_open} acknowledged or routed (their"
            " deadline stays)"
        )
        out.write("".join(line + "\n" for line in lines))
    return EXIT_CHANGES if changed or uncompared else EXIT_OK


@dataclass
class Adoption:
    """What became of one ticket in ``policy adopt``: ``moved``, ``queued`` (no worker
    answered; it moves when one is back), ``refused`` (the ticket's validator said why),
    ``failed`` (no such running ticket) or ``skipped`` (already on the version)."""

    ticket_id: str
    outcome: str = "failed"
    policy_before: str | None = None
    policy_after: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    problem: str | None = None

    def line(self, version: str) -> str:
        if self.outcome == "moved":
            return (
                f"{self.ticket_id}: policy {self.policy_before} -> {self.policy_after};"
                f" response due {_due(self.due_before)} -> {_due(self.due_after)}"
            )
        if self.outcome == "queued":
            return (
                f"{self.ticket_id}: queued: no worker answered within"
                f" {UPDATE_WAIT.total_seconds():.0f} s; it moves to {version} when one is"
                f" back (response due now {_due(self.due_before)})"
            )
        if self.outcome == "skipped":
            return f"{self.ticket_id}: already on policy {version}"
        return f"{self.ticket_id}: {self.outcome}: {self.problem}"

    def as_json(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "outcome": self.outcome,
            "policy_before": self.policy_before,
            "policy_after": self.policy_after,
            "response_due_before": self.due_before.isoformat() if self.due_before else None,
            "response_due_after": self.due_after.isoformat() if self.due_after else None,
            "problem": self.problem,
        }


async def adopt_one(
    client: Client, ticket_id: str, adopt: AdoptPolicy, skip_same: bool
) -> Adoption:
    adoption = Adoption(ticket_id)
    try:
        details = await ticket_details(client, ticket_id)
    except TicketUnavailable:
        details = None  # no worker to answer: the action below is queued for one
    if details is not None:
        adoption.policy_before = details.status.policy_version
        adoption.due_before = details.status.response_due_at
        if skip_same and adoption.policy_before == adopt.version:
            adoption.outcome = "skipped"
            return adoption
    try:
        result = await apply_action(client, ticket_id, "adopt_policy", adopt)
    except ActionRefused as err:
        adoption.outcome, adoption.problem = "refused", str(err)
    except TicketError as err:
        adoption.outcome, adoption.problem = "failed", str(err)
    else:
        if result.status is None:
            adoption.outcome = "queued"
        else:
            adoption.outcome = "moved"
            adoption.policy_after = result.status.policy_version
            adoption.due_after = result.status.response_due_at
    return adoption


async def policy_adopt_command(args: argparse.Namespace, adopt: AdoptPolicy, out: TextIO) -> int:
    """Move tickets to an archived version through each ticket's ``adopt_policy`` update:
    the ticket re-plans under it from its original open time and records who, why, and the
    deadline before and after (history and ledger)."""
    async with ledger_for(args) as ledger:
        try:
            found = await PolicyArchive(ledger).version(adopt.version)
        except PolicyError as err:
            raise Failed(
                f"policy {adopt.version} is archived but does not load with this release: {err}"
            ) from err
        where = ledger.describe()
    if found is None:
        raise Failed(
            f"policy {adopt.version} is not in the policy archive at {where}: archive it first"
            " (support-ops policy archive FILE)"
        )
    client = await _connect()
    if args.all_open:
        running = await list_tickets(client, running=True, limit=args.limit)
        ids = [
            t.ticket_id
            for t in running
            if t.state in (TicketState.OPEN, TicketState.ACKNOWLEDGED, None)
        ]
    else:
        ids = list(dict.fromkeys(args.tickets))
    adoptions = await bounded([partial(adopt_one, client, i, adopt, args.all_open) for i in ids])
    counts = {
        outcome: sum(a.outcome == outcome for a in adoptions)
        for outcome in ("moved", "queued", "refused", "failed", "skipped")
    }
    if args.json:
        print_json(
            {
                "version": adopt.version,
                "by": adopt.by,
                "reason": adopt.reason,
                "tickets": [a.as_json() for a in adoptions],
            },
            out,
        )
    else:
        lines = [a.line(adopt.version) for a in adoptions]
        lines.append(
            f"policy {adopt.version}: {counts['moved']} moved, {counts['queued']} queued,"
            f" {counts['refused']} refused, {counts['failed']} failed,"
            f" {counts['skipped']} already on it"
        )
        out.write("".join(line + "\n" for line in lines))
    return EXIT_FAILED if counts["refused"] or counts["failed"] else EXIT_OK


async def policy_command(args: argparse.Namespace, payload: BaseModel | None, out: TextIO) -> int:
    if args.policy_command == "archive":
        return await policy_archive_command(args, out)
    if args.policy_command == "versions":
        return await policy_versions_command(args, out)
    if args.policy_command == "adopt":
        assert isinstance(payload, AdoptPolicy)
        return await policy_adopt_command(args, payload, out)
    file = read_policy_file(args.file)  # a broken file is exit 2 before anything is contacted
    return await policy_diff_command(await _connect(), args, file, out)


# --- entry points -------------------------------------------------------------------------


async def _connect() -> Client:
    try:
        return await connect()
    except RuntimeError as err:
        raise Failed(f"cannot connect to Temporal: {err}") from err
    except CodecConfigError as err:
        raise Failed(f"payload encryption: {err}") from err


async def run(args: argparse.Namespace, payload: BaseModel | None, out: TextIO) -> int:
    try:
        if args.command == "policy":
            return await policy_command(args, payload, out)
        client = await _connect()
        if args.command == "list":
            return await list_command(client, args, out)
        if args.command == "show":
            return await show_command(client, args, out)
        if args.command == "watch":
            return await watch_command(client, args, out)
        if args.command == "replay":
            return await replay_command(client, args, out)
        assert payload is not None
        return await signal_command(client, args, payload, out)
    except TicketError as problem:
        raise Failed(str(problem)) from problem
    except InvalidArgument as problem:  # checked by the parser already; kept as a guard
        raise Failed(str(problem)) from problem
    except RPCError as problem:
        raise Failed(f"Temporal: {problem.message}") from problem
    except DecryptionError as problem:
        raise Failed(str(problem)) from problem


def cli(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (argparse exits 2 on bad arguments)."""
    out, err = out or sys.stdout, err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_numbers(parser, args)
    acting = args.command in ("ack", "resolve") or getattr(args, "policy_command", "") == "adopt"
    payload = _signal_payload(parser, args) if acting else None
    try:
        return asyncio.run(run(args, payload, out))
    except Failed as problem:
        print(f"error: {' '.join(str(problem).split())}", file=err)
        return EXIT_FAILED
    except BadInput as problem:
        for line in str(problem).splitlines():
            print(f"error: {line}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130


def main() -> NoReturn:
    """Console entry point (``support-ops``). Exits with ``os._exit`` after flushing: the
    Temporal client's Rust threads can abort a normal interpreter shutdown of a short-lived
    process ("PyGILState_Release ... must be current", temporalio/sdk-python#300)."""
    try:
        code = cli()
        sys.stdout.flush()
    except SystemExit as done:  # argparse: --help (0) and bad arguments (2)
        code = (
            done.code
            if isinstance(done.code, int)
            else EXIT_OK
            if done.code is None
            else EXIT_USAGE
        )
    except BrokenPipeError:
        # The reader went away (``| head``): not an error worth a traceback.
        code = EXIT_OK
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
