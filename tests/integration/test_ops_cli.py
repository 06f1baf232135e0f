"""The ops CLI: visibility queries that no filter value can rewrite, and ``python -m ops`` as its
own process against the real dev server: lists (table and JSON, filtered, soonest breach
first), a ticket's state and timeline, ack and resolve (the status after the action),
refusals with exit code 1 and one line on stderr, the live watch table, and the policy
commands: a dry-run diff of a new file against the open tickets, archiving a version, the
archive's listing, and moving tickets to a version (one, or every open ticket)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from contract import client as visibility
from contract.client import (
    InvalidArgument,
    TicketSummary,
    apply_action,
    board_base,
    board_filter,
    build_query,
    by_time_to_breach,
    check_ticket_id,
    list_tickets,
    read_listing,
    ticket_status,
)
from contract.models import (
    Acknowledge,
    CustomerReply,
    Resolve,
    Severity,
    TicketState,
    TicketStatus,
    Tier,
)
from harness.policy import with_targets, write_policy
from harness.processes import eventually
from harness.temporal import connect
from intake.core import CLI, intake
from ledger.store import SqlLedger
from ops import cli as ops
from ops.output import countdown, duration, utc
from ops.tickets import watch_command
from policy.load import default_policy_path
from starter import open_ticket
from tests.conftest import (
    ROOT,
    Stack,
    busy_visibility_server,
    policy_resolved,
    sqlite_ledger,
    terminate_open,
    ticket,
)
from worker import build_worker

H, M = timedelta(hours=1), timedelta(minutes=1)
BASE = "WorkflowType = 'SupportTicket' AND ExecutionStatus != 'ContinuedAsNew'"


# --- the query ------------------------------------------------------------------------------


def test_build_query_without_filters_lists_every_ticket_once() -> None:
    assert build_query() == BASE


def test_build_query_combines_every_filter() -> None:
    query = build_query(
        state=TicketState.OPEN,
        tier="premium",
        severity=Severity.SEV1,
        breached=False,
        customer="acme-corp.eu",
        running=True,
    )
    assert query == (
        f"{BASE} AND TicketState = 'open' AND SupportTier = 'premium'"
        " AND SupportSeverity = 'sev1' AND SlaBreached = false"
        " AND CustomerId = 'acme-corp.eu' AND ExecutionStatus = 'Running'"
    )
    assert build_query(breached=True, running=False) == (
        f"{BASE} AND SlaBreached = true AND ExecutionStatus != 'Running'"
    )
    assert build_query(tier=Tier.MISSION_CRITICAL, customer="Example Bank") == (
        f"{BASE} AND SupportTier = 'mission_critical' AND CustomerId = 'Example Bank'"
    )


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"customer": "x' OR 1=1"}, "customer"),
        ({"customer": "x' OR CustomerId != '"}, "customer"),
        ({"customer": 'x" OR "1"="1'}, "customer"),
        ({"customer": "acme\\"}, "customer"),
        ({"customer": "acme') OR (WorkflowType = 'StatementOfWork"}, "customer"),
        ({"customer": "acme\nAND 1=1"}, "customer"),
        ({"customer": ""}, "customer"),
        ({"customer": " acme"}, "customer"),
        ({"customer": "acme  corp"}, "customer"),
        ({"customer": "a" * 129}, "customer"),
        ({"tier": "gold"}, "tier"),
        ({"tier": "premium' OR 1=1 OR SupportTier = '"}, "tier"),
        ({"state": "OPEN"}, "state"),
        ({"severity": "sev1 "}, "severity"),
        ({"breached": "true"}, "breached"),
        ({"breached": 1}, "breached"),
        ({"running": "yes"}, "running"),
    ],
)
def test_build_query_refuses_values_that_could_rewrite_it(
    filters: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{field}: "):
        build_query(**filters)


def test_ticket_ids_are_checked_before_any_call() -> None:
    assert check_ticket_id("T-1001_a.b") == "T-1001_a.b"
    for bad in ("", "has space", "x" * 65, "T'1", "ticket/1"):
        with pytest.raises(InvalidArgument, match="ticket id"):
            check_ticket_id(bad)


async def test_list_tickets_refuses_a_limit_out_of_range_without_calling_temporal() -> None:
    for limit in (0, -1, 10_001):
        with pytest.raises(InvalidArgument, match="limit"):
            await list_tickets(cast(Client, None), limit=limit)


async def test_a_listing_refuses_a_page_it_cannot_rank_and_a_state_off_the_board() -> None:
    """Pages are for the ranked listings (open or acknowledged) only; the board's filter
    takes no state the board does not hold. Refused before Temporal is called."""
    for arguments, field in (
        ({"page": 2}, "page"),
        ({"page": 2, "state": "resolved"}, "page"),
        ({"page": 0, "state": "open"}, "page"),
        ({"limit": 0, "state": "open"}, "limit"),
        ({"state": "OPEN"}, "state"),
    ):
        with pytest.raises(InvalidArgument, match=rf"^{field}: "):
            await read_listing(cast(Client, None), **arguments)
    with pytest.raises(InvalidArgument, match=r"^state: 'closed' is not on the board"):
        board_filter(state="closed")
    assert board_filter() is None
    assert board_filter(state="open", tier="premium", customer="Example Bank") == (
        "TicketState = 'open' AND SupportTier = 'premium' AND CustomerId = 'Example Bank'"
    )


def summary(ticket_id: str, **fields: Any) -> TicketSummary:
    data: dict[str, Any] = {
        "ticket_id": ticket_id,
        "workflow_id": f"ticket-{ticket_id}",
        "state": "open",
        "opened_at": datetime(2026, 11, 26, 9, tzinfo=UTC),
        "closed": False,
        "execution_status": "running",
    }
    data.update(fields)
    return TicketSummary.model_validate(data)


def test_tickets_are_sorted_by_time_to_breach() -> None:
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    tickets = [
        summary("closed", state="resolved", closed=True, response_due_at=at),
        summary("acked", state="acknowledged", response_due_at=at - timedelta(hours=1)),
        summary("later", response_due_at=at + timedelta(hours=3)),
        summary("community", opened_at=at),
        summary("overdue", response_due_at=at - timedelta(minutes=5), breached=True),
        summary("soon", response_due_at=at + timedelta(minutes=10)),
        summary("terminated", closed=True, execution_status="terminated", response_due_at=at),
        summary(
            "resolution",
            state="acknowledged",
            response_due_at=at - timedelta(hours=2),
            next_deadline=at + timedelta(hours=1),
            next_metric="resolution",
        ),
    ]
    ordered = [t.ticket_id for t in by_time_to_breach(tickets)]
    # Running deadlines (an answered ticket's nearest target too) soonest first; then
    # other running tickets newest first; then closed ones.
    assert ordered[:4] == ["overdue", "soon", "resolution", "later"]
    assert ordered[4:6] == ["community", "acked"]
    assert set(ordered[6:]) == {"closed", "terminated"}
    assert str(countdown(tickets[7], at)) == "in 1h (resolution)"
    assert str(countdown(tickets[4], at)) == "overdue 5m"
    assert tickets[4].time_to_breach(at) == timedelta(minutes=-5)
    assert tickets[1].time_to_breach(at) is None  # acknowledged: the clock stopped
    assert tickets[6].time_to_breach(at) is None  # terminated: nothing runs any more


def test_durations_read_like_a_countdown() -> None:
    assert duration(timedelta(hours=1)) == "1h"
    assert duration(timedelta(minutes=45, seconds=10)) == "45m 10s"
    assert duration(timedelta(hours=1, minutes=5, seconds=59)) == "1h 05m"
    assert duration(timedelta(days=4, hours=3, minutes=12)) == "4d 03h"
    assert duration(timedelta(seconds=-125)) == "2m 05s"
    assert duration(timedelta(0)) == "0s"


# --- the CLI against the dev server -----------------------------------------------------


@dataclass
class Tickets:
    client: Client
    address: str
    run: str
    premium: str  # premium sev2, acme
    standard: str  # standard sev3, globex
    community: str  # community sev4, acme
    breached: str  # premium sev1, initech, opened 70 min ago: breached at once
    to_resolve: str  # premium sev1, umbrella: acknowledged and resolved by a test
    queue: str = ""
    ledger_url: str = ""  # the worker's ledger, with its policy archive

    def customer(self, name: str) -> str:
        return f"{name}-{self.run}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tickets(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Tickets]:
    """A worker on a fresh task queue with five tickets of different tiers and customers,
    visible (with their deadlines) in visibility."""
    client = dev_server.client
    queue = f"tq-{uuid.uuid4()}"
    run = uuid.uuid4().hex[:6]
    ledger_path = tmp_path_factory.mktemp("ops") / "ledger.sqlite3"
    ledger = await sqlite_ledger(ledger_path)
    opened_70_min_ago = (datetime.now(UTC) - timedelta(minutes=70)).replace(microsecond=0)
    inputs = {
        "premium": ticket(f"OPS-P-{run}", customer_id=f"acme-{run}"),
        "standard": ticket(
            f"OPS-S-{run}", customer_id=f"globex-{run}", tier="standard", severity="sev3"
        ),
        "community": ticket(
            f"OPS-C-{run}", customer_id=f"acme-{run}", tier="community", severity="sev4"
        ),
        "breached": ticket(
            f"OPS-B-{run}",
            customer_id=f"initech-{run}",
            severity="sev1",
            opened_at=opened_70_min_ago,
        ),
        "to_resolve": ticket(f"OPS-R-{run}", customer_id=f"umbrella-{run}", severity="sev1"),
    }
    async with httpx.AsyncClient(timeout=5.0) as http:
        worker = build_worker(client, queue, ledger, http)
        async with worker:
            stack = Stack(dev_server, client, queue, ledger, worker)
            try:
                for data in inputs.values():
                    assert (await open_ticket(client, data, queue)).created
                    stack.opened.append(data.workflow_id)
                ids = {name: data.ticket_id for name, data in inputs.items()}

                async def ready() -> bool:
                    by_id = {t.ticket_id: t for t in await list_tickets(client)}
                    return (
                        set(ids.values()) <= set(by_id)
                        and all(
                            by_id[i].tier is Tier.COMMUNITY or by_id[i].response_due_at is not None
                            for i in ids.values()
                        )
                        and by_id[ids["breached"]].breached is True
                    )

                # Visibility is eventually consistent.
                await eventually("the tickets in visibility", ready)
                address = client.service_client.config.target_host
                yield Tickets(
                    client, address, run, **ids, queue=queue, ledger_url=f"sqlite:///{ledger_path}"
                )
            finally:
                await terminate_open(stack)
    await ledger.close()


@dataclass
class Ops:
    """Runs the CLI. ``process``: ``python -m ops`` as its own process, as ops run it (exit code,
    the ``os._exit`` path). ``inline``: the same ``ops.cli`` in a thread of this process,
    cheaper, for the variants. Both in threads: the worker shares this event loop."""

    tickets: Tickets

    async def process(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_"))
        }
        environment["TEMPORAL_ADDRESS"] = self.tickets.address
        environment.update(env)
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ops", *args],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
        )

    async def inline(self, *args: str) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(ops.cli, list(args), out, err)
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture
def run_ops(tickets: Tickets, monkeypatch: pytest.MonkeyPatch) -> Ops:
    for name in list(os.environ):
        if name.startswith(("TEMPORAL_", "SUPPORT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_ADDRESS", tickets.address)
    return Ops(tickets)


def ids_of(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [t["ticket_id"] for t in json.loads(done.stdout)]


def header_of(text: str) -> dict[str, str]:
    """``show``'s header (the lines before the first blank one): label -> value."""
    lines = text.split("\n\n")[0].splitlines()
    return dict(cast(tuple[str, str], tuple(re.split(r"\s{2,}", s, maxsplit=1))) for s in lines)


