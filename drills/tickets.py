"""Tickets in a drill: opened through the intake code, resolved, read back.

Drill tickets are Premium SEV2 incidents of customer ``drill-co``; each drill gives them
its own id prefix. A drill resolves a ticket once its breach reached the sink (so it sends
no repeats), then reads every ticket's final status (the workflow's result).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import WorkflowHandle, WorkflowQueryFailedError

from contract.models import Resolve, Severity, TicketInput, TicketStatus, Tier
from drills.stack import DrillError, Stack, say
from intake.core import open_ticket

CUSTOMER = "drill-co"
T = TypeVar("T")


@dataclass(frozen=True)
class Paced:
    """The tickets of a drill's profile: ``tickets`` opened evenly over ``open_seconds``,
    each owed a response within ``response_target`` (a drill adds what its fault needs)."""

    tickets: int
    response_target: timedelta
    open_seconds: float

    @property
    def per_second(self) -> float:
        return self.tickets / self.open_seconds

    def last_breach(self, began: float) -> float:
        """The monotonic instant the last ticket's breach falls due, intake having begun
        at ``began``."""
        return began + self.open_seconds + self.response_target.total_seconds()


def drill_ticket(ticket_id: str) -> TicketInput:
    return TicketInput(
        ticket_id=ticket_id,
        customer_id=CUSTOMER,
        tier=Tier.PREMIUM,
        severity=Severity.SEV2,
        subject="Drill: API returns 500",
        category="incident",
        intake_channel="api",
    )


async def bounded(jobs: Iterable[Awaitable[T]], limit: int = 32) -> list[T]:
    """Run ``jobs`` with at most ``limit`` at once; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with semaphore:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def open_tickets(stack: Stack, ids: list[str], per_second: float) -> dict[str, float]:
    """Open ``ids`` through the intake code (``intake.core.open_ticket``), paced at
    ``per_second``; returns each ticket's wall-clock open instant."""
    began = time.monotonic()
    opened: dict[str, float] = {}

    async def one(index: int, ticket_id: str) -> None:
        await asyncio.sleep(max(0.0, began + index / per_second - time.monotonic()))
        result = await open_ticket(stack.client, drill_ticket(ticket_id), stack.queue)
        if not result.created:
            raise DrillError(f"ticket {ticket_id} already existed")
        opened[ticket_id] = time.time()

    await bounded((one(i, t) for i, t in enumerate(ids)), limit=64)
    return opened


def handle(stack: Stack, ticket_id: str) -> WorkflowHandle[Any, TicketStatus]:
    return stack.client.get_workflow_handle(f"ticket-{ticket_id}", result_type=TicketStatus)


async def resolve(stack: Stack, ids: Iterable[str], by: str = "drill") -> None:
    await bounded(
        handle(stack, t).signal("resolve", Resolve(by=by, summary="drill over")) for t in ids
    )


async def final_statuses(stack: Stack, ids: list[str], seconds: float) -> dict[str, TicketStatus]:
    """Every ticket's result (its status in its final state), once all have completed."""
    results = await asyncio.wait_for(
        bounded(handle(stack, t).result() for t in ids), timeout=seconds
    )
    return dict(zip(ids, results, strict=True))


async def resolve_when_breached(stack: Stack, ids: list[str], deadline: float) -> None:
    """Resolve each ticket once its breach reached the sink (so it sends no repeats); the
    rest at monotonic instant ``deadline``."""
    waiting = set(ids)
    while waiting and time.monotonic() < deadline:
        breached = {
            key.split("/")[0].removeprefix("ticket-")
            for key in stack.sink.stored_per_key()
            if "/breach/" in key
        }
        done = waiting & breached
        if done:
            await resolve(stack, sorted(done))
            waiting -= done
        await asyncio.sleep(0.5)
    if waiting:
        say(f"{len(waiting)} tickets saw no breach delivery by the deadline; resolving them")
        await resolve(stack, sorted(waiting))


async def planned_status(stack: Stack, ticket_id: str, seconds: float = 30) -> TicketStatus:
    """The ticket's ``status`` once it has resolved its plan (deadlines known)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            status = await handle(stack, ticket_id).query("status", result_type=TicketStatus)
            if status.policy_version is not None:
                return status
        except WorkflowQueryFailedError:
            pass  # still starting
        if time.monotonic() > deadline:
            raise DrillError(f"ticket {ticket_id} did not resolve its plan in {seconds:g} s")
        await asyncio.sleep(0.1)
