"""Fault drill: racing and invalid agent actions.

Against the real dev server, worker, HTTP service and CLIs:

- **ack vs breach**: ``--tickets`` tickets are acknowledged within a fraction of a second
  of their deadline (spread evenly before and after it), so acknowledgements and breach
  timers land together. Each ticket ends with one consistent outcome: acknowledged in
  time (not breached, no breach notification) or late (breached, and at most one breach
  notification per recipient: exactly one when the breach step ran before the
  acknowledgement was applied, none when the acknowledgement was applied first); the
  status, the ledger's ticket row and the ``SlaBreached`` search attribute agree.
- **duplicate acks**: the same ticket acknowledged five times at once, on half of the
  tickets as three raw signals and two HTTP API calls, on the other half as five API
  calls (the API reads the ticket before it signals, so raw signals usually overtake it):
  one ``acknowledged``, the rest ``acknowledge_repeated``; an API call that sees the
  ticket already acknowledged is refused with 409 and who acknowledged it.
- **ack vs resolve**: both at once: resolved, acknowledged exactly once.
- **closed tickets**: ack / resolve of a resolved ticket through ``python -m ops``, the HTTP API
  and the ``temporal`` CLI, a second intake through ``starter.py``, and an unknown ticket:
  each refused (or reported) with a clear message, which is asserted.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file (drills/races.py): the project's imports
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from contract import search_attributes as sa
from contract.models import Acknowledge, Resolve, StepKind, TicketStatus
from drills.policy import DrillPolicy
from drills.stack import DrillService, Stack, running_stack, say
from drills.tickets import (
    bounded,
    final_statuses,
    handle,
    open_tickets,
    planned_status,
    resolve,
)
from drills.verdict import Verdict, run_drill, tally
from harness.processes import ROOT, clean_env
from harness.temporal import TEMPORAL
from ledger.store import SqlLedger

NAME = "races"
RAW_ACKS, API_ACKS = 3, 2


@dataclass(frozen=True)
class Profile:
    tickets: int  # acknowledged at their deadline
    others: int  # tickets for duplicate acks, and as many for ack vs resolve
    response_target: timedelta
    spread: float  # acknowledgements land within this many seconds of the deadline

    @property
    def policy(self) -> DrillPolicy:
        return DrillPolicy(response_target=self.response_target)


FULL = Profile(100, 20, timedelta(seconds=20), 0.3)
SHORT = Profile(12, 3, timedelta(seconds=10), 0.3)


# --- ack vs breach ------------------------------------------------------------------------


async def ack_at_deadline(stack: Stack, ticket_id: str, offset: float) -> None:
    """Acknowledge ``offset`` seconds after the ticket's response deadline."""
    status = await planned_status(stack, ticket_id)
    assert status.response_due_at is not None
    await asyncio.sleep(max(0.0, status.response_due_at.timestamp() + offset - time.time()))
    await handle(stack, ticket_id).signal("acknowledge", Acknowledge(agent="racer"))


async def race_outcome(
    stack: Stack, ledger: SqlLedger, status: TicketStatus, breach_sent: int
) -> tuple[str, list[str]]:
    """The ticket's outcome (met, breached_notified, breached_unnotified) and any
    inconsistency between status, sink, ledger row and search attribute."""
    ticket, due, acked = status.ticket_id, status.response_due_at, status.acknowledged_at
    fired = sum(1 for e in status.escalations if e.kind is StepKind.BREACH)
    problems = []
    if due is None or acked is None:
        return "unacknowledged", [f"{ticket}: never acknowledged"]
    if status.response_breached:
        outcome = "breached_notified" if fired else "breached_unnotified"
        if acked <= due:
            problems.append(f"{ticket}: breached, yet acknowledged in time ({acked} <= {due})")
    else:
        outcome = "met"
        if acked > due or fired:
            problems.append(
                f"{ticket}: met, yet acknowledged {acked} (due {due}), breach fired {fired}"
            )
    if breach_sent != fired or fired > 1:
        problems.append(f"{ticket}: breach fired {fired} times, {breach_sent} at the sink")
    row = await ledger.outcome(ticket)
    if row is None or row.response_breached != status.response_breached:
        problems.append(f"{ticket}: ledger row says breached={row and row.response_breached}")
    attribute = (await handle(stack, ticket).describe()).typed_search_attributes.get(
        sa.SLA_BREACHED
    )
    if attribute != status.response_breached:
        problems.append(f"{ticket}: SlaBreached={attribute}, status {status.response_breached}")
    return outcome, problems


def around_zero(count: int, spread: float) -> list[float]:
    """``count`` offsets evenly from ``-spread`` to ``+spread`` seconds."""
    steps = max(1, count - 1)
    return [-spread + 2 * spread * i / steps for i in range(count)]


async def judge_races(stack: Stack, statuses: list[TicketStatus]) -> list[tuple[str, list[str]]]:
    sent = stack.sink.stored_per_key()
    ledger = SqlLedger.from_url(stack.ledger_url)
    try:
        return [
            await race_outcome(stack, ledger, s, sent[f"ticket-{s.ticket_id}/breach/duty-manager"])
            for s in statuses
        ]
    finally:
        await ledger.close()