async def test_list_filters_and_sorts_by_time_to_breach(tickets: Tickets, run_ops: Ops) -> None:
    everything, table, premium, acme, breached, not_breached = await asyncio.gather(
        run_ops.process("list", "--json"),
        run_ops.process("list", "--customer", tickets.customer("acme")),
        run_ops.inline("list", "--tier", "premium", "--state", "open", "--json"),
        run_ops.inline("list", "--customer", tickets.customer("acme"), "--json"),
        run_ops.inline("list", "--breached", "--json"),
        run_ops.inline("list", "--not-breached", "--json"),
    )
    listed = [i for i in ids_of(everything) if i.endswith(tickets.run)]
    order = [tickets.breached, tickets.premium, tickets.standard, tickets.community]
    assert [i for i in listed if i in order] == order
    rows = {t["ticket_id"]: t for t in json.loads(everything.stdout)}
    premium_row = rows[tickets.premium]
    assert premium_row["workflow_id"] == f"ticket-{tickets.premium}"
    assert premium_row["customer_id"] == tickets.customer("acme")
    assert (premium_row["tier"], premium_row["severity"], premium_row["state"]) == (
        "premium",
        "sev2",
        "open",
    )
    assert premium_row["breached"] is False and premium_row["closed"] is False
    assert premium_row["execution_status"] == "running"
    due = datetime.fromisoformat(premium_row["response_due_at"])
    opened = datetime.fromisoformat(premium_row["opened_at"])
    assert abs((due - opened) - timedelta(hours=1)) < timedelta(seconds=5)
    assert rows[tickets.community]["response_due_at"] is None
    assert rows[tickets.community]["breached"] is None
    assert rows[tickets.breached]["breached"] is True

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == (
        "ticket customer tier severity state started (UTC) next due (UTC) to breach"
        " breached".split()
    )
    [premium_line] = [line for line in lines if tickets.premium in line]
    assert re.search(r" premium .* in (59m \d\ds|1h) +no$", premium_line)
    [community_line] = [line for line in lines if tickets.community in line]
    assert re.search(r" community +sev4 +open .* - +- +-$", community_line)
    assert len(lines) == 4  # the header, its rule and the two acme tickets

    assert {tickets.premium, tickets.breached} <= set(ids_of(premium))
    assert not {tickets.standard, tickets.community} & set(ids_of(premium))
    assert ids_of(acme) == [tickets.premium, tickets.community]
    assert ids_of(breached) == [tickets.breached]
    assert {tickets.premium, tickets.standard} <= set(ids_of(not_breached))
    assert not {tickets.breached, tickets.community} & set(ids_of(not_breached))


