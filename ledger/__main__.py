"""The SLA ledger's command line: schema migrations, compliance reports, evidence export.

    python -m ledger migrate [--url URL]
    python -m ledger report [--from DATE] [--to DATE] [--customer ID] [--tier TIER]
                            [--as-of DATETIME] [--format table|csv|json|html] [--output FILE]
    python -m ledger evidence TICKET_ID [--format json|csv] [--output FILE]

``--url`` defaults to ``SUPPORT_LEDGER_URL``, else ``.data/sla-ledger.sqlite3``. Exit codes:
0 done, 1 the ledger cannot be read (unreachable, not migrated, unknown ticket), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from contract.models import TICKET_ID_PATTERN, Tier
from ledger.url import LEDGER_URL_ENV, ledger_url, redacted

if TYPE_CHECKING:
    from ledger.report import Report
    from ledger.store import SqlLedger

EXIT_LEDGER = 1
EXIT_USAGE = 2
# A database that does not answer within this long is reported, not waited on for minutes.
CONNECT_TIMEOUT_SECONDS = 20
TIER_CHOICES = ", ".join(
    t.value for t in (Tier.MISSION_CRITICAL, Tier.PREMIUM, Tier.STANDARD, Tier.COMMUNITY)
)


class UsageError(Exception):
    """Bad input: exit 2, the message names the flag and what is wrong."""


class LedgerError(Exception):
    """The ledger cannot answer: exit 1 with a one-line message."""


# --- input --------------------------------------------------------------------------------


def parse_instant(flag: str, value: str) -> datetime:
    """A date (UTC midnight) or an ISO 8601 date-time (UTC unless it carries an offset)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{flag}: {value!r} is not a date or date-time"
            " (YYYY-MM-DD, or ISO 8601 such as 2026-11-01T09:30:00Z)"
        ) from None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


def parse_tier(value: str) -> Tier:
    try:
        return Tier(value)
    except ValueError:
        raise UsageError(f"--tier: {value!r} is not a tier; valid: {TIER_CHOICES}") from None


def resolve_url(flag_value: str | None) -> str:
    try:
        return ledger_url(flag_value)
    except ValueError as err:
        message = str(err)
        if flag_value:
            message = "--url: " + message.removeprefix(f"{LEDGER_URL_ENV}: ")
        raise UsageError(message) from None


def check_output(path: str | None) -> None:
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--output: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--output: {path!r} is a directory")


