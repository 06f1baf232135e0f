"""Issue 15, part 2: the agent board cannot be flooded. The attack: 600 Community tickets
opened after an open sev1 (the board used to read the newest 500 tickets in any state and
only then keep the open ones, so the sev1 fell off it). The board now reads open and
acknowledged tickets by the ``TicketState`` search attribute, sorts them by time to breach
and pages the result: the sev1 stays first.

The sev1 is a real ticket on a worker; the flood is opened through the same intake core
(every search attribute is set at start) on a task queue no worker polls, so 600 tickets
cost seconds: the board reads only visibility, where they are Community tickets like any
other. The real dev server (its SQL visibility, which cannot ORDER BY) answers.

A board past ``BOARD_READ_WHOLE`` tickets is read a window at a time (``board_page``);
the second flood below, of every kind of board ticket, makes the board do that at a few
rows a page (``whole=0``) instead of opening thousands of tickets."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment

from contract import client as visibility
from contract import search_attributes as sa
from contract.models import TicketState
from harness.processes import eventually
from harness.serve import serve
from harness.temporal import connect
from intake.core import CLI, intake
from service.app import create_app
from service.auth import Settings
from service.pages import BOARD_PAGE_SIZE
from tests.conftest import Stack, busy_visibility_server, running_stack

AGENT = "agent-flood-0123456789"
FLOOD = 600


async def sign_in(http: httpx.AsyncClient, token: str) -> None:
    """Sign in as a browser does: the sign-in form's hidden fields, then the token."""
    form = (await http.get("/board/login")).text
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    fields = {name: html.unescape(value) for name, value in hidden.items()}
    response = await http.post("/board/login", data={**fields, "token": token})
    assert response.status_code == 303, response.text


def rows(page: str) -> list[str]:
    return re.findall(r'<tr id="row-[^"]+" data-ticket="([^"]+)"', page)


async def open_ticket(client: Client, queue: str, **data: str) -> str:
    ticket_id = data.setdefault("ticket_id", f"F-{uuid.uuid4().hex[:12]}")
    await intake(client, {"subject": "flood", **data}, CLI, queue=queue)
    return ticket_id


