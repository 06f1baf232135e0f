"""Intake CLI: open support tickets as ``SupportTicket`` workflows, through the intake core
(``intake.core``: the same validation, entitlement and promise as the API, the contact form
and the mailbox; batches through ``intake.batch``; docs/intake.md).

    python starter.py open --ticket-id T-1001 --customer-id acme --severity sev2 \
        --subject "API returns 500"
    python starter.py batch tickets.jsonl        # JSONL, or a JSON array; "-" reads stdin

Intake is idempotent: the workflow id is ``ticket-<ticket_id>`` and a second start of the
same ticket reports the existing ticket instead of creating a duplicate. Invalid input, or
a tier the customer's contract does not give, is reported field by field with exit code 2
and nothing is started; a batch reports every bad line with its number and still opens the
good ones. A policy file that cannot be loaded, or Temporal unreachable: exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TextIO

from temporalio.client import Client
from temporalio.service import RPCError
from tqdm import tqdm

from intake.batch import Progress, open_batch
from intake.core import (
    CLI,
    IntakeRefused,
    InvalidTicket,
    PolicyUnavailable,
    Promise,
    TicketConflict,
    open_ticket,
    prepare,
    start,
)
from runtime.connection import connect
from runtime.process import exit_flushed

# ``open_ticket`` stays importable from here for the tests that start raw tickets with it.
__all__ = ["main", "open_ticket", "run_batch", "run_cli"]

EXIT_INVALID = 2
EXIT_UNREACHABLE = 1


def line(promise: Promise) -> str:
    """One line per ticket: what was opened and the response it is owed."""
    if not promise.created:
        return (
            f"ticket {promise.ticket_id} already exists (workflow {promise.workflow_id},"
            f" {promise.state}); nothing new was started"
        )
    owed = (
        f"response due {promise.response_due_at.isoformat().replace('+00:00', 'Z')}"
        if promise.response_due_at is not None
        else "no SLA clock"
    )
    why = f", tier from {promise.entitlement}" if promise.entitlement else ""
    return (
        f"opened ticket {promise.ticket_id} (workflow {promise.workflow_id}):"
        f" {promise.tier.value} {promise.severity.value}{why}, {owed}"
    )


async def run_batch(
    client: Client | Callable[[], Awaitable[Client]], data: bytes, out: TextIO, err: TextIO
) -> int:
    """``intake.batch.open_batch``, told on ``err`` (each bad line, a progress bar) and
    ``out`` (a line per ticket and the summary); the exit code."""

    def problem(number: int, text: str) -> None:
        print(f"line {number}: {text}", file=err)

    def progress(total: int) -> Progress:
        return tqdm(total=total, desc="opening tickets", unit="ticket", file=err, disable=total < 2)

    try:
        outcome = await open_batch(client, data, problem, progress)
    except PolicyUnavailable as unavailable:
        print(f"error: {unavailable}; nothing was opened", file=err)
        return EXIT_UNREACHABLE
    for result in outcome.results:
        print(line(result), file=out)
    summary = (
        f"{outcome.opened} opened, {len(outcome.results) - outcome.opened} already existed,"
        f" {outcome.invalid} invalid"
    )
    print(summary + (f", {outcome.failed} failed" if outcome.failed else ""), file=out)
    if outcome.failed:
        return EXIT_UNREACHABLE
    return EXIT_INVALID if outcome.invalid else 0


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
    one.add_argument("--tier", help="leave out for a customer with a contract (its tier applies)")
    one.add_argument("--severity", help="default: the policy's default_severity")
    one.add_argument("--subject")
    one.add_argument("--description")
    one.add_argument("--category")
    one.add_argument("--reporter-email")
    one.add_argument("--intake-channel")
    one.add_argument("--opened-at", help="ISO 8601 with offset, e.g. 2026-11-26T09:30:00Z")
    batch = sub.add_parser("batch", help="open tickets from a JSON array or JSONL file")
    batch.add_argument("file", help="path, or - for standard input")
    return parser


async def open_one(fields: dict[str, str]) -> int:
    try:
        prepared = prepare(fields, CLI)
    except (InvalidTicket, IntakeRefused) as problem:
        for text in problem.problems:
            print(f"error: {text}", file=sys.stderr)
        return EXIT_INVALID
    except PolicyUnavailable as problem:
        print(f"error: {problem}; nothing was opened", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        promise = await start(await connect_or_explain(), prepared)
    except TicketConflict as problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID
    except RPCError as problem:
        print(f"error: not opened: {problem}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(line(promise))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def go() -> int:
        if args.command == "open":
            fields = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
            return await open_one(fields)
        try:
            data = sys.stdin.buffer.read() if args.file == "-" else read_file(args.file)
        except OSError as err:
            print(f"error: {args.file}: {err.strerror}", file=sys.stderr)
            return EXIT_INVALID
        return await run_batch(connect_or_explain, data, sys.stdout, sys.stderr)

    return asyncio.run(go())


def run_cli() -> NoReturn:
    """Console entry point. Exits with ``os._exit`` after flushing
    (``runtime.process.exit_flushed``: a normal interpreter shutdown can abort)."""
    try:
        code = main()
    except Unreachable as err:
        print(err, file=sys.stderr)
        code = EXIT_UNREACHABLE
    exit_flushed(code)


if __name__ == "__main__":
    run_cli()