# --- duplicate acks, ack vs resolve ---------------------------------------------------------


async def api_ack(http: httpx.AsyncClient, service: DrillService, ticket_id: str) -> httpx.Response:
    return await http.post(
        f"{service.url}/api/tickets/{ticket_id}/ack",
        headers={"Authorization": f"Bearer {service.token}"},
        json={"note": "drill"},
    )


@dataclass
class AckBurst:
    ticket_id: str
    sent: int  # acknowledgements the ticket was sent (raw, and API calls not refused)
    accepted: int  # API calls answered 200 (the ack update applied)
    refused: int  # API calls refused with 409: the ticket was already acknowledged
    problems: list[str]


async def duplicate_acks(
    stack: Stack, http: httpx.AsyncClient, service: DrillService, ticket_id: str, raw: int
) -> AckBurst:
    """Five acknowledgements at once: ``raw`` raw signals, the rest through the API
    (whose update the ticket refuses with 409 once it is acknowledged)."""
    signals = [
        handle(stack, ticket_id).signal("acknowledge", Acknowledge(agent=f"raw-{i}"))
        for i in range(raw)
    ]
    api = [api_ack(http, service, ticket_id) for _ in range(RAW_ACKS + API_ACKS - raw)]
    results = await asyncio.gather(*signals, *api)
    responses = [r for r in results if isinstance(r, httpx.Response)]
    accepted = sum(r.status_code == 200 for r in responses)
    refused_409 = sum(r.status_code == 409 for r in responses)
    burst = AckBurst(ticket_id, raw + accepted, accepted, refused_409, [])
    refused = f"cannot acknowledge: ticket {ticket_id} is acknowledged (by "
    for response in responses:
        body = response.json()
        if response.status_code == 409 and not body["message"].startswith(refused):
            burst.problems.append(f"{ticket_id}: 409 says {body['message']!r}")
        elif response.status_code not in (200, 409):
            burst.problems.append(f"{ticket_id}: API ack answered {response.status_code} {body}")
    return burst


def acks_recorded(burst: AckBurst, status: TicketStatus) -> list[str]:
    """One ``acknowledged``; every other raw acknowledgement is ``acknowledge_repeated``. An
    API ack the validator refused never reached the history; one it let through that lost
    the race in the same instant was refused when applied (409, recorded as repeated)."""
    kinds = Counter(h.kind for h in status.history)
    repeated = kinds["acknowledge_repeated"]
    if kinds["acknowledged"] != 1 or not (
        burst.sent - 1 <= repeated <= burst.sent - 1 + burst.refused
    ):
        return [
            f"{burst.ticket_id}: {burst.sent} acks sent, history has {kinds['acknowledged']}"
            f" acknowledged and {kinds['acknowledge_repeated']} repeated"
        ]
    return []


async def ack_and_resolve(stack: Stack, ticket_id: str) -> None:
    ticket = handle(stack, ticket_id)
    await asyncio.gather(
        ticket.signal("acknowledge", Acknowledge(agent="acker")),
        ticket.signal("resolve", Resolve(by="resolver")),
    )


def resolved_once(status: TicketStatus) -> list[str]:
    kinds = Counter(h.kind for h in status.history)
    if status.state.value != "resolved" or kinds["acknowledged"] != 1 or kinds["resolved"] != 1:
        return [f"{status.ticket_id}: {status.state.value}, history {dict(kinds)}"]
    return []


# --- closed and unknown tickets -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """An invalid action and what its caller must be told."""

    what: str
    run: Callable[[], Awaitable[tuple[int, str]]]  # (exit code or HTTP status, message)
    expected_code: int
    expected_text: str


