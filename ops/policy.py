"""``policy diff``, ``adopt``, ``archive`` and ``versions``: policy versions against the
SLA ledger's policy archive and the open tickets (docs/policy-versions.md)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from pydantic import BaseModel
from rich import box
from rich.table import Table
from temporalio.client import Client

from contract import names
from contract.client import (
    UPDATE_WAIT,
    ActionRefused,
    TicketDetails,
    TicketError,
    TicketSummary,
    TicketUnavailable,
    apply_action,
    build_query,
    by_time_to_breach,
    summary_of,
    ticket_details,
)
from contract.models import AdoptPolicy, TicketState, TicketStatus
from ledger.policy_archive import (
    PlanChange,
    PolicyArchive,
    PolicyVersionConflict,
    document_digest,
    plan_changes,
    plan_under,
)
from ops.common import EXIT_CHANGES, EXIT_FAILED, EXIT_OK, BadInput, Failed, connect_or_fail
from ops.output import print_json, utc
from policy.load import parse_policy, policy_path
from policy.schema import Policy, PolicyError
from runtime.console import emit, make_console

if TYPE_CHECKING:
    from ledger.store import SqlLedger

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


async def running_tickets(
    client: Client, limit: int | None
) -> tuple[list[TicketSummary], str | None]:
    """Every running ticket (all pages of the running-ticket query ``list_tickets`` uses),
    sorted by time to breach; with ``limit`` (``--limit``) at most that many, newest first.
    The second value says what a cap left out ("read N of M running tickets; ..."), None
    when every running ticket was read."""
    query = build_query(running=True)
    found = [summary_of(e) async for e in client.list_workflows(query, limit=limit)]
    cut = None
    if limit is not None and len(found) >= limit:
        total = (await client.count_workflows(query)).count
        if total > len(found):
            cut = (
                f"read {len(found)} of {total} running tickets; the other"
                f" {total - len(found)} (the oldest) were left out (--limit {limit})"
            )
    if cut is not None:
        sys.stderr.write(f"warning: {cut}\n")
        sys.stderr.flush()
    return by_time_to_breach(found), cut


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
    running, cut = await running_tickets(client, getattr(args, "limit", None))
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
                "cut": cut,
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
        if cut:
            lines.append(f"cut: {cut}")
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
        result = await apply_action(client, ticket_id, names.ADOPT_POLICY, adopt)
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
    client = await connect_or_fail()
    cut = None
    if args.all_open:
        running, cut = await running_tickets(client, getattr(args, "limit", None))
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
                "cut": cut,
            },
            out,
        )
    else:
        lines = [a.line(adopt.version) for a in adoptions]
        if cut:
            lines.append(f"cut: {cut}")
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
    return await policy_diff_command(await connect_or_fail(), args, file, out)
