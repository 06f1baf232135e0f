"""Intake CLI: open support tickets as ``SupportTicket`` workflows.

    python starter.py open --ticket-id T-1001 --customer-id acme --tier premium --severity sev2 \
        --subject "API returns 500"
    python starter.py batch tickets.jsonl        # JSONL, or a JSON array; "-" reads stdin

Intake is idempotent: the workflow id is ``ticket-<ticket_id>`` and a second start of the
same id reports the existing ticket instead of creating a duplicate. Invalid input is
reported field by field with exit code 2 and nothing is started; a batch reports every bad
line with its number and still opens the good ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from tqdm import tqdm

from support import search_attributes as sa
from support.connection import connect, task_queue
from support.models import (
    TicketInput,
    TicketState,
    describe_validation_error,
    intake_problems,
    opened_at_problem,
)
from support.policy import PolicyError, load_policy, resolve_plan

EXIT_INVALID = 2
EXIT_UNREACHABLE = 1
BATCH_CONCURRENCY = 32


class InvalidTicket(ValueError):
    """Input that cannot become a ticket; ``problems`` name each field and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_ticket(data: Any, now: datetime | None = None) -> TicketInput:
    """Validate raw input (a dict from JSON or flags) into a ticket, or raise InvalidTicket."""
    if not isinstance(data, dict):
        raise InvalidTicket([f"(ticket): expected a JSON object, got {type(data).__name__}"])
    if "continued" in data:
        raise InvalidTicket(["continued: internal field, not accepted at intake"])
    try:
        ticket = TicketInput.model_validate(data)
    except ValidationError as err:
        raise InvalidTicket(describe_validation_error(err)) from None
    problems = intake_problems(ticket)
    if ticket.opened_at is not None:
        problem = opened_at_problem(ticket.opened_at, now or datetime.now(UTC))
        if problem:
            problems.append(problem)
    if problems:
        raise InvalidTicket(problems)
    return ticket


@dataclass
class IntakeResult:
    ticket_id: str
    workflow_id: str
    run_id: str | None
    created: bool
    status: str

    def line(self) -> str:
        if self.created:
            return f"opened ticket {self.ticket_id} (workflow {self.workflow_id})"
        return (
            f"ticket {self.ticket_id} already exists (workflow {self.workflow_id},"
            f" {self.status}); nothing new was started"
        )


def intake_search_attributes(ticket: TicketInput) -> TypedSearchAttributes:
    """The search attributes known at intake, so ops can find the ticket before the
    workflow's first task: attributes set at start are free, while each later upsert is a
    billed Action. With ``opened_at`` stamped, that includes the deadline the policy
    promises; the workflow resolves the plan itself and upserts only what differs (a
    policy file changed in between, or none readable here)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.SUPPORT_TIER, ticket.tier.value),
        SearchAttributePair(sa.SUPPORT_SEVERITY, ticket.severity.value),
        SearchAttributePair(sa.TICKET_STATE, TicketState.OPEN.value),
        SearchAttributePair(sa.CUSTOMER_ID, ticket.customer_id),
    ]
    if ticket.opened_at is not None:
        try:
            plan = resolve_plan(load_policy(), ticket, ticket.severity, ticket.opened_at)
        except PolicyError:
            plan = None
        if plan is not None and plan.commercial_sla and plan.response_due_at is not None:
            pairs += [
                SearchAttributePair(sa.RESPONSE_DUE_AT, plan.response_due_at),
                SearchAttributePair(sa.SLA_BREACHED, False),
            ]
    return TypedSearchAttributes(pairs)


def stamped(ticket: TicketInput) -> TicketInput:
    """The ticket opened now (to the second) unless it says when it was opened."""
    if ticket.opened_at is not None:
        return ticket
    return ticket.model_copy(update={"opened_at": datetime.now(UTC).replace(microsecond=0)})


async def open_ticket(
    client: Client, ticket: TicketInput, queue: str | None = None
) -> IntakeResult:
    """Start the ticket's workflow, or report the one that already exists."""
    workflow_id = ticket.workflow_id
    try:
        handle = await client.start_workflow(
            "SupportTicket",
            ticket,
            id=workflow_id,
            task_queue=queue or task_queue(),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=intake_search_attributes(ticket),
        )
        return IntakeResult(
            ticket.ticket_id, workflow_id, handle.first_execution_run_id, True, "open"
        )
    except WorkflowAlreadyStartedError:
        description = await client.get_workflow_handle(workflow_id).describe()
        state = "running"
        if description.status and description.status is not WorkflowExecutionStatus.RUNNING:
            state = description.status.name.lower()
        return IntakeResult(ticket.ticket_id, workflow_id, description.run_id, False, state)


