"""Fault drill: the SLA ledger's database goes away while tickets open and escalate.

The worker's ledger is a scratch PostgreSQL database reached through a TCP proxy that the
drill owns. Opens ``--tickets`` Premium tickets, cuts the proxy (open connections dropped,
new ones refused) while tickets open, warn and breach, then restores it. Proves:

- escalations still go out on time while the ledger is down, and the retries that follow
  send nothing twice (per delivery key at the sink);
- once the ledger is back, every SLA event the tickets report is written, exactly once
  (the ledger's ``sla_events`` against each ticket's history), and how long after the
  recovery the backlog was in (``caught_up``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file (drills/ledger_outage.py): the project's imports
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from drills.policy import DrillPolicy
from drills.stack import running_stack, say
from drills.tickets import Paced, final_statuses, open_tickets, resolve_when_breached
from drills.verdict import (
    Tally,
    Verdict,
    count_deliveries,
    count_ledger,
    run_drill,
    seconds,
    superseded,
)
from harness.postgres import TcpProxy, scratch_database
from ledger.schema import sla_events
from ledger.store import SqlLedger

NAME = "ledger-outage"


@dataclass(frozen=True)
class Profile(Paced):
    outage_after: float  # seconds after the first ticket opened
    down_seconds: float

    @property
    def policy(self) -> DrillPolicy:
        return DrillPolicy(response_target=self.response_target)


# The ledger is down while the last tickets open, warnings fall due and breaches begin.
FULL = Profile(300, timedelta(seconds=60), 45, 40, 45)
SHORT = Profile(15, timedelta(seconds=12), 4, 3, 12)


async def cut_ledger(proxy: TcpProxy, began: float, profile: Profile) -> tuple[float, float]:
    """Cut the ledger at its planned instant and restore it; (cut, restored), wall clock."""
    await asyncio.sleep(max(0.0, began + profile.outage_after - time.monotonic()))
    await proxy.cut()
    cut = time.time()
    say(f"ledger cut for {profile.down_seconds:g} s")
    await asyncio.sleep(profile.down_seconds)
    await proxy.restore()
    say("ledger back")
    return cut, time.time()


@dataclass
class Backlog:
    written_late: int  # events that happened before the recovery, written after the cut
    caught_up: float  # seconds from the recovery until the last of them was written


async def backlog(url: str, cut: float, restored: float) -> Backlog:
    ledger = SqlLedger.from_url(url)
    before = datetime.fromtimestamp(restored, UTC)
    late = (sla_events.c.at < before) & (
        sla_events.c.recorded_at >= datetime.fromtimestamp(cut, UTC)
    )
    try:
        async with ledger.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.max(sla_events.c.recorded_at)).where(late)
                )
            ).one()
    finally:
        await ledger.close()
    count, last = row
    return Backlog(count, max(0.0, last.timestamp() - restored) if last else 0.0)


async def drill(profile: Profile, keep: bool) -> Verdict:
    verdict = Verdict(NAME)
    ids = [f"LO-{i:05d}" for i in range(profile.tickets)]
    async with scratch_database(prefix="support_drill") as database:
        assert database.host is not None and database.port is not None
        proxy = TcpProxy(database.host, database.port)
        await proxy.restore()
        direct = database.render_as_string(hide_password=False)
        via_proxy = proxy.url(database).render_as_string(hide_password=False)
        try:
            async with running_stack(
                NAME, profile.policy, ledger_url=via_proxy, keep=keep
            ) as stack:
                began = time.monotonic()
                outage = asyncio.create_task(cut_ledger(proxy, began, profile))
                await open_tickets(stack, ids, per_second=profile.per_second)
                cut, restored = await outage
                deadline = profile.last_breach(began) + 120
                await resolve_when_breached(stack, ids, deadline=deadline)
                statuses = await final_statuses(stack, ids, seconds=300)
                deliveries = count_deliveries(statuses, stack.sink)
        finally:
            await proxy.close()
        # The ledger is counted directly, once the proxy is gone.
        counted = Tally(deliveries, await count_ledger(statuses, direct))
        late = await backlog(direct, cut, restored)
    verdict.figures = {
        "tickets": len(ids),
        "escalations": counted.deliveries.expected,
        "delivered": counted.deliveries.delivered,
        "ledger_events": counted.ledger.events,
        "lost": counted.lost,
        "duplicated": counted.duplicated,
        "superseded": superseded(statuses),
        "outage": seconds(restored - cut),
        "written_late": late.written_late,
        "caught_up": seconds(late.caught_up),
    }
    verdict.problems = counted.problems()
    if not late.written_late:
        verdict.problems.append("no ledger write had to wait for the outage to end")
    return verdict


def main(argv: list[str] | None = None) -> int:
    return run_drill(NAME, __doc__, (FULL, SHORT), drill, argv)


if __name__ == "__main__":
    sys.exit(main())