async def command(stack: Stack, *argv: str) -> tuple[int, str]:
    env = clean_env(TEMPORAL_ADDRESS=stack.server.address, SUPPORT_TASK_QUEUE=stack.queue)
    done = await asyncio.to_thread(
        subprocess.run, list(argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


async def api(
    http: httpx.AsyncClient, service: DrillService, ticket_id: str, action: str
) -> tuple[int, str]:
    response = await http.post(
        f"{service.url}/api/tickets/{ticket_id}/{action}",
        headers={"Authorization": f"Bearer {service.token}"},
        json={},
    )
    return response.status_code, json.dumps(response.json())


def refusals(
    stack: Stack, http: httpx.AsyncClient, service: DrillService, closed: str
) -> list[Refusal]:
    python, unknown = sys.executable, "NOPE-1"
    ack = json.dumps({"agent": "drill"})
    closed_note = f"ticket {closed} is closed (resolved; workflow completed)"
    return [
        Refusal(
            "support-ops ack (closed)",
            lambda: command(stack, python, "-m", "ops", "ack", closed, "--agent", "drill"),
            1,
            f"error: {closed_note}: acknowledge not sent",
        ),
        Refusal(
            "support-ops resolve (closed)",
            lambda: command(stack, python, "-m", "ops", "resolve", closed, "--agent", "drill"),
            1,
            f"error: {closed_note}: resolve not sent",
        ),
        Refusal(
            "support-ops ack (unknown)",
            lambda: command(stack, python, "-m", "ops", "ack", unknown, "--agent", "drill"),
            1,
            f"error: no ticket {unknown} (no workflow ticket-{unknown})",
        ),
        Refusal(
            "starter.py open (closed)",
            lambda: command(
                stack,
                python,
                "starter.py",
                "open",
                "--ticket-id",
                closed,
                "--customer-id",
                "drill-co",
                "--tier",
                "premium",
            ),
            0,
            f"ticket {closed} already exists (workflow ticket-{closed}, resolved);"
            " nothing new was started",
        ),
        Refusal(
            "temporal workflow signal (closed)",
            lambda: command(
                stack,
                str(TEMPORAL),
                "workflow",
                "signal",
                "--address",
                stack.server.address,
                "--workflow-id",
                f"ticket-{closed}",
                "--name",
                "acknowledge",
                "--input",
                ack,
            ),
            1,
            "workflow execution already completed",
        ),
        Refusal(
            "API ack (closed)",
            lambda: api(http, service, closed, "ack"),
            409,
            f"ticket {closed} is closed (resolved; workflow completed): acknowledge not sent",
        ),
        Refusal(
            "API resolve (closed)",
            lambda: api(http, service, closed, "resolve"),
            409,
            f"ticket {closed} is closed (resolved; workflow completed): resolve not sent",
        ),
        Refusal(
            "API ack (unknown)",
            lambda: api(http, service, unknown, "ack"),
            404,
            f'"message": "no ticket \'{unknown}\'"',
        ),
    ]


async def check_refusals(checks: list[Refusal]) -> list[str]:
    problems = []
    for check in checks:
        code, text = await check.run()
        if code != check.expected_code or check.expected_text not in text:
            problems.append(
                f"{check.what}: got {code} {text.strip()[-300:]!r}; expected"
                f" {check.expected_code} with {check.expected_text!r}"
            )
    return problems


# --- the drill ------------------------------------------------------------------------------


async def drill(profile: Profile, keep: bool) -> Verdict:
    verdict = Verdict(NAME)
    racing = [f"RA-{i:05d}" for i in range(profile.tickets)]
    dupes = [f"DA-{i:05d}" for i in range(profile.others)]
    pairs = [f"AR-{i:05d}" for i in range(profile.others)]
    every = racing + dupes + pairs
    async with running_stack(NAME, profile.policy, keep=keep) as stack:
        service = DrillService(stack)
        try:
            await service.start()
            await open_tickets(stack, every, per_second=20)
            say(f"opened {len(every)} tickets")
            offsets = around_zero(len(racing), profile.spread)
            races = asyncio.gather(
                *(ack_at_deadline(stack, t, o) for t, o in zip(racing, offsets, strict=True))
            )
            async with httpx.AsyncClient(timeout=30) as http:
                bursts = [
                    await duplicate_acks(stack, http, service, t, RAW_ACKS if i % 2 else 0)
                    for i, t in enumerate(dupes)
                ]
                await bounded(ack_and_resolve(stack, t) for t in pairs)
                await races
                say("acknowledgements sent; letting breach steps land")
                await asyncio.sleep(3)
                await resolve(stack, racing + dupes)
                statuses = await final_statuses(stack, every, seconds=120)
                checks = refusals(stack, http, service, dupes[0])
                refused = await check_refusals(checks)
            counted = await tally(statuses, stack.sink, stack.ledger_url)
            judged = await judge_races(stack, [statuses[t] for t in racing])
        finally:
            service.stop()
    outcomes = Counter(outcome for outcome, _ in judged)
    dupe_problems = [
        p for b in bursts for p in b.problems + acks_recorded(b, statuses[b.ticket_id])
    ]
    pair_problems = [p for t in pairs for p in resolved_once(statuses[t])]
    verdict.figures = {
        "tickets": len(every),
        "met": outcomes["met"],
        "breached_notified": outcomes["breached_notified"],
        "breached_unnotified": outcomes["breached_unnotified"],
        "duplicate_acks": len(dupes) * (RAW_ACKS + API_ACKS),
        "api_200": sum(b.accepted for b in bursts),
        "api_409": sum(b.refused for b in bursts),
        "ack_resolve_pairs": len(pairs),
        "refused_ok": f"{len(checks) - len(refused)}/{len(checks)}",
        "lost": counted.lost,
        "duplicated": counted.duplicated,
    }
    verdict.problems = (
        [p for _, problems in judged for p in problems]
        + dupe_problems
        + pair_problems
        + refused
        + counted.problems()
    )
    return verdict


def main(argv: list[str] | None = None) -> int:
    return run_drill(NAME, __doc__, (FULL, SHORT), drill, argv)


if __name__ == "__main__":
    sys.exit(main())