async def test_show_prints_state_deadlines_and_the_sla_timeline(
    tickets: Tickets, run_ops: Ops
) -> None:
    as_json, breached, standard = await asyncio.gather(
        run_ops.process("show", tickets.premium, "--json"),
        run_ops.process("show", tickets.breached),
        run_ops.inline("show", tickets.standard),
    )
    assert as_json.returncode == 0, as_json.stderr
    status = TicketStatus.model_validate_json(as_json.stdout)
    assert (status.ticket_id, status.state, status.tier) == (
        tickets.premium,
        TicketState.OPEN,
        Tier.PREMIUM,
    )
    assert status.response_target == timedelta(hours=1)
    assert [h.kind for h in status.history][:1] == ["opened"]

    assert breached.returncode == 0, breached.stderr
    header = header_of(breached.stdout)
    assert header["ticket"] == f"{tickets.breached} (workflow ticket-{tickets.breached}, running)"
    assert header["state"] == "open"
    assert (header["tier"], header["severity"]) == ("premium", "sev1")
    assert header["customer"] == tickets.customer("initech")
    assert header["response target"] == "1h"
    assert re.fullmatch(r"\S+ \S+ UTC \(overdue 1[01]m \d\ds\)", header["response due"])
    assert header["acknowledged"] == "no"
    assert header["breached"].startswith("yes ")
    assert header["next step"].startswith("repeat-1 at ")
    text = breached.stdout
    history = text.split("History (UTC)")[1].split("Escalations (UTC)")[0]
    assert "response_target_missed" in history and " breached " in history
    escalations = text.split("Escalations (UTC)")[1]
    assert any(line.split()[:2] == ["breach", "breach"] for line in escalations.splitlines())

    # The standard tier runs on business hours in Chicago: both zones are shown.
    assert standard.returncode == 0, standard.stderr
    due = header_of(standard.stdout)["response due"]
    assert re.fullmatch(r"\S+ \S+ C[SD]T \(America/Chicago\) = \S+ \S+ UTC \(in .+\)", due)


async def test_ack_then_resolve_and_show_follows(tickets: Tickets, run_ops: Ops) -> None:
    ticket_id = tickets.to_resolve
    before = datetime.now(UTC)
    ack = await run_ops.process("ack", ticket_id, "--agent", "alice", "--note", "on it")
    assert ack.returncode == 0, ack.stderr
    # The update answers with the status after the ack: printed, no polling needed.
    first, *lines = ack.stdout.splitlines()
    assert (
        first == f"acknowledge applied to ticket {ticket_id} (workflow ticket-{ticket_id}) as alice"
    )
    shown = dict(
        cast(tuple[str, str], tuple(re.split(r"\s{2,}", x.strip(), maxsplit=1))) for x in lines
    )
    assert (shown["state"], shown["breached"], shown["policy"]) == (
        "acknowledged",
        "no",
        "2026.12.1",
    )
    assert re.fullmatch(r"\S+ \S+ UTC", shown["response due"])
    assert re.fullmatch(r"\S+ \S+ UTC by alice", shown["acknowledged"])
    status = await ticket_status(tickets.client, ticket_id)
    assert status is not None and status.acknowledged_by == "alice"
    # The CLI stamped the instant the agent acted; the ticket counts the ack then.
    assert status.acknowledged_at is not None
    assert before.replace(microsecond=0) <= status.acknowledged_at <= datetime.now(UTC)

    resolve = await run_ops.process(
        "resolve", ticket_id, "--summary", "restarted", "--json", SUPPORT_AGENT="bob"
    )
    assert resolve.returncode == 0, resolve.stderr
    answer = json.loads(resolve.stdout)
    stamped = datetime.fromisoformat(answer["payload"].pop("at"))
    assert before <= stamped <= datetime.now(UTC)
    assert {k: answer[k] for k in ("ticket_id", "workflow_id", "action", "payload", "queued")} == {
        "ticket_id": ticket_id,
        "workflow_id": f"ticket-{ticket_id}",
        "action": "resolve",
        "payload": {"by": "bob", "summary": "restarted"},
        "queued": False,
    }
    assert (answer["status"]["state"], answer["status"]["resolved_by"]) == ("resolved", "bob")
    handle = tickets.client.get_workflow_handle(f"ticket-{ticket_id}", result_type=TicketStatus)
    assert (await asyncio.wait_for(handle.result(), 10)).state is TicketState.RESOLVED

    # A closed ticket is shown from its result; signals to it are refused.
    again, shown, table = await asyncio.gather(
        run_ops.process("ack", ticket_id, "--agent", "alice"),
        run_ops.inline("show", ticket_id, "--json"),
        run_ops.inline("show", ticket_id),
    )
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == (
        f"error: ticket {ticket_id} is closed (resolved; workflow completed):"
        " acknowledge not sent\n"
    )
    assert shown.returncode == 0, shown.stderr
    final = TicketStatus.model_validate_json(shown.stdout)
    assert (final.state, final.acknowledged_by, final.resolved_by) == (
        TicketState.RESOLVED,
        "alice",
        "bob",
    )
    assert [h.kind for h in final.history][-2:] == ["acknowledged", "resolved"]
    header = header_of(table.stdout)
    assert header["state"] == "resolved"
    assert header["ticket"] == f"{ticket_id} (workflow ticket-{ticket_id}, completed)"
    assert header["acknowledged"].endswith(" UTC by alice")
    assert header["resolved"].endswith(" UTC by bob")


