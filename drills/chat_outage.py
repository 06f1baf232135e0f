"""Fault drill: the chat webhook fails (500s, then timeouts) while breaches fall due.

The duty manager's channels are chat first, then a webhook. Opens ``--tickets`` Premium
tickets whose breaches fall due before, during and after an outage of the chat sink: it
answers 500 for a while, then holds every request past the worker's HTTP timeout, then
recovers. Proves, against the real worker and sink:

- deliveries that fail are retried, and a recipient moves to its next channel once its
  chat has been failing for the policy's ``delivery.failover_after`` (not before; and a
  chat delivery never comes later than that turn allows);
- exactly one delivery per key (``<workflow id>/<step>/<recipient>``, the notify
  activity's idempotency key) across both channels: none lost, none duplicated;
- the ledger's step events name the channel that delivered, and hold each event once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (drills/chat_outage.py): the project's imports
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from drills.policy import DrillPolicy
from drills.stack import running_stack, say
from drills.tickets import Paced, final_statuses, open_tickets, resolve_when_breached
from drills.verdict import Verdict, run_drill, seconds, tally
from harness.sinks import Sink
from ledger.schema import sla_events
from ledger.store import SqlLedger

NAME = "chat-outage"
CHAT, FALLBACK = "/chat", "/duty-manager"
# Slack from the activity's schedule to its attempt reaching the sink.
TOLERANCE = 2.0


@dataclass(frozen=True)
class Profile(Paced):
    failover_after: timedelta
    outage_after: float  # seconds after the first ticket opened
    errors_for: float  # the chat sink answers 500
    hangs_for: float  # then holds requests past the worker's 10 s HTTP timeout

    @property
    def policy(self) -> DrillPolicy:
        return DrillPolicy(
            response_target=self.response_target,
            failover_after=self.failover_after,
            chat_first=True,
        )


FULL = Profile(150, timedelta(seconds=30), 90, timedelta(seconds=20), 45, 30, 30)
SHORT = Profile(12, timedelta(seconds=10), 12, timedelta(seconds=10), 11, 6, 6)


async def chat_outage(sink: Sink, began: float, profile: Profile) -> None:
    await asyncio.sleep(max(0.0, began + profile.outage_after - time.monotonic()))
    with sink.lock:
        sink.down.add(CHAT)
    say(f"chat answers 500 for {profile.errors_for:g} s")
    await asyncio.sleep(profile.errors_for)
    with sink.lock:
        sink.down.discard(CHAT)
        sink.hang.add(CHAT)
    say(f"chat times out for {profile.hangs_for:g} s")
    await asyncio.sleep(profile.hangs_for)
    with sink.lock:
        sink.hang.discard(CHAT)
    say("chat is back")


@dataclass
class Failover:
    """How the duty manager's deliveries went, per key."""

    via_chat: int = 0
    fell_over: int = 0
    retried: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def judge_failover(sink: Sink, failover_after: timedelta) -> Failover:
    """Each key's chat attempts and where it was stored, against the fall-over rule."""
    turn = failover_after.total_seconds()
    attempts: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(sink.received, key=lambda r: r["arrived"]):
        if r["path"] in (CHAT, FALLBACK):
            attempts.setdefault(r["key"], []).append(r)
    found = Failover()
    for key, tries in attempts.items():
        chat = [r for r in tries if r["path"] == CHAT]
        stored = next((r for r in tries if r["stored"]), None)
        if stored is None:
            continue  # lost: counted with the deliveries
        if not chat:
            found.problems.append(f"{key}: delivered by webhook without trying chat first")
            continue
        found.retried += len(chat) > 1 or stored["path"] == FALLBACK
        waited = stored["arrived"] - chat[0]["arrived"]
        if stored["path"] == FALLBACK:
            found.fell_over += 1
            if waited < turn - TOLERANCE:
                found.problems.append(f"{key}: fell over after {waited:.1f} s, before {turn:g} s")
        else:
            found.via_chat += 1
            if waited > turn + TOLERANCE:
                found.problems.append(f"{key}: chat used {waited:.1f} s after its first attempt")
    return found


async def ledger_channels(url: str) -> dict[str, str | None]:
    """The channel each breach / repeat event says reached the duty manager, by event key."""
    ledger = SqlLedger.from_url(url)
    try:
        async with ledger.engine.connect() as conn:
            rows = await conn.execute(
                select(sla_events.c.key, sla_events.c.detail).where(
                    sla_events.c.kind.in_(["breached", "escalated"])
                )
            )
            return {key: (detail.get("channels") or {}).get("duty-manager") for key, detail in rows}
    finally:
        await ledger.close()


def channel_mismatches(sink: Sink, recorded: dict[str, str | None]) -> list[str]:
    """Sink messages whose channel differs from the one the ledger recorded."""
    wrong = []
    for message in sink.messages():
        if message["path"] not in (CHAT, FALLBACK):
            continue
        event_key = message["key"].rsplit("/", 1)[0]
        channel = "chat" if message["path"] == CHAT else "webhook"
        if recorded.get(event_key) != channel:
            wrong.append(f"{event_key}: ledger says {recorded.get(event_key)}, sink got {channel}")
    return wrong


async def drill(profile: Profile, keep: bool) -> Verdict:
    verdict = Verdict(NAME)
    ids = [f"CO-{i:05d}" for i in range(profile.tickets)]
    async with running_stack("chat-outage", profile.policy, keep=keep) as stack:
        stack.sink.hang_seconds = 15.0
        began = time.monotonic()
        outage = asyncio.create_task(chat_outage(stack.sink, began, profile))
        await open_tickets(stack, ids, per_second=profile.per_second)
        await outage
        last_breach = profile.last_breach(began)
        # A delivery ends by the activity's schedule-to-close bound (every channel's turn
        # and a last attempt, see workflows/activity_options.py).
        bound = profile.failover_after.total_seconds() * 3 + 60
        await resolve_when_breached(stack, ids, deadline=last_breach + bound + 10)
        statuses = await final_statuses(stack, ids, seconds=300)
        counted = await tally(statuses, stack.sink, stack.ledger_url)
        failover = judge_failover(stack.sink, profile.failover_after)
        mismatches = channel_mismatches(stack.sink, await ledger_channels(stack.ledger_url))
        outage_hits = sum(1 for r in stack.sink.received if r["path"] == CHAT and not r["stored"])
    failed = [
        f"{t}: {e.step} recorded as failed: {e.failed}"
        for t, s in statuses.items()
        for e in s.escalations
        if e.failed
    ]
    verdict.figures = {
        "tickets": len(ids),
        **counted.figures(),
        "chat_failures": outage_hits,
        "retried": failover.retried,
        "via_chat": failover.via_chat,
        "fell_over": failover.fell_over,
        "failover_after": seconds(profile.failover_after.total_seconds()),
        "outage": seconds(profile.errors_for + profile.hangs_for),
    }
    verdict.problems = counted.problems() + failover.problems
    verdict.problems += mismatches + failed
    if not failover.fell_over:
        verdict.problems.append("no delivery fell over to the webhook")
    return verdict


def main(argv: list[str] | None = None) -> int:
    return run_drill(NAME, __doc__, (FULL, SHORT), drill, argv)


if __name__ == "__main__":
    sys.exit(main())