def load_json(raw: bytes, where: str) -> Any:
    """``raw`` (UTF-8 JSON) parsed, or InvalidTicket saying what is wrong with ``where``
    (``(body)``, ``(file)``, ``(line)``)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"not valid UTF-8 at byte {err.start}"
    except json.JSONDecodeError as err:
        problem = f"not valid JSON: {err.msg} at character {err.pos}"
    except RecursionError:
        problem = "not valid JSON: nested too deeply"
    except ValueError:  # the only other: an integer beyond Python's digit limit
        problem = f"not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
    raise InvalidTicket([f"{where}: {problem}"])


def read_batch(data: bytes) -> Iterable[tuple[int, Any]]:
    """(line number, parsed JSON or an InvalidTicket) for a JSON array or JSONL input.
    Lines are decoded one by one so one bad line never hides the good ones."""
    if data.lstrip().startswith(b"["):
        try:
            items = load_json(data, "(file)")
        except InvalidTicket as problem:
            yield 1, problem
            return
        yield from enumerate(items, start=1)
        return
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            item: Any = load_json(raw, "(line)")
        except InvalidTicket as problem:
            item = problem
        yield number, item


async def run_batch(
    client: Client | Callable[[], Awaitable[Client]], data: bytes, out: TextIO, err: TextIO
) -> int:
    """Validate every line first (reporting the bad ones), then connect (``client`` may be a
    connect function, called only if there is something to open) and open the good ones."""
    valid: list[tuple[int, TicketInput]] = []
    bad = 0
    for number, item in read_batch(data):
        try:
            if isinstance(item, InvalidTicket):
                raise item
            valid.append((number, parse_ticket(item)))
        except InvalidTicket as problem:
            bad += 1
            for text in problem.problems:
                print(f"line {number}: {text}", file=err)
    if valid and not isinstance(client, Client):
        client = await client()
    semaphore = asyncio.Semaphore(BATCH_CONCURRENCY)
    progress = tqdm(
        total=len(valid), desc="opening tickets", unit="ticket", file=err, disable=len(valid) < 2
    )

    failed = 0

    async def one(number: int, ticket: TicketInput) -> IntakeResult | None:
        nonlocal failed
        async with semaphore:
            assert isinstance(client, Client)
            try:
                result: IntakeResult | None = await open_ticket(client, stamped(ticket))
            except RPCError as problem:
                # Reported with its line; the rest of the batch goes on.
                failed += 1
                print(f"line {number}: not opened: {problem}", file=err)
                result = None
            progress.update()
            return result

    # First occurrences concurrently, then repeats of an id within the batch, so a repeat
    # always reports the ticket its earlier line opened.
    firsts: dict[str, tuple[int, TicketInput]] = {}
    repeats: list[tuple[int, TicketInput]] = []
    for number, ticket in valid:
        if ticket.ticket_id in firsts:
            repeats.append((number, ticket))
        else:
            firsts[ticket.ticket_id] = (number, ticket)
    outcomes = list(await asyncio.gather(*(one(n, t) for n, t in firsts.values())))
    outcomes += [await one(n, t) for n, t in repeats]
    progress.close()
    results = [r for r in outcomes if r is not None]
    opened = sum(r.created for r in results)
    for result in results:
        print(result.line(), file=out)
    summary = f"{opened} opened, {len(results) - opened} already existed, {bad} invalid"
    print(summary + (f", {failed} failed" if failed else ""), file=out)
    if failed:
        return EXIT_UNREACHABLE
    return EXIT_INVALID if bad else 0


class Unreachable(Exception):
    pass


async def connect_or_explain() -> Client:
    try:
        return await connect()
    except RuntimeError as err:
        raise Unreachable(f"error: cannot connect to Temporal: {err}") from err


def read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starter.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("open", help="open one ticket from flags")
    one.add_argument("--ticket-id", required=True)
    one.add_argument("--customer-id", required=True)
    one.add_argument("--tier", required=True)
    one.add_argument("--severity")
    one.add_argument("--subject")
    one.add_argument("--description")
    one.add_argument("--category")
    one.add_argument("--reporter-email")
    one.add_argument("--intake-channel")
    one.add_argument("--opened-at", help="ISO 8601 with offset, e.g. 2026-11-26T09:30:00Z")
    batch = sub.add_parser("batch", help="open tickets from a JSON array or JSONL file")
    batch.add_argument("file", help="path, or - for standard input")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def go() -> int:
        if args.command == "open":
            fields = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
            try:
                ticket = parse_ticket(fields)
            except InvalidTicket as problem:
                for text in problem.problems:
                    print(f"error: {text}", file=sys.stderr)
                return EXIT_INVALID
            try:
                result = await open_ticket(await connect_or_explain(), stamped(ticket))
            except RPCError as problem:
                print(f"error: not opened: {problem}", file=sys.stderr)
                return EXIT_UNREACHABLE
            print(result.line())
            return 0
        try:
            data = sys.stdin.buffer.read() if args.file == "-" else read_file(args.file)
        except OSError as err:
            print(f"error: {args.file}: {err.strerror}", file=sys.stderr)
            return EXIT_INVALID
        return await run_batch(connect_or_explain, data, sys.stdout, sys.stderr)

    return asyncio.run(go())


def run_cli() -> NoReturn:
    """Console entry point. Exits with ``os._exit`` after flushing: the Temporal client's
    Rust threads can abort a normal interpreter shutdown of a short-lived process
    ("PyGILState_Release ... must be current", temporalio/sdk-python#300)."""
    try:
        code = main()
    except Unreachable as err:
        print(err, file=sys.stderr)
        code = EXIT_UNREACHABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_cli()