async def test_unknown_tickets_and_an_unreachable_server_exit_1_with_one_line(
    tickets: Tickets, run_ops: Ops
) -> None:
    unreachable, unknown, ack_unknown = await asyncio.gather(
        run_ops.process("list", TEMPORAL_ADDRESS="127.0.0.1:1"),
        run_ops.inline("show", f"NOPE-{tickets.run}"),
        run_ops.inline("ack", f"NOPE-{tickets.run}", "--agent", "alice"),
    )
    assert (unreachable.returncode, unreachable.stdout) == (1, "")
    [line] = unreachable.stderr.splitlines()
    assert line.startswith("error: cannot connect to Temporal:") and "127.0.0.1:1" in line
    expected = f"error: no ticket NOPE-{tickets.run} (no workflow ticket-NOPE-{tickets.run})\n"
    for done in (unknown, ack_unknown):
        assert (done.returncode, done.stdout, done.stderr) == (1, "", expected)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["resolve", "T-1"], "resolve: no agent given: pass --agent NAME (or set SUPPORT_AGENT)"),
        (["ack", "T-1", "--agent", " "], "--agent: String should have at least 1 character"),
        (["ack", "T-1", "--agent", "a", "--note", "x" * 2001], "--note: String should have at"),
        (["show", "T 1"], "argument TICKET_ID: 'T 1' is not a ticket id"),
        (["list", "--customer", "x' OR 1=1"], 'argument --customer: "x\' OR 1=1" is not a'),
        (["list", "--tier", "gold"], "argument --tier: invalid choice: 'gold'"),
        (["list", "--breached", "--not-breached"], "not allowed with argument --breached"),
        (["watch", "--interval", "0"], "--interval: must be more than 0"),
        (["list", "--limit", "0"], "--limit: must be from 1 to 10000"),
        (
            ["policy", "adopt", "--version", "v2", "--ticket", "T-1"],
            "policy adopt: no --by given: pass --by NAME (or set SUPPORT_AGENT)",
        ),
        (
            ["policy", "adopt", "--version", "v2", "--all-open", "--ticket", "T-1", "--by", "a"],
            "argument --ticket: not allowed with argument --all-open",
        ),
        (["policy", "adopt", "--version", "v2", "--by", "a"], "one of the arguments --ticket"),
        (
            ["policy", "adopt", "--version", "", "--all-open", "--by", "a"],
            "--version: String should have at least 1 character",
        ),
        (
            ["policy", "adopt", "--version", "v2", "--ticket", "T 1", "--by", "a"],
            "argument --ticket: 'T 1' is not a ticket id",
        ),
        (["policy", "diff"], "the following arguments are required: FILE"),
        (["policy"], "the following arguments are required: policy_command"),
    ],
)
def test_bad_arguments_exit_2_before_connecting(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SUPPORT_AGENT", raising=False)
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing listens: never reached
    with pytest.raises(SystemExit) as exited:
        ops.cli(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


async def test_watch_prints_running_tickets_with_their_countdowns(
    tickets: Tickets, run_ops: Ops
) -> None:
    done = await run_ops.process("watch", "--iterations", "1", "--interval", "0.1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Running tickets: ") and "refresh every 0.1 s" in lines[0]
    [overdue] = [line for line in lines if tickets.breached in line]
    assert re.search(r" overdue 1[01]m \d\ds +yes$", overdue)
    [premium] = [line for line in lines if tickets.premium in line]
    assert re.search(r" in (59m \d\ds|1h) +no$", premium)
    assert any(tickets.community in line for line in lines)
    # Running tickets only: a resolved ticket's workflow has completed.
    assert " resolved " not in done.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_watch_on_a_terminal_is_a_live_table(
    tickets: Tickets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    args = ops.build_parser().parse_args(
        ["watch", "--iterations", "2", "--interval", "0.2", "--breached"]
    )
    out = Terminal()
    assert await watch_command(tickets.client, args, out) == 0
    screen = out.getvalue()
    assert "\x1b[" in screen  # drawn with colours and cursor moves, redrawn in place
    assert screen.count("Running tickets: ") >= 2
    assert tickets.breached in screen and tickets.premium not in screen
    assert re.search(r"overdue 1[01]m", screen)


@workflow.defn(name="SupportTicket", sandboxed=False)
class DriftedTicket:
    """A "SupportTicket" whose code differs from this release's: it starts with a timer
    where the real one schedules its policy activity."""

    @workflow.run
    async def run(self, data: Any) -> None:
        await workflow.sleep(timedelta(hours=1))


async def test_replay_checks_running_tickets_against_this_release(
    tickets: Tickets, run_ops: Ops
) -> None:
    client = tickets.client
    queue = f"tq-drift-{uuid.uuid4()}"
    drifted = f"ticket-DRIFT-{tickets.run}"
    async with Worker(client, task_queue=queue, workflows=[DriftedTicket]):
        handle = await client.start_workflow(
            "SupportTicket", ticket("DRIFT").model_dump(mode="json"), id=drifted, task_queue=queue
        )
        try:

            async def drifted_timer() -> bool:
                return len((await handle.fetch_history()).events) >= 5

            await eventually("the drifted timer", drifted_timer)
            done = await run_ops.process("replay", "--json")
            assert done.returncode == 1, done.stderr
            report = json.loads(done.stdout)
            # The module's running tickets replay; the drifted one is named with the error.
            assert report["replayed"] >= 4
            assert list(report["failed"]) == [drifted]
            assert "Nondeterminism" in report["failed"][drifted]
        finally:
            await handle.terminate("test over")
    done = await run_ops.process("replay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(
        r"replayed (\d+) running executions with this release: \1 ok, 0 failed\n", done.stdout
    )


# --- policy versions ------------------------------------------------------------------------


def test_an_invalid_policy_file_exits_2_naming_file_and_field_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing listens: never reached
    monkeypatch.setenv("SUPPORT_LEDGER_URL", f"sqlite:///{tmp_path / 'none' / 'l.sqlite3'}")

    def slow(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["response_target"] = "PT1X"

    bad = write_policy(tmp_path, slow)
    for argv in (["policy", "diff", str(bad)], ["policy", "archive", str(bad)]):
        out, err = io.StringIO(), io.StringIO()
        assert ops.cli(argv, out, err) == 2
        assert out.getvalue() == ""
        assert err.getvalue().startswith(f"error: {bad}: tiers.premium.response_target: ")
    out, err = io.StringIO(), io.StringIO()
    assert ops.cli(["policy", "archive", str(tmp_path / "nope.yaml")], out, err) == 2
    assert err.getvalue().startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read the policy")


def test_the_policy_archive_needs_a_migrated_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.sqlite3"
    out, err = io.StringIO(), io.StringIO()
    assert ops.cli(["policy", "versions", "--ledger-url", f"sqlite:///{missing}"], out, err) == 1
    assert err.getvalue() == (
        f"error: no SLA ledger at sqlite+aiosqlite:///{missing}: {missing} does not exist"
        " (`python -m ledger migrate` creates it)\n"
    )
    err = io.StringIO()
    assert ops.cli(["policy", "versions", "--ledger-url", "mysql://x/y"], out, err) == 2
    assert err.getvalue().startswith("error: --ledger-url: 'mysql' is not supported")
    assert not missing.exists()


def premium_in(tmp_path: Path, version: str, target: str = "PT2H") -> Path:
    """The shipped policy at exactly ``version`` (even the archived one, to show the
    conflict) with a slower Premium response target."""
    return write_policy(
        tmp_path,
        lambda data: data["tiers"]["premium"].update(response_target=target),
        version=version,
        name=f"{version}.yaml",
    )


async def open_and_plan(tickets: Tickets, *inputs: Any) -> list[TicketStatus]:
    """Open tickets on the module's worker; their statuses once planned."""
    statuses = []
    for data in inputs:
        assert (await open_ticket(tickets.client, data, tickets.queue)).created
        handle = tickets.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
        await policy_resolved(handle)
        statuses.append(await handle.query("status", result_type=TicketStatus))
    return statuses


async def close_all(tickets: Tickets, *ticket_ids: str) -> None:
    for ticket_id in ticket_ids:
        handle = tickets.client.get_workflow_handle(f"ticket-{ticket_id}")
        await handle.signal("resolve", Resolve(by="test"))
        await asyncio.wait_for(handle.result(), 10)


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_policy_diff_lists_exactly_the_open_tickets_whose_plan_would_change(
    tickets: Tickets, run_ops: Ops, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    customer = f"diff-{run}"
    premium, standard, critical, acked = await open_and_plan(
        tickets,
        ticket(f"DIFF-P-{run}", customer_id=customer, tier="premium", severity="sev3"),
        ticket(f"DIFF-S-{run}", customer_id=customer, tier="standard", severity="sev3"),
        ticket(f"DIFF-M-{run}", customer_id=customer, tier="mission_critical", severity="sev1"),
        ticket(f"DIFF-A-{run}", customer_id=customer, tier="premium", severity="sev2"),
    )
    await apply_action(tickets.client, acked.ticket_id, "acknowledge", Acknowledge(agent="ana"))
    ledger = ["--ledger-url", tickets.ledger_url]
    try:
        edited = premium_in(tmp_path, f"diff-{run}")
        done = await run_ops.process("policy", "diff", str(edited), "--json", *ledger)
        assert done.returncode == 3, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert (report["file"], report["version"]) == (str(edited), f"diff-{run}")
        assert (report["version_conflict"], report["not_compared"]) == (None, [])
        changed = {d["ticket_id"]: d for d in report["changed"]}
        unchanged = set(report["unchanged"])
        # Exactly the open Premium tickets: this test's, and the module's still open.
        tiers = {
            i: s.tier
            for i in changed.keys() | unchanged
            if (s := await ticket_status(tickets.client, i)) is not None
        }
        assert {i for i in tiers if tiers[i] is Tier.PREMIUM} == changed.keys()
        assert {premium.ticket_id, tickets.premium, tickets.breached} <= changed.keys()
        assert {standard.ticket_id, critical.ticket_id, tickets.standard, tickets.community} <= (
            unchanged
        )
        # Acknowledged: its deadline is history, nothing is pending to move.
        assert acked.ticket_id not in changed.keys() | unchanged and report["not_open"] >= 1
        t0 = premium.opened_at
        assert changed[premium.ticket_id] == {
            "ticket_id": premium.ticket_id,
            "tier": "premium",
            "severity": "sev3",
            "policy_version": "2026.12.1",
            "changes": [
                {"what": what, "before": iso(t0 + before), "after": iso(t0 + after)}
                for what, before, after in (
                    ("response due", H, 2 * H),
                    ("warning due", 30 * M, H),
                    ("final-warning due", 45 * M, 90 * M),
                    ("breach due", H, 2 * H),
                    ("repeat first due", 90 * M, 150 * M),
                )
            ],
        }

        text, same, conflicting = await asyncio.gather(
            run_ops.inline("policy", "diff", str(edited), *ledger),
            run_ops.inline("policy", "diff", str(default_policy_path()), "--json", *ledger),
            run_ops.inline(
                "policy", "diff", str(premium_in(tmp_path, "2026.12.1")), "--json", *ledger
            ),
        )
        assert text.returncode == 3, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0] == f"policy diff: {edited} (version diff-{run}) against the open tickets"
        at = lines.index(f"{premium.ticket_id}  premium sev3  policy 2026.12.1")
        assert lines[at + 1].split() == ["response", "due", iso(t0 + H), "->", iso(t0 + 2 * H)]
        assert re.fullmatch(
            rf"{len(changed)} would change, {len(unchanged)} unchanged, 0 not compared;"
            r" \d+ acknowledged or routed \(their deadline stays\)",
            lines[-1],
        )
        # The shipped file is what every open ticket runs under: nothing would change.
        assert same.returncode == 0, same.stdout + same.stderr
        assert json.loads(same.stdout)["changed"] == []
        # An edit that kept the archived version is flagged (a worker would refuse it).
        assert conflicting.returncode == 3
        assert json.loads(conflicting.stdout)["version_conflict"].startswith(
            "version 2026.12.1 is already archived with other rules"
        )
    finally:
        await close_all(tickets, premium.ticket_id, standard.ticket_id, critical.ticket_id)
        await close_all(tickets, acked.ticket_id)


async def test_policy_archive_and_adopt_move_a_ticket_explicitly_and_record_it(
    tickets: Tickets, run_ops: Ops, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    version = f"adopt-{run}"
    edited = premium_in(tmp_path, version)
    [before] = await open_and_plan(
        tickets, ticket(f"ADOPT-{run}", customer_id=f"adopt-{run}", severity="sev3")
    )
    ticket_id = before.ticket_id
    ledger = ["--ledger-url", tickets.ledger_url]
    where = tickets.ledger_url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    adopt = ["policy", "adopt", "--version", version, "--ticket", ticket_id, *ledger]
    try:
        early = await run_ops.process(*adopt, "--by", "ops-lead")
        assert (early.returncode, early.stdout) == (1, "")
        assert early.stderr == (
            f"error: policy {version} is not in the policy archive at {where}: archive it"
            " first (support-ops policy archive FILE)\n"
        )

        archived = await run_ops.process("policy", "archive", str(edited), *ledger)
        assert archived.returncode == 0, archived.stderr
        digest = hashlib.sha256(edited.read_bytes()).hexdigest()
        assert archived.stdout == (
            f"policy {version} archived from {edited} (sha256 {digest[:12]}) in the SLA ledger"
            f" at {where}\n"
        )
        again = await run_ops.inline("policy", "archive", str(edited), *ledger)
        assert again.stdout == (
            f"policy {version} is already archived with this text (sha256 {digest[:12]}) in"
            f" the SLA ledger at {where}\n"
        )
        edited.write_text(edited.read_text(encoding="utf-8").replace("PT2H", "PT3H", 1))
        changed = await run_ops.inline("policy", "archive", str(edited), *ledger)
        assert (changed.returncode, changed.stdout) == (1, "")
        assert changed.stderr.startswith(
            f"error: {edited}: version: '{version}' is already archived with other rules"
        )

        listing, table = await asyncio.gather(
            run_ops.inline("policy", "versions", "--json", *ledger),
            run_ops.inline("policy", "versions", *ledger),
        )
        rows = {r["version"]: r for r in json.loads(listing.stdout)}
        # The worker archived the shipped file as it planned the first ticket.
        assert rows["2026.12.1"]["source"].endswith(f":{default_policy_path()}")
        assert rows[version]["digest"] == digest
        assert rows[version]["source"].startswith("support-ops@")
        assert any(line.split()[:1] == [version] for line in table.stdout.splitlines())

        moved = await run_ops.process(*adopt, "--by", "ops-lead", "--reason", "Premium is 2 h")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        due_before, due_after = before.response_due_at, before.opened_at + 2 * H
        assert due_before == before.opened_at + H
        assert moved.stdout == (
            f"{ticket_id}: policy 2026.12.1 -> {version}; response due"
            f" {utc(due_before)} UTC -> {utc(due_after)} UTC\n"
            f"policy {version}: 1 moved, 0 queued, 0 refused, 0 failed, 0 already on it\n"
        )
        status = await ticket_status(tickets.client, ticket_id)
        assert status is not None
        assert (status.policy_version, status.response_due_at) == (version, due_after)
        [entry] = [h for h in status.history if h.kind == "policy_adopted"]
        assert entry.by == "ops-lead" and (entry.detail or "").endswith(": Premium is 2 h")
        recorded = await eventually(
            "the adoption in the ledger",
            lambda: ledger_events(tickets.ledger_url, ticket_id, "policy_adopted"),
        )
        assert (recorded[0].detail["before"], recorded[0].detail["after"]) == (
            "2026.12.1",
            version,
        )

        twice = await run_ops.inline(*adopt, "--by", "ops-lead", "--json")
        assert twice.returncode == 1
        [outcome] = json.loads(twice.stdout)["tickets"]
        assert outcome["outcome"] == "refused"
        assert f"already runs under policy {version}" in outcome["problem"]
    finally:
        await close_all(tickets, ticket_id)


async def ledger_events(url: str, ticket_id: str, kind: str) -> list[Any]:
    ledger = SqlLedger.from_url(url)
    try:
        return [e for e in await ledger.events(ticket_id) if e.kind == kind]
    finally:
        await ledger.close()


async def test_policy_adopt_all_open_moves_every_running_ticket_not_already_on_it(
    tickets: Tickets, run_ops: Ops, tmp_path: Path
) -> None:
    """Last in the module: it moves the module's open tickets to another version. Every
    running ticket, not the newest N: a ``--limit`` below their number is a cap the
    output names (``cut``, stdout and stderr), never a silent cut."""
    version = f"all-{tickets.run}"
    ledger = ["--ledger-url", tickets.ledger_url]
    policy_file = premium_in(tmp_path, version)
    assert (await run_ops.inline("policy", "archive", str(policy_file), *ledger)).returncode == 0
    # A few more open tickets than the cap below, beside the module's.
    extra = await open_and_plan(
        tickets,
        *(ticket(f"ALL-{i}-{tickets.run}", customer_id=f"all-{tickets.run}") for i in range(4)),
    )
    query = build_query(running=True)
    try:
        total = (await tickets.client.count_workflows(query)).count
        assert total >= len(extra) + 2
        cut = (
            f"read 2 of {total} running tickets; the other {total - 2} (the oldest) were left"
            " out (--limit 2)"
        )
        diff = await run_ops.process(
            "policy", "diff", str(policy_file), "--limit", "2", "--json", *ledger
        )
        assert json.loads(diff.stdout)["cut"] == cut, diff.stderr
        assert diff.stderr == f"warning: {cut}\n"
        whole = await run_ops.inline("policy", "diff", str(policy_file), "--json", *ledger)
        assert json.loads(whole.stdout)["cut"] is None

        adopt = ["policy", "adopt", "--version", version, "--all-open", "--by", "ops-lead"]
        adopt += ledger
        capped = await run_ops.process(*adopt, "--limit", "2")
        assert capped.returncode == 0, capped.stdout + capped.stderr
        assert capped.stderr == f"warning: {cut}\n"
        assert capped.stdout.splitlines()[-2:] == [
            f"cut: {cut}",
            f"policy {version}: 2 moved, 0 queued, 0 refused, 0 failed, 0 already on it",
        ]
        # The newest two running: this test's last tickets.
        newest = {line.split(":")[0] for line in capped.stdout.splitlines()[:-2]}
        assert newest == {extra[-1].ticket_id, extra[-2].ticket_id}

        done = await run_ops.process(*adopt, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr == ""
        report = json.loads(done.stdout)
        assert report["cut"] is None
        outcomes = {t["ticket_id"]: t["outcome"] for t in report["tickets"]}
        assert outcomes[tickets.premium] == outcomes[tickets.community] == "moved"
        assert outcomes[extra[0].ticket_id] == outcomes[extra[1].ticket_id] == "moved"
        # The two the capped run moved are already on it; every other one moves now.
        assert {i for i, o in outcomes.items() if o != "moved"} == newest
        assert {outcomes[i] for i in newest} == {"skipped"}
        # Every running ticket, each page of the query: all on the version now.
        running = [w.id.removeprefix("ticket-") async for w in tickets.client.list_workflows(query)]
        assert len(running) == total and set(running) == outcomes.keys()
        for ticket_id in running:
            status = await ticket_status(tickets.client, ticket_id)
            assert status is not None and status.policy_version == version, ticket_id
        again = await run_ops.inline(*adopt)
        assert again.returncode == 0
        assert again.stdout.splitlines()[-1] == (
            f"policy {version}: 0 moved, 0 queued, 0 refused, 0 failed,"
            f" {len(outcomes)} already on it"
        )
    finally:
        await close_all(tickets, *(s.ticket_id for s in extra))


async def test_reply_and_wait_act_through_the_update_and_show_lists_the_wait(
    tickets: Tickets, run_ops: Ops
) -> None:
    ticket_id = f"OPS-W-{tickets.run}"
    data = ticket(ticket_id, customer_id=f"hooli-{tickets.run}")
    assert (await open_ticket(tickets.client, data, tickets.queue)).created
    handle = tickets.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
    await eventually("planned", lambda: ticket_status(tickets.client, ticket_id))
    reply = await run_ops.process("reply", ticket_id, "--agent", "alice", "--summary", "hi")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.splitlines()[0] == (
        f"agent_reply applied to ticket {ticket_id} (workflow ticket-{ticket_id}) as alice"
    )
    assert "acknowledged" in reply.stdout, "the reply was the first response"
    wait = await run_ops.process(
        "wait", ticket_id, "--reason", "need logs", "--json", SUPPORT_AGENT="bob"
    )
    assert wait.returncode == 0, wait.stderr
    answer = json.loads(wait.stdout)
    assert (answer["action"], answer["payload"]["by"], answer["payload"]["reason"]) == (
        "await_customer",
        "bob",
        "need logs",
    )
    assert answer["status"]["awaiting_customer_reason"] == "need logs"
    again = await run_ops.process("wait", ticket_id, "--reason", "x", "--agent", "bob")
    assert again.returncode == 1 and "waits on the customer since" in again.stderr
    shown = await run_ops.inline("show", ticket_id)
    assert header_of(shown.stdout)["waiting on customer"].endswith(": need logs")
    await handle.signal("resolve", Resolve(by="test"))
    no_reason = await run_ops.process("wait", ticket_id, "--agent", "bob")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr


async def test_show_lists_the_next_reply_and_resolution_and_pauses_them_while_waiting(
    tickets: Tickets, run_ops: Ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(tmp_path, with_targets("premium", next_reply="PT4H", resolution="P1D"))
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    run = uuid.uuid4().hex[:6]  # not the module's run: its listing tests count those
    ticket_id = f"TGT-{run}"
    [opened] = await open_and_plan(tickets, ticket(ticket_id, customer_id=f"targets-{run}"))
    handle = tickets.client.get_workflow_handle(f"ticket-{ticket_id}", result_type=TicketStatus)
    reply = await run_ops.process("reply", ticket_id, "--agent", "alice")
    assert reply.returncode == 0, reply.stderr
    replied = datetime.now(UTC).replace(microsecond=0)
    await handle.signal(
        "customer_reply",
        CustomerReply(received_at=replied, subject="still broken", reference=f"<{ticket_id}>"),
    )

    async def next_reply_started() -> dict[str, str] | None:
        header = header_of((await run_ops.inline("show", ticket_id)).stdout)
        return header if "next reply" in header else None

    header = await eventually("the next reply in show", next_reply_started)
    [resolution] = [t for t in opened.targets if t.metric.value == "resolution"]
    resolution_due = resolution.started_at + timedelta(days=1)
    assert header["next reply"] == f"due {utc(replied + timedelta(hours=4))} UTC: running"
    assert header["resolution"] == f"due {utc(resolution_due)} UTC: running"

    wait = await run_ops.process("wait", ticket_id, "--reason", "the logs", "--agent", "bob")
    assert wait.returncode == 0, wait.stderr
    after = textwrap.dedent(wait.stdout.split("\n", 1)[1])  # the status after the action
    header = header_of(after)
    assert header["next reply"].endswith(": paused")
    assert header["resolution"].endswith(": paused")
    assert header["waiting on customer"].endswith(": the logs")
    await close_all(tickets, ticket_id)


async def test_list_and_watch_show_and_sort_by_the_nearest_deadline_of_any_target(
    tickets: Tickets, run_ops: Ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mission Critical resolves within 30 minutes; Premium has its first response only.
    policy = write_policy(tmp_path, with_targets("mission_critical", resolution="PT30M"))
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    run = uuid.uuid4().hex[:6]
    customer = f"nearest-{run}"
    answered, waiting = await open_and_plan(
        tickets,
        ticket(f"NEAR-A-{run}", customer_id=customer, tier="mission_critical"),
        ticket(f"NEAR-O-{run}", customer_id=customer),
    )
    reply = await run_ops.process("reply", answered.ticket_id, "--agent", "alice")
    assert reply.returncode == 0, reply.stderr
    [resolution] = [t for t in answered.targets if t.metric.value == "resolution"]
    resolution_due = resolution.started_at + timedelta(minutes=30)
    assert waiting.response_due_at is not None
    assert resolution_due < waiting.response_due_at  # the answered ticket's is the nearest

    async def answered_listed() -> list[dict[str, Any]] | None:
        listed = json.loads((await run_ops.inline("list", "--customer", customer, "--json")).stdout)
        states = {t["ticket_id"]: t["state"] for t in listed}
        return listed if states.get(answered.ticket_id) == "acknowledged" else None

    listed = await eventually("the answered ticket in visibility", answered_listed)
    # Sorted by the nearest deadline: the answered ticket's resolution comes before the
    # open ticket's first response (by its response deadline alone it sorted last).
    assert [t["ticket_id"] for t in listed] == [answered.ticket_id, waiting.ticket_id]
    assert listed[0]["next_metric"] == "resolution"
    assert datetime.fromisoformat(listed[0]["next_deadline"]) == resolution_due
    table, watch = await asyncio.gather(
        run_ops.inline("list", "--customer", customer),
        run_ops.process("watch", "--customer", customer, "--iterations", "1", "--interval", "0.1"),
    )
    for done in (table, watch):
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if customer in line]
        assert [line.split()[0] for line in lines] == [answered.ticket_id, waiting.ticket_id]
        first, second = lines
        assert f" {utc(resolution_due)} " in first
        # (30m when listed within a second of the reply.)
        assert re.search(r" in (2\dm( \d\ds)?|30m) \(resolution\) +no$", first)
        assert f" {utc(waiting.response_due_at)} " in second
        assert re.search(r" in (59m \d\ds|1h) +no$", second)
    await close_all(tickets, answered.ticket_id, waiting.ticket_id)


# --- a flood of newer tickets cannot hide an older open one (issue 15, part 2) -----------

FLOOD = 15  # newer Community tickets: three times the views' limit below
SHOWN = 5


@dataclass
class Flood:
    client: Client
    address: str
    sev1: str  # the older open ticket, whose response clock runs
    flood: list[str]  # newer open Community tickets, oldest first


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def flood(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Flood]:
    """A server of its own (the module's tickets stay out of these views), whose
    visibility answers more than 10 requests a second (a windowed read takes a few
    counts): an open premium sev1, then ``FLOOD`` newer Community tickets. Opened through
    the intake core, which sets every search attribute at start, on a task queue no worker
    polls: the views read visibility only."""
    async with busy_visibility_server(tmp_path_factory.mktemp("flood")) as server:
        client = await connect(server.address)
        idle = f"tq-flood-{uuid.uuid4()}"

        async def opened(ticket_id: str, **data: str) -> str:
            data = {"ticket_id": ticket_id, "subject": "flood", **data}
            await intake(client, data, CLI, queue=idle)
            return ticket_id

        sev1 = await opened("OLD-SEV1", customer_id="acme", tier="premium", severity="sev1")
        flood = []
        for number in range(FLOOD):  # one at a time: each newer than the last
            flood.append(await opened(f"NEW-{number:02d}", customer_id="crowd", severity="sev4"))

        async def listed() -> bool:
            return (await client.count_workflows(board_base())).count == FLOOD + 1

        await eventually("the flood in visibility", listed, 30, every=0.1)
        yield Flood(client, server.address, sev1, flood)


async def on_flood(
    flood: Flood, monkeypatch: pytest.MonkeyPatch, *args: str
) -> subprocess.CompletedProcess[str]:
    """``ops.cli`` against the flood's server, in a thread."""
    for name in list(os.environ):
        if name.startswith(("TEMPORAL_", "SUPPORT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_ADDRESS", flood.address)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ops.cli, list(args), out, err)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def rows_of(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The ticket ids of a table's rows, in order."""
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines() if re.match(r" ?(OLD|NEW)-", line)]


@pytest.mark.parametrize("windows", [False, True], ids=["read-whole", "read-by-windows"])
async def test_a_flood_of_newer_tickets_does_not_push_an_older_open_sev1_out_of_watch_or_list(
    flood: Flood, monkeypatch: pytest.MonkeyPatch, windows: bool
) -> None:
    """The attack: more newer Community tickets than ``--limit`` after an open sev1. The
    newest-first read (``list`` without ``--state``) shows only the flood, and says it is
    cut; ``watch`` and ``list --state open`` rank every open ticket, so the sev1 is the first
    row whatever was opened since, and the cut is said under the table (on stderr with
    ``--json``). With ``windows`` the board's windowed read is forced (as past 1000 tickets)."""
    if windows:
        monkeypatch.setattr(visibility, "BOARD_READ_WHOLE", 0)
    limit = ("--limit", str(SHOWN))
    watch = await on_flood(flood, monkeypatch, "watch", *limit, "--iterations", "1")
    assert rows_of(watch)[0] == flood.sev1
    assert rows_of(watch)[1:] == flood.flood[: SHOWN - 1]  # then the oldest without a clock
    title = watch.stdout.splitlines()[0]
    assert title.startswith(f"Running tickets: {FLOOD + 1} open or acknowledged, most urgent first")
    note = f"showing 1 to {SHOWN} of {FLOOD + 1} open or acknowledged tickets, most urgent first"
    assert f"{note}; --limit {FLOOD + 1} shows more" in " ".join(watch.stdout.split())

    ranked = await on_flood(flood, monkeypatch, "list", "--state", "open", *limit, "--json")
    assert ids_of(ranked)[0] == flood.sev1 and len(ids_of(ranked)) == SHOWN
    assert ranked.stderr == (
        f"note: showing 1 to {SHOWN} of {FLOOD + 1} open tickets, most urgent first;"
        " the next ones: --page 2\n"
    )
    table = await on_flood(flood, monkeypatch, "list", "--state", "open", *limit, "--page", "4")
    assert rows_of(table) == flood.flood[-1:]  # the last page: the newest ticket
    note = (
        f"note: showing {FLOOD + 1} to {FLOOD + 1} of {FLOOD + 1} open tickets, most urgent first"
    )
    assert note in " ".join(table.stdout.split())

    # Before: the newest --limit tickets of any state, then sorted. Still what `list`
    # without --state reads, but no longer silently.
    newest = await on_flood(flood, monkeypatch, "list", *limit, "--json")
    assert flood.sev1 not in ids_of(newest) and len(ids_of(newest)) == SHOWN
    assert newest.stderr == (
        f"note: showing the newest {SHOWN} of {FLOOD + 1} matching tickets, then sorted:"
        " older ones are left out (--state open ranks every open ticket)\n"
    )


async def test_filters_narrow_the_ranked_views_and_a_state_off_the_board_says_it_is_not_ranked(
    flood: Flood, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tier, severity and customer narrow watch and ``list --state open`` in the same
    ranked read; ``watch --state routed_to_sow`` (not on the board) is read newest first
    and says so; a page without a state of the board is refused before connecting."""
    monkeypatch.setattr(visibility, "BOARD_READ_WHOLE", 0)
    sev1 = await on_flood(flood, monkeypatch, "watch", "--severity", "sev1", "--iterations", "1")
    assert rows_of(sev1) == [flood.sev1] and "note:" not in sev1.stdout
    crowd = await on_flood(
        flood, monkeypatch, "list", "--state", "open", "--tier", "community",
        "--customer", "crowd", "--limit", str(SHOWN), "--page", "2", "--json",
    )  # fmt: skip
    assert ids_of(crowd) == flood.flood[SHOWN : 2 * SHOWN]
    assert "showing 6 to 10 of 15 open tickets" in crowd.stderr
    routed = await on_flood(
        flood, monkeypatch, "watch", "--state", "routed_to_sow", "--iterations", "1"
    )
    assert routed.returncode == 0, routed.stderr
    assert rows_of(routed) == []
    assert (
        "--state routed_to_sow is not on the board (open or acknowledged tickets only): the"
        " newest 500 matching tickets are read, then sorted, not ranked across all of them"
    ) in " ".join(routed.stdout.split())
    with pytest.raises(SystemExit) as refused:
        await on_flood(flood, monkeypatch, "list", "--page", "2")
    assert refused.value.code == 2