# --- the ledger ---------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = err.orig if isinstance(err, DBAPIError) and err.orig else err
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def missing_sqlite_file(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return None if Path(database).exists() else database


@asynccontextmanager
async def opened_ledger(url: str, must_exist: bool) -> AsyncIterator[SqlLedger]:
    """The ledger at ``url``, checked to answer and (unless migrating) to be at head; any
    database error inside the block becomes a one-line ``LedgerError`` (password hidden)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ledger.store import LedgerSchemaError, SqlLedger

    database_errors: tuple[type[BaseException], ...] = (OSError, SQLAlchemyError)
    if url.startswith("postgresql"):
        import asyncpg

        # Refused logins and missing databases surface from asyncpg unwrapped.
        database_errors += (asyncpg.PostgresError, asyncpg.InterfaceError)

    if must_exist and (missing := missing_sqlite_file(url)):
        # Opening it would create an empty file and report a schema problem instead.
        raise LedgerError(
            f"no SLA ledger at {redacted(url)}: {missing} does not exist"
            " (`python -m ledger migrate` creates it)"
        )
    ledger = SqlLedger.from_url(url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            if must_exist:
                await ledger.check_schema()
            else:
                await ledger.schema_revision()
        yield ledger
    except LedgerSchemaError as err:
        raise LedgerError(str(err)) from None
    except TimeoutError:
        raise LedgerError(
            f"cannot reach the SLA ledger at {redacted(url)}:"
            f" no answer within {CONNECT_TIMEOUT_SECONDS} s"
        ) from None
    except database_errors as err:
        raise LedgerError(
            f"cannot use the SLA ledger at {redacted(url)}: {_one_line(err)}"
        ) from None
    finally:
        await ledger.close()


# --- commands -----------------------------------------------------------------------------


async def migrate(args: argparse.Namespace, out: TextIO) -> None:
    async with opened_ledger(resolve_url(args.url), must_exist=False) as ledger:
        await ledger.migrate()
        revision = await ledger.schema_revision()
    print(f"SLA ledger at {ledger.describe()}: schema at revision {revision} (head)", file=out)


async def report(args: argparse.Namespace, out: TextIO) -> None:
    from ledger.policy_archive import PolicyArchive
    from ledger.report import Filters, build_report, loaded_policy, wait_spans
    from policy.schema import Policy

    opened_from = parse_instant("--from", args.opened_from) if args.opened_from else None
    opened_to = parse_instant("--to", args.opened_to) if args.opened_to else None
    if opened_from and opened_to and opened_from >= opened_to:
        raise UsageError(
            f"--from: {args.opened_from} is not before --to {args.opened_to} (--to is exclusive)"
        )
    as_of = (
        parse_instant("--as-of", args.as_of)
        if args.as_of
        else datetime.now(UTC).replace(microsecond=0)
    )
    tier = parse_tier(args.tier) if args.tier is not None else None
    customer = args.customer.strip() if args.customer is not None else None
    if customer == "":
        raise UsageError("--customer: must not be empty")
    check_output(args.output)
    filters = Filters(opened_from, opened_to, customer, tier)

    async with opened_ledger(resolve_url(args.url), must_exist=True) as ledger:
        outcomes = await ledger.outcomes(
            opened_from, opened_to, customer, tier.value if tier else None
        )
        # Each ticket's business time on the calendar of the policy version it ran under:
        # the policy archive in the ledger, else the loaded file.
        archive = PolicyArchive(ledger)
        await archive.preload()
        # Each ticket's waits on the customer, from its ledger events (one query per 500).
        events = await ledger.wait_events([o.ticket_id for o in outcomes])
        waits = {ticket_id: wait_spans(found) for ticket_id, found in events.items()}

    def policy_for_version(version: str | None) -> Policy | None:
        return archive.policy_for_version(version) or loaded_policy(version)

    result = build_report(
        outcomes, as_of, filters, policy_for_version=policy_for_version, customer_waits=waits
    )
    write(args.output, out, lambda stream: render_report(result, args.format, stream))


def render_report(result: Report, fmt: str, stream: TextIO) -> None:
    from ledger import render

    if fmt == "table":
        render.render_table(result, stream)
    elif fmt == "csv":
        render.render_csv(result, stream)
    elif fmt == "json":
        render.render_json(result, stream)
    else:
        stream.write(render.render_html(result))


async def evidence(args: argparse.Namespace, out: TextIO) -> None:
    from ledger.evidence import collect_evidence, render_evidence_csv, render_evidence_json

    if not re.fullmatch(TICKET_ID_PATTERN, args.ticket_id):
        raise UsageError(
            f"TICKET_ID: {args.ticket_id!r} is not a ticket id ([A-Za-z0-9._-]{{1,64}})"
        )
    check_output(args.output)
    async with opened_ledger(resolve_url(args.url), must_exist=True) as ledger:
        found = await collect_evidence(ledger, args.ticket_id)
    if found is None:
        raise LedgerError(f"no ticket {args.ticket_id!r} in the SLA ledger at {ledger.describe()}")
    renderer = render_evidence_json if args.format == "json" else render_evidence_csv
    write(args.output, out, lambda stream: renderer(found, stream))


def write(path: str | None, out: TextIO, render: Callable[[TextIO], None]) -> None:
    """Render to ``out``, or to ``path`` in one write once rendering has succeeded."""
    if path is None:
        render(out)
        return
    buffer = io.StringIO()
    render(buffer)
    try:
        Path(path).write_text(buffer.getvalue(), encoding="utf-8", newline="")
    except OSError as err:
        raise LedgerError(f"--output: cannot write {path!r}: {err.strerror}") from None


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ledger",
        description="The SLA ledger: migrations, compliance reports and evidence export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    url_help = f"ledger URL (default: ${LEDGER_URL_ENV}, else sqlite:///.data/sla-ledger.sqlite3)"

    m = sub.add_parser("migrate", help="bring the ledger's schema to the latest revision")
    m.add_argument("--url", help=url_help)

    r = sub.add_parser("report", help="SLA compliance report")
    r.add_argument("--url", help=url_help)
    r.add_argument(
        "--from",
        dest="opened_from",
        metavar="DATE",
        help="tickets opened at or after (YYYY-MM-DD = UTC midnight, or ISO 8601)",
    )
    r.add_argument(
        "--to", dest="opened_to", metavar="DATE", help="tickets opened before (exclusive)"
    )
    r.add_argument("--customer", metavar="ID", help="one customer only")
    r.add_argument("--tier", metavar="TIER", help=f"one tier only: {TIER_CHOICES}")
    r.add_argument(
        "--as-of",
        metavar="DATETIME",
        help="the instant open tickets are judged at (default: now)",
    )
    r.add_argument("--format", choices=["table", "csv", "json", "html"], default="table")
    r.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")

    e = sub.add_parser("evidence", help="one ticket's ledger row and SLA events")
    e.add_argument("ticket_id", metavar="TICKET_ID")
    e.add_argument("--url", help=url_help)
    e.add_argument("--format", choices=["json", "csv"], default="json")
    e.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    return parser


COMMANDS = {"migrate": migrate, "report": report, "evidence": evidence}


def main(
    argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    args = build_parser().parse_args(argv)
    out, err = out or sys.stdout, err or sys.stderr
    try:
        asyncio.run(COMMANDS[args.command](args, out))
    except UsageError as problem:
        print(f"error: {problem}", file=err)
        return EXIT_USAGE
    except LedgerError as problem:
        print(f"error: {problem}", file=err)
        return EXIT_LEDGER
    return 0


def run() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    run()
