"""Issue 15, part 2: the agent board cannot be flooded. The attack: 600 Community tickets
opened after an open sev1 (the board used to read the newest 500 tickets in any state and
only then keep the open ones, so the sev1 fell off it). The board now reads every open or
acknowledged ticket by the ``TicketState`` search attribute, sorts them by time to breach
and pages the result: the sev1 stays first.

The sev1 is a real ticket on a worker; the flood is opened through the same intake core
(every search attribute is set at start) on a task queue no worker polls, so 600 tickets
cost seconds: the board reads only visibility, where they are Community tickets like any
other. The real dev server (its SQL visibility, which cannot ORDER BY) answers."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contract import client as visibility
from contract.models import TicketState
from harness.processes import eventually
from harness.serve import serve
from intake.core import CLI, intake
from service.app import create_app
from service.auth import Settings
from service.pages import BOARD_PAGE_SIZE
from tests.conftest import Stack, running_stack

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
    flooded: Flooded,
) -> None:
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
    shown = await visibility.board_page(client, 1, 10, read_page=100)
    assert shown.total == FLOOD + 1 and not shown.truncated
    assert shown.tickets[0].ticket_id == sev1
    assert all(t.state is TicketState.OPEN for t in shown.tickets)
    opened = [t.opened_at for t in shown.tickets[1:]]
    assert opened == sorted(opened)


async def test_more_open_tickets_than_one_view_reads_keeps_the_clocked_ones_first(
    flooded: Flooded,
) -> None:
    """Past ``most`` tickets the board says so, and the tickets whose clock runs (read in
    a query of their own, first) still lead it: the cap cannot be filled by a flood."""
    clocked, _ = visibility.board_queries()
    client = flooded.stack.client
    running = (await client.count_workflows(clocked)).count
    assert running >= 1
    shown = await visibility.board_page(client, 1, 10, read_page=50, most=running + 5)
    assert shown.truncated and shown.total == running + 5
    assert all(t.clock_running for t in shown.tickets[:running])


async def test_the_board_page_arguments_are_checked() -> None:
    cases = ((0, 10, "page"), (1, 0, "per_page"), (1, 501, "per_page"), (True, 1, "page"))
    for page, per_page, name in cases:
        try:
            await visibility.board_page(None, page, per_page)  # type: ignore[arg-type]
        except visibility.InvalidArgument as err:
            assert str(err).startswith(f"{name}:")
        else:
            raise AssertionError(f"page={page} per_page={per_page} accepted")