@dataclass
class Flooded:
    stack: Stack
    sev1: str
    flood: list[str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def flooded(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Flooded]:
    """An open sev1 on a worker, then ``FLOOD`` newer Community tickets."""
    ledger = tmp_path_factory.mktemp("board") / "l.sqlite3"
    async with running_stack(dev_server, ledger) as stack:
        client = stack.client
        sev1 = await open_ticket(
            client, stack.task_queue, customer_id="acme", tier="premium", severity="sev1"
        )
        stack.opened.append(f"ticket-{sev1}")
        idle = f"tq-flood-{uuid.uuid4()}"  # no worker: they stay open, as visibility lists them
        gate = asyncio.Semaphore(40)

        async def community() -> str:
            async with gate:
                return await open_ticket(client, idle, customer_id="community", severity="sev4")

        flood = list(await asyncio.gather(*(community() for _ in range(FLOOD))))
        # Not added to stack.opened: they never run, and the module's dev server (and the
        # flood with it) goes at the end of the module; terminating 600 one by one took minutes.
        clocked, others = visibility.board_queries()

        async def all_listed() -> bool:
            return (await client.count_workflows(others)).count >= FLOOD and (
                await client.count_workflows(clocked)
            ).count >= 1

        await eventually("the flood in visibility", all_listed, 60, every=0.5)
        yield Flooded(stack, sev1, flood)


async def test_a_flood_of_new_community_tickets_does_not_hide_an_older_open_sev1(
    flooded: Flooded, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No worker answers these tickets' status: each page would wait the whole 3 s for the
    # waits on the customer it shows (none here) before it renders.
    monkeypatch.setattr(visibility, "BOARD_STATUS_TIMEOUT", timedelta(milliseconds=50))
    client, sev1, flood = flooded.stack.client, flooded.sev1, flooded.flood
    settings = Settings(agent_tokens={AGENT: "ana"})
    app = create_app(client=client, settings=settings, queue=flooded.stack.task_queue)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        await sign_in(http, AGENT)
        board = await http.get("/board")
        assert board.status_code == 200, board.text
        first = rows(board.text)
        # The older sev1, whose SLA clock runs, is the board's first row, above the flood.
        assert first[0] == sev1
        assert len(first) == BOARD_PAGE_SIZE
        assert f"({FLOOD + 1})" in board.text  # every open ticket counted
        pages = -(-(FLOOD + 1) // BOARD_PAGE_SIZE)
        assert f"Page 1 of {pages}" in board.text

        # Paged across all of them: every ticket exactly once, the sev1 on page 1 only.
        seen = list(first)
        for number in range(2, pages + 1):
            page = await http.get("/board", params={"page": number})
            assert page.status_code == 200
            seen += rows(page.text)
        assert sorted(seen) == sorted([sev1, *flood])
        last = await http.get("/board", params={"page": pages + 5})  # past the end: the last
        assert f"Page {pages} of {pages}" in last.text

        refused = await http.get("/board", params={"page": "0"})
        assert refused.status_code == 422 and "page" in refused.text

    # The same through the listing itself: Community tickets oldest first after the clock.
    shown = await visibility.board_page(client, 1, 10)
    assert shown.total == FLOOD + 1 and shown.read == FLOOD + 1  # one read: under 1000
    assert shown.tickets[0].ticket_id == sev1
    assert all(t.state is TicketState.OPEN for t in shown.tickets)
    opened = [t.opened_at for t in shown.tickets[1:]]
    assert opened == sorted(opened)
    # Read a window at a time instead, the first page is the same, from a handful of rows.
    windowed = await visibility.board_page(client, 1, 10, whole=0)
    assert [t.ticket_id for t in windowed.tickets] == [t.ticket_id for t in shown.tickets]
    assert windowed.total == FLOOD + 1 and windowed.read <= 10 + 2 * 10


# --- the second flood: every kind of board ticket, read a window at a time -------------

NOW = datetime.now(UTC).replace(microsecond=0)
# Tickets that share one deadline to the microsecond: a window never cuts between them.
TIED = 8


@dataclass
class Crowded:
    client: Client
    urgent: str  # the oldest ticket with a deadline, and the most urgent (overdue)
    oldest_unclocked: str  # the oldest open ticket without a deadline
    board: set[str] = field(default_factory=set)  # every ticket the board must show


def attributes(state: str, **datetimes: datetime) -> TypedSearchAttributes:
    keys = {"due": sa.RESPONSE_DUE_AT, "next": sa.SLA_NEXT_DEADLINE}
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.TICKET_STATE, state),
            SearchAttributePair(sa.CUSTOMER_ID, "flood"),
            *(SearchAttributePair(keys[name], value) for name, value in datetimes.items()),
        ]
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def crowded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Crowded]:
    """A server of its own (the other flood's tickets stay out of this board), whose
    visibility answers more than 10 requests a second (a page takes a few counts), with an
    open overdue ticket and an open ticket without a deadline, then a newer flood of each
    kind the board shows, and tickets it does not. No worker: visibility only."""
    async with busy_visibility_server(tmp_path_factory.mktemp("crowded")) as server:
        client = await connect(server.address)
        queue = f"tq-crowd-{uuid.uuid4()}"
        gate = asyncio.Semaphore(40)

        async def start(ticket_id: str, found: TypedSearchAttributes) -> str:
            async with gate:
                await client.start_workflow(
                    "SupportTicket",
                    id=f"ticket-{ticket_id}",
                    task_queue=queue,
                    search_attributes=found,
                )
            return ticket_id

        crowd = Crowded(
            client,
            await start("urgent", attributes("open", due=NOW - timedelta(minutes=5))),
            await start("oldest-unclocked", attributes("open")),
        )
        await asyncio.sleep(0.01)  # the flood starts after both, to the microsecond
        minute, second = timedelta(minutes=1), timedelta(seconds=1)
        kinds = {
            # open, due later than the urgent one (TIED of them on one instant)
            **{f"due-{i}": attributes("open", due=NOW + i * minute) for i in range(30)},
            **{
                f"tied-{i}": attributes("open", due=NOW + 7 * minute + 40 * second)
                for i in range(TIED)
            },
            # a target's nearest deadline, open or acknowledged, interleaved with the above
            **{
                f"next-{i}": attributes(
                    "open" if i % 2 else "acknowledged",
                    due=NOW - 9 * minute,  # not the key: the nearest target's deadline is
                    next=NOW + (3 * i + 1) * minute + 20 * second,
                )
                for i in range(20)
            },
            **{f"community-{i}": attributes("open") for i in range(60)},
            **{
                f"answered-{i}": attributes("acknowledged", due=NOW + i * minute) for i in range(15)
            },
            **{f"acked-{i}": attributes("acknowledged") for i in range(10)},
        }
        crowd.board = {crowd.urgent, crowd.oldest_unclocked, *kinds}
        for state in ("resolved", "routed_to_sow", "closed"):  # not on the board
            kinds |= {f"{state}-{i}": attributes(state, due=NOW - 60 * minute) for i in range(5)}
        await asyncio.gather(*(start(ticket_id, found) for ticket_id, found in kinds.items()))

        async def all_listed() -> bool:
            return (await client.count_workflows(visibility.board_base())).count == len(crowd.board)

        await eventually("the second flood in visibility", all_listed, 60, every=0.2)
        yield crowd


