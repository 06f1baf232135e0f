"""Fault drill: stop the Temporal dev server mid-flight and start it again on its SQLite file.

Opens ``--tickets`` Premium tickets, then takes the server down twice while their
escalations fall due: first a clean stop (SIGTERM) while warnings fall due, then a crash
(SIGKILL) while breaches fall due; each time it is started again on the same SQLite file
and ports. The worker process runs throughout. Proves:

- every open ticket resumes: after each restart, every ticket answers its ``status``
  query;
- timers that fell due while the server was down fire after the restart (their delay:
  delivery instant - max(due instant, restart instant));
- nothing is lost or duplicated at the sink (per delivery key) or in the SLA ledger.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file (drills/server_restart.py): the project's imports
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drills.policy import DrillPolicy
from drills.stack import DrillError, Stack, running_stack, say, stop_and_restart
from drills.tickets import (
    Paced,
    bounded,
    final_statuses,
    handle,
    open_tickets,
    resolve_when_breached,
)
from drills.verdict import (
    Verdict,
    delay_figures,
    recovery_delays,
    recovery_problems,
    run_drill,
    seconds,
    superseded,
    tally,
)

NAME = "server-restart"


@dataclass(frozen=True)
class Outage:
    after: float  # seconds after the first ticket opened
    down: float
    signal: signal.Signals


@dataclass(frozen=True)
class Profile(Paced):
    outages: tuple[Outage, ...]

    @property
    def policy(self) -> DrillPolicy:
        return DrillPolicy(response_target=self.response_target, warning_share=0.25)


# After intake (the drill's own client opens tickets), a clean stop while warnings (at a
# quarter of the target) fall due, then a crash while breaches do.
FULL = Profile(
    300,
    timedelta(seconds=80),
    45,
    (Outage(48, 15, signal.SIGTERM), Outage(95, 15, signal.SIGKILL)),
)
SHORT = Profile(
    20,
    timedelta(seconds=20),
    4,
    (Outage(5, 3, signal.SIGTERM), Outage(20, 3, signal.SIGKILL)),
)


@dataclass
class Restart:
    stopped: float
    restarted: float
    queried_after: float  # seconds from the restart until every ticket answered


async def all_answer(stack: Stack, ids: list[str], seconds: float) -> float:
    """Wait until every ticket answers its ``status`` query; how long that took."""
    began = time.monotonic()
    waiting = list(ids)
    while waiting:
        answers = await bounded(_answers(stack, t) for t in waiting)
        waiting = [t for t, ok in zip(waiting, answers, strict=True) if not ok]
        if waiting and time.monotonic() - began > seconds:
            raise DrillError(f"{len(waiting)} tickets did not answer their status query")
        if waiting:
            await asyncio.sleep(0.5)
    return time.monotonic() - began


async def _answers(stack: Stack, ticket_id: str) -> bool:
    try:
        await handle(stack, ticket_id).query("status")
    except Exception:  # the server is still coming up: ask again
        return False
    return True


async def outage(stack: Stack, began: float, planned: Outage, ids: list[str]) -> Restart:
    stopped, restarted = await stop_and_restart(
        stack, stack.server, "dev server", planned.signal, began + planned.after, planned.down
    )
    took = await all_answer(stack, ids, seconds=120)
    say(f"all tickets answered {took:.1f} s after the restart")
    return Restart(stopped, restarted, took)


async def drill(profile: Profile, keep: bool) -> Verdict:
    verdict = Verdict(NAME)
    ids = [f"SR-{i:05d}" for i in range(profile.tickets)]
    async with running_stack("server-restart", profile.policy, keep=keep) as stack:
        began = time.monotonic()
        await open_tickets(stack, ids, per_second=profile.per_second)
        say(f"opened {len(ids)} tickets in {time.monotonic() - began:.1f} s")
        restarts = [await outage(stack, began, planned, ids) for planned in profile.outages]
        await resolve_when_breached(stack, ids, deadline=profile.last_breach(began) + 120)
        statuses = await final_statuses(stack, ids, seconds=300)
        counted = await tally(statuses, stack.sink, stack.ledger_url)
        delays = [d for r in restarts for d in recovery_delays(stack.sink, r.stopped, r.restarted)]
    verdict.figures = {
        "tickets": len(ids),
        "restarts": "+".join(o.signal.name.removeprefix("SIG").lower() for o in profile.outages),
        **counted.figures(),
        "superseded": superseded(statuses),
        "ledger_events": counted.ledger.events,
        "queries_ok_after": "/".join(seconds(r.queried_after) for r in restarts),
        **delay_figures(delays, "due_while_down", "fire_delay_p50"),
    }
    verdict.problems = recovery_problems(counted, statuses, delays, "the server")
    return verdict


def main(argv: list[str] | None = None) -> int:
    return run_drill(NAME, __doc__, (FULL, SHORT), drill, argv)


if __name__ == "__main__":
    sys.exit(main())
