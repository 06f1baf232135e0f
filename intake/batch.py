"""Open a batch of tickets: a JSON array or JSON lines, through the intake core.

``open_batch`` validates and entitles every line first, reporting each bad one with its
line number, then connects (only if a line is good) and opens the good ones, a bounded
number at a time. A ticket id repeated within the batch is opened once: its later lines
report the ticket the first one opened. One line that cannot be opened (a conflict,
Temporal refusing) never stops the others.

``starter.py batch`` is the command line over it (docs/intake.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from temporalio.client import Client
from temporalio.service import RPCError

from intake.core import (
    CLI,
    IntakeRefused,
    InvalidTicket,
    Prepared,
    Promise,
    TicketConflict,
    load_json,
    policy_or_refuse,
    prepare,
    start,
)

BATCH_CONCURRENCY = 32


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


class Progress(Protocol):
    """What ``open_batch`` tells of the tickets it starts (``tqdm`` is one)."""

    def update(self) -> object: ...

    def close(self) -> object: ...


class _Quiet:
    def update(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class BatchOutcome:
    # The promise of every line opened or found already there: in line order, an id's
    # repeats last.
    results: list[Promise] = field(default_factory=list)
    # Lines that are not a ticket this path may open, or whose id belongs to another ticket.
    invalid: int = 0
    # Lines Temporal did not take (reported; the rest of the batch went on).
    failed: int = 0

    @property
    def opened(self) -> int:
        return sum(r.created for r in self.results)


async def open_batch(
    client: Client | Callable[[], Awaitable[Client]],
    data: bytes,
    problem: Callable[[int, str], None],
    progress: Callable[[int], Progress] = lambda total: _Quiet(),
) -> BatchOutcome:
    """Open the batch ``data``. ``client`` may be a connect function, called only if there
    is something to open. ``problem(line, text)`` is told of each bad or failed line as it
    is found; ``progress(total)`` makes what is told of each ticket started.

    PolicyUnavailable (nothing was opened) when the policy file cannot be loaded."""
    policy = policy_or_refuse()
    outcome = BatchOutcome()
    valid: list[tuple[int, Prepared]] = []
    for number, item in read_batch(data):
        try:
            if isinstance(item, InvalidTicket):
                raise item
            valid.append((number, prepare(item, CLI, policy=policy)))
        except (InvalidTicket, IntakeRefused) as refused:
            outcome.invalid += 1
            for text in refused.problems:
                problem(number, text)
    if valid and not isinstance(client, Client):
        client = await client()
    semaphore = asyncio.Semaphore(BATCH_CONCURRENCY)
    shown = progress(len(valid))

    async def one(number: int, prepared: Prepared) -> Promise | None:
        async with semaphore:
            assert isinstance(client, Client)
            try:
                result: Promise | None = await start(client, prepared)
            except TicketConflict as conflict:
                outcome.invalid += 1
                problem(number, str(conflict))
                result = None
            except RPCError as err:
                # Reported with its line; the rest of the batch goes on.
                outcome.failed += 1
                problem(number, f"not opened: {err}")
                result = None
            shown.update()
            return result

    # First occurrences concurrently, then repeats of an id within the batch, so a repeat
    # always reports the ticket its earlier line opened.
    firsts: dict[str, tuple[int, Prepared]] = {}
    repeats: list[tuple[int, Prepared]] = []
    for number, prepared in valid:
        if prepared.ticket.ticket_id in firsts:
            repeats.append((number, prepared))
        else:
            firsts[prepared.ticket.ticket_id] = (number, prepared)
    outcomes = list(await asyncio.gather(*(one(n, p) for n, p in firsts.values())))
    outcomes += [await one(n, p) for n, p in repeats]
    shown.close()
    outcome.results = [r for r in outcomes if r is not None]
    return outcome
