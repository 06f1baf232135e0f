"""Ops CLI: list, inspect, acknowledge, resolve and watch support tickets.

    python ops.py list [--state S] [--tier T] [--severity S] [--breached | --not-breached]
                       [--customer C] [--limit N] [--json]
    python ops.py show TICKET_ID [--json]
    python ops.py ack TICKET_ID [--agent NAME] [--note TEXT] [--json]
    python ops.py resolve TICKET_ID [--agent NAME] [--summary TEXT] [--json]
    python ops.py watch [filters] [--interval SECONDS] [--iterations N]
    python ops.py replay [--limit N] [--json]

Connects as Temporal's environment configuration says (``TEMPORAL_ADDRESS``, ...). Lists come
from visibility (search attributes), sorted by time to breach; ``show`` reads the ticket's
``status``. Exit codes: 0 done, 2 bad arguments, 1 no such ticket, ticket closed or
Temporal unreachable (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from support.codec import CodecConfigError, DecryptionError
from support.connection import connect
from support.models import (
    Acknowledge,
    DeliveryFailure,
    Resolve,
    Severity,
    TicketState,
    TicketStatus,
    Tier,
    describe_validation_error,
    ticket_workflow_id,
)
from support.visibility import (
    MAX_LIMIT,
    InvalidArgument,
    TicketError,
    TicketNotFound,
    TicketSummary,
    check_customer,
    check_ticket_id,
    list_tickets,
    send_acknowledge,
    send_resolve,
    ticket_details,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
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


# --- arguments ----------------------------------------------------------------------------


def _argument(check: Any) -> Any:
    """An argparse ``type`` from a ``support.visibility`` check (bad value: exit 2)."""

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
    return parser


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= getattr(args, "limit", 1) <= MAX_LIMIT:
        parser.error(f"--limit: must be from 1 to {MAX_LIMIT}")
    if getattr(args, "interval", 1.0) <= 0:
        parser.error("--interval: must be more than 0")
    iterations = getattr(args, "iterations", None)
    if iterations is not None and iterations < 1:
        parser.error("--iterations: must be at least 1")


def _signal_payload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BaseModel:
    agent = args.agent if args.agent is not None else os.environ.get(AGENT_ENV)
    if not agent:
        parser.error(f"{args.command}: no agent given: pass --agent NAME (or set {AGENT_ENV})")
    try:
        if args.command == "ack":
            return Acknowledge(agent=agent, note=args.note)
        return Resolve(by=agent, summary=args.summary)
    except ValidationError as err:
        flags = {"agent": "--agent", "by": "--agent", "note": "--note", "summary": "--summary"}
        problems = []
        for problem in describe_validation_error(err, top="(signal)"):
            field, _, message = problem.partition(": ")
            problems.append(f"{flags.get(field, field)}: {message}")
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


async def signal_command(
    client: Client, args: argparse.Namespace, payload: BaseModel, out: TextIO
) -> int:
    if isinstance(payload, Acknowledge):
        await send_acknowledge(client, args.ticket_id, payload)
        name, who = "acknowledge", payload.agent
    else:
        assert isinstance(payload, Resolve)
        await send_resolve(client, args.ticket_id, payload)
        name, who = "resolve", payload.by
    workflow_id = ticket_workflow_id(args.ticket_id)
    if args.json:
        print_json(
            {
                "ticket_id": args.ticket_id,
                "workflow_id": workflow_id,
                "signal": name,
                "payload": payload.model_dump(mode="json", exclude_none=True),
            },
            out,
        )
    else:
        out.write(f"{name} sent to ticket {args.ticket_id} (workflow {workflow_id}) as {who}\n")
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


# --- entry points -------------------------------------------------------------------------


async def _connect() -> Client:
    try:
        return await connect()
    except RuntimeError as err:
        raise Failed(f"cannot connect to Temporal: {err}") from err
    except CodecConfigError as err:
        raise Failed(f"payload encryption: {err}") from err


async def run(args: argparse.Namespace, payload: BaseModel | None, out: TextIO) -> int:
    client = await _connect()
    try:
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
    payload = _signal_payload(parser, args) if args.command in ("ack", "resolve") else None
    try:
        return asyncio.run(run(args, payload, out))
    except Failed as problem:
        print(f"error: {' '.join(str(problem).split())}", file=err)
        return EXIT_FAILED
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