async def test_a_flood_of_every_kind_read_by_windows_shows_each_open_ticket_once_in_order(
    crowded: Crowded,
) -> None:
    """Newer tickets with and without deadlines, many pages of them: the overdue ticket is
    the first row of page 1 whatever the page size, the oldest open ticket without a
    deadline leads the ones without, and paging shows every board ticket exactly once, in
    the order of the whole board sorted at once. Each page reads a window about its size."""
    client = crowded.client
    everything = visibility.board_order(
        [visibility.summary_of(e) async for e in client.list_workflows(visibility.board_base())]
    )
    order = [t.ticket_id for t in everything]
    assert set(order) == crowded.board and len(order) == len(crowded.board)
    for per_page, slack in ((10, None), (7, 0), (25, 3)):
        first = await visibility.board_page(client, 1, per_page, whole=0, slack=slack)
        assert first.tickets[0].ticket_id == crowded.urgent
        assert first.total == len(crowded.board)
        assert first.pages == -(-len(crowded.board) // per_page) > 2
        seen: list[str] = []
        for number in range(1, first.pages + 1):
            page = await visibility.board_page(client, number, per_page, whole=0, slack=slack)
            assert page.page == number and len(page.tickets) <= per_page
            seen += [t.ticket_id for t in page.tickets]
            # What was read: the page, ``slack`` on each side, at most the tied tickets more.
            assert page.read <= per_page + 2 * (per_page if slack is None else slack) + TIED
        assert Counter(seen) == Counter(crowded.board)  # each board ticket exactly once
        assert seen == order
        by_id = {t.ticket_id: t for t in everything}
        unclocked = [ticket_id for ticket_id in seen if by_id[ticket_id].deadline is None]
        assert unclocked[0] == crowded.oldest_unclocked


async def test_the_board_page_arguments_are_checked() -> None:
    cases = (
        (0, 10, {}, "page"),
        (1, 0, {}, "per_page"),
        (1, 501, {}, "per_page"),
        (True, 1, {}, "page"),
        (1, 10, {"whole": -1}, "whole"),
        (1, 10, {"slack": -1}, "slack"),
    )
    for page, per_page, more, name in cases:
        try:
            await visibility.board_page(None, page, per_page, **more)  # type: ignore[arg-type]
        except visibility.InvalidArgument as err:
            assert str(err).startswith(f"{name}:")
        else:
            raise AssertionError(f"page={page} per_page={per_page} {more} accepted")
