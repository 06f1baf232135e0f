"""Fault drill: kill -9 the worker while tickets are open and escalations fall due.

Opens ``--tickets`` Premium tickets (paced, so their warnings and breaches fall due spread
over about a minute), kills ``worker.py`` with SIGKILL while warnings and breaches are
falling due, leaves it down, then starts a new worker process. Each ticket is resolved once
its breach reached the sink. Proves, against the real dev server, worker process and sink:

- every warning and breach the tickets fired reached the sink exactly once per delivery
  key (ticket + step + recipient): none lost, none duplicated, none unexpected; except
  that a message the sink stored just before the kill, whose delivery the dying worker
  had not yet logged, is sent once more by the new worker with the same key
  (``resent_after_kill``: a sink honouring ``Idempotency-Key`` keeps one; any other
  repeat is a duplicate and fails the drill);
- the SLA ledger holds each event the tickets report exactly once;
- how long escalations that fell due while the worker was down (or were in flight when
  it died) waited after the restart: delivery instant - max(due instant, restart instant).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file (drills/worker_kill.py): the project's imports
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drills.policy import DrillPolicy
from drills.stack import running_stack, say, stop_and_restart
from drills.tickets import Paced, final_statuses, open_tickets, resolve_when_breached
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

NAME = "worker-kill"


@dataclass(frozen=True)
class Profile(Paced):
    warning_share: float
    kill_after: float  # seconds after the first ticket opened
    down_seconds: float

    @property
    def policy(self) -> DrillPolicy:
        return DrillPolicy(response_target=self.response_target, warning_share=self.warning_share)


# Intake is paced within what one worker sustains on 2 cores; the kill comes while
# warnings (of the tickets opened last) and breaches (of the first) fall due, far enough
# apart that a restart does not make one supersede the other.
FULL = Profile(1000, timedelta(seconds=150), 100, 0.6, 160, 10)
SHORT = Profile(20, timedelta(seconds=12), 3, 0.5, 10, 3)


async def drill(profile: Profile, keep: bool) -> Verdict:
    verdict = Verdict(NAME)
    ids = [f"WK-{i:05d}" for i in range(profile.tickets)]
    async with running_stack("worker-kill", profile.policy, keep=keep) as stack:
        began = time.monotonic()
        outage = asyncio.create_task(
            stop_and_restart(
                stack,
                stack.worker,
                "worker",
                signal.SIGKILL,
                began + profile.kill_after,
                profile.down_seconds,
            )
        )
        await open_tickets(stack, ids, per_second=profile.per_second)
        say(f"opened {len(ids)} tickets in {time.monotonic() - began:.1f} s")
        killed, restarted = await outage
        back = began + profile.kill_after + profile.down_seconds
        await resolve_when_breached(
            stack, ids, deadline=max(profile.last_breach(began), back) + 120
        )
        statuses = await final_statuses(stack, ids, seconds=300)
        counted = await tally(statuses, stack.sink, stack.ledger_url, crash=(killed, restarted))
        delays = recovery_delays(stack.sink, killed, restarted)
    verdict.figures = {
        "tickets": len(ids),
        **counted.figures(),
        "resent_after_kill": counted.deliveries.resent,
        "superseded": superseded(statuses),
        "ledger_events": counted.ledger.events,
        "down": seconds(restarted - killed),
        **delay_figures(delays, "overdue_at_restart", "restart_delay_p50"),
    }
    verdict.problems = recovery_problems(counted, statuses, delays, "the worker")
    return verdict


def main(argv: list[str] | None = None) -> int:
    return run_drill(NAME, __doc__, (FULL, SHORT), drill, argv)


if __name__ == "__main__":
    sys.exit(main())
