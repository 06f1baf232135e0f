"""Counting what a drill left behind, and its one-line verdict.

What the tickets say happened (their final ``status``) is compared with what the sink
received and what the SLA ledger holds:

- deliveries: every escalation a ticket fired to a sink recipient is one delivery key
  ``<workflow id>/<step>/<recipient>`` (the key the notify activity sends as
  ``Idempotency-Key``). ``lost`` = keys the sink never stored, ``duplicated`` = extra
  times the sink stored a key (what a sink that ignores the key would show twice),
  ``unexpected`` = keys stored that no ticket fired. A step an acknowledgement cancelled
  before it was delivered (``superseded_at``: its delivery was still pending, e.g. on a
  loaded machine, when the drill resolved the ticket) is neither expected nor unexpected;
- the ledger: every event the ticket's history reports is in ``sla_events`` exactly
  once (by kind, per ticket): ``lost`` = missing, ``duplicated`` = more than reported.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import select

from contract.models import TicketStatus
from drills.policy import SINK_TARGETS
from harness.processes import HarnessError
from harness.sinks import Sink
from ledger.report import nearest_rank
from ledger.schema import sla_events
from ledger.store import SqlLedger

# Where a full-size drill writes its verdict (``latest-<drill>.md``); ``--short`` runs (the
# test suite's) write nothing unless given ``--out``.
RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS_SHOWN = 40

# History entries the workflow also writes to the ledger, under the same kind.
LEDGER_KINDS = {
    "opened",
    "notified",
    "warned",
    "breached",
    "escalated",
    "step_superseded",
    "acknowledged",
    "acknowledge_repeated",
    "resolved",
    "notification_failed",
    "page_update_failed",
    "severity_changed",
    "out_of_scope",
    "closed_idle",
    "customer_reply",
}


def delivery_keys(
    statuses: Mapping[str, TicketStatus], cancelled: bool = False
) -> dict[str, TicketStatus]:
    """Every delivery key the tickets fired to a sink recipient, with its ticket; with
    ``cancelled``, the keys of the steps an acknowledgement superseded instead."""
    keys: dict[str, TicketStatus] = {}
    for ticket_id, status in statuses.items():
        for escalation in status.escalations:
            if (escalation.superseded_at is not None) != cancelled:
                continue
            for target in escalation.targets:
                if target in SINK_TARGETS:
                    keys[f"ticket-{ticket_id}/{escalation.step}/{target}"] = status
    return keys


@dataclass
class Deliveries:
    expected: int
    delivered: int
    lost: list[str]
    duplicated: int
    unexpected: list[str]
    # Sent again after a crash: the sink stored the message before the worker died and
    # the new worker sent it once more with the same Idempotency-Key (a kill -9 between
    # the sink's answer and the delivery log's write; a sink honouring the key keeps one).
    resent: int = 0

    def problems(self) -> list[str]:
        found = [f"lost delivery {key}" for key in self.lost[:10]]
        found += [f"unexpected delivery {key}" for key in self.unexpected[:10]]
        if self.duplicated:
            found.append(f"{self.duplicated} duplicate deliveries at the sink")
        return found


def count_deliveries(
    statuses: Mapping[str, TicketStatus],
    sink: Sink,
    crash: tuple[float, float] | None = None,
) -> Deliveries:
    """Expected delivery keys against what the sink stored. With ``crash`` (the instants
    a worker was killed and a new one started), a key stored once before the kill and once
    more after the restart counts as ``resent``; every other extra copy is ``duplicated``."""
    expected = delivery_keys(statuses)
    cancelled = delivery_keys(statuses, cancelled=True)  # sent or not: both are right
    stored = sink.stored_per_key()
    resent = 0
    if crash is not None:
        killed, restarted = crash
        arrivals: dict[str, list[float]] = {}
        for record in sink.accepted():
            arrivals.setdefault(record["key"], []).append(record["arrived"])
        for times in arrivals.values():
            first, *later = sorted(times)
            if len(later) == 1 and first <= killed and later[0] >= restarted:
                resent += 1
    return Deliveries(
        expected=len(expected),
        delivered=sum(1 for key in expected if key in stored),
        lost=sorted(key for key in expected if key not in stored),
        duplicated=sum(n - 1 for n in stored.values()) - resent,
        unexpected=sorted(key for key in stored if key not in expected and key not in cancelled),
        resent=resent,
    )


def superseded(statuses: Mapping[str, TicketStatus]) -> int:
    """Steps recorded as superseded instead of sent (a later step was already due when the
    ticket caught up: by design, nobody gets a burst of stale warnings)."""
    return sum(1 for s in statuses.values() for h in s.history if h.kind == "step_superseded")


def recovery_delays(sink: Sink, fault_at: float, recovered_at: float) -> list[float]:
    """For each key first stored after the fault that was due before the recovery (it fell
    due during the outage, or was in flight when it began): delivery instant minus
    max(due instant, recovery instant), in seconds (wall clock)."""
    delays = []
    for message in sink.messages():  # each key's first stored arrival
        arrived = message["arrived"]
        due = datetime.fromisoformat(message["body"]["due_at"]).timestamp()
        if arrived >= fault_at and due < recovered_at:
            delays.append(arrived - max(due, recovered_at))
    return delays


def reported_events(status: TicketStatus) -> Counter[str]:
    """The ledger kinds the ticket's history says were recorded, with their counts."""
    kinds: Counter[str] = Counter()
    for entry in status.history:
        if entry.kind in LEDGER_KINDS or entry.kind.endswith("_ignored"):
            kinds[entry.kind] += 1
        elif entry.kind.endswith("_rejected"):
            kinds["signal_rejected"] += 1
    return kinds


async def ledger_kinds(url: str) -> dict[str, Counter[str]]:
    """Every ticket's event kinds in the ledger's ``sla_events``, with their counts."""
    ledger = SqlLedger.from_url(url)
    try:
        async with ledger.engine.connect() as conn:
            rows = await conn.execute(select(sla_events.c.ticket_id, sla_events.c.kind))
            found: dict[str, Counter[str]] = {}
            for ticket_id, kind in rows:
                found.setdefault(ticket_id, Counter())[kind] += 1
            return found
    finally:
        await ledger.close()


@dataclass
class LedgerCount:
    events: int
    lost: int
    duplicated: int
    problems: list[str] = field(default_factory=list)


async def count_ledger(statuses: Mapping[str, TicketStatus], url: str) -> LedgerCount:
    stored = await ledger_kinds(url)
    count = LedgerCount(events=sum(sum(c.values()) for c in stored.values()), lost=0, duplicated=0)
    for ticket_id, status in statuses.items():
        reported, held = reported_events(status), stored.get(ticket_id, Counter())
        missing, extra = reported - held, held - reported
        count.lost += sum(missing.values())
        count.duplicated += sum(extra.values())
        if missing or extra:
            count.problems.append(
                f"ledger of {ticket_id}: missing {dict(missing)}, more than reported {dict(extra)}"
            )
    return count


@dataclass
class Tally:
    """The sink's deliveries and the ledger's events against what the tickets report: the
    ``lost`` and ``duplicated`` figures and the problems every drill's verdict carries."""

    deliveries: Deliveries
    ledger: LedgerCount

    @property
    def lost(self) -> int:
        return len(self.deliveries.lost) + self.ledger.lost

    @property
    def duplicated(self) -> int:
        return self.deliveries.duplicated + self.ledger.duplicated

    def figures(self) -> dict[str, object]:
        """The verdict's escalations, delivered, lost and duplicated, in that order."""
        return {
            "escalations": self.deliveries.expected,
            "delivered": self.deliveries.delivered,
            "lost": self.lost,
            "duplicated": self.duplicated,
        }

    def problems(self) -> list[str]:
        return self.deliveries.problems() + self.ledger.problems


async def tally(
    statuses: Mapping[str, TicketStatus],
    sink: Sink,
    ledger_url: str,
    crash: tuple[float, float] | None = None,
) -> Tally:
    """``count_deliveries`` (with ``crash``) and ``count_ledger`` of the tickets."""
    deliveries = count_deliveries(statuses, sink, crash=crash)
    return Tally(deliveries, await count_ledger(statuses, ledger_url))


def unresolved(statuses: Mapping[str, TicketStatus]) -> list[str]:
    """A problem for each ticket that did not end resolved."""
    return [
        f"ticket {t} ended {s.state.value}"
        for t, s in statuses.items()
        if s.state.value != "resolved"
    ]


def recovery_problems(
    counted: Tally, statuses: Mapping[str, TicketStatus], delays: list[float], down: str
) -> list[str]:
    """The problems of a drill that took ``down`` (the worker, the server) down while
    escalations fell due: the tally's, every unresolved ticket, and none having fallen due."""
    problems = counted.problems() + unresolved(statuses)
    if not delays:
        problems.append(f"no escalation fell due while {down} was down")
    return problems


def delay_figures(delays: list[float], due: str, p50: str) -> dict[str, object]:
    """How many escalations fell due while a process was down (named ``due``), and the p50
    (named ``p50``) and max of their delay after it came back."""
    return {
        due: len(delays),
        p50: seconds(nearest_rank(delays, 50) or 0.0),
        "max": seconds(max(delays, default=0.0)),
    }


def seconds(value: float) -> str:
    return f"{value:.1f}s"


@dataclass
class Verdict:
    """A drill's outcome: named figures, and the problems that make it FAIL."""

    drill: str
    figures: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        outcome = "FAIL" if self.problems else "PASS"
        figures = " ".join(f"{name}={value}" for name, value in self.figures.items())
        return f"DRILL {self.drill}: {outcome} {figures}".rstrip()

    def report(self) -> int:
        """Problems on stderr, the verdict line on stdout; the exit code."""
        for problem in self.problems[:PROBLEMS_SHOWN]:
            print(f"  problem: {problem}", file=sys.stderr)
        if len(self.problems) > PROBLEMS_SHOWN:
            print(f"  ... and {len(self.problems) - PROBLEMS_SHOWN} more", file=sys.stderr)
        print(self.line(), flush=True)
        return 1 if self.problems else 0

    def markdown(self, command: str, profile: Mapping[str, object], date: str = "") -> str:
        """The results file: the run (when, where, the command and its profile), the
        verdict line and the problems."""
        date = date or datetime.now(UTC).isoformat(timespec="seconds")
        outcome = "FAIL" if self.problems else "PASS"
        settings = ", ".join(f"{name}={value}" for name, value in profile.items())
        lines = [
            f"# Drill {self.drill}: {outcome}",
            "",
            f"Run {date} on {os.cpu_count()} cores, Python {platform.python_version()}"
            f" ({platform.platform()}): `{command}` ({settings}).",
            "",
            "```",
            self.line(),
            "```",
        ]
        if self.problems:
            lines += ["", "Problems:", ""]
            lines += [f"- {problem}" for problem in self.problems[:PROBLEMS_SHOWN]]
            if len(self.problems) > PROBLEMS_SHOWN:
                lines.append(f"- ... and {len(self.problems) - PROBLEMS_SHOWN} more")
        return "\n".join(lines) + "\n"

    def write(self, directory: Path, command: str, profile: Mapping[str, object]) -> Path:
        """``latest-<drill>.md`` in ``directory`` (replacing the last run's)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"latest-{self.drill}.md"
        path.write_text(self.markdown(command, profile), encoding="utf-8")
        return path


def parser(
    drill: str, doc: str | None, tickets: int, short_tickets: int, down: float | None = None
) -> argparse.ArgumentParser:
    """The options every drill takes: its size, the short profile, keeping the workdir;
    and how long the fault lasts, for drills whose profile has ``down_seconds``."""
    summary = (doc or drill).strip()
    result = argparse.ArgumentParser(
        prog=f"python -m drills.{drill.replace('-', '_')}",
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument(
        "--tickets",
        type=int,
        help=f"how many tickets (default {tickets}; {short_tickets} with --short)",
    )
    result.add_argument(
        "--short", action="store_true", help="the short profile the test suite runs"
    )
    result.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, databases)"
    )
    result.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"where latest-{drill}.md goes (default {RESULTS.relative_to(RESULTS.parents[1])}/;"
        " with --short, nowhere unless given)",
    )
    if down is not None:
        result.add_argument(
            "--down",
            type=float,
            metavar="SECONDS",
            help=f"how long the fault lasts (default {down:g})",
        )
    return result


class Profile(Protocol):
    @property
    def tickets(self) -> int: ...


P = TypeVar("P", bound=Profile)


def run_drill(
    name: str,
    doc: str | None,
    profiles: tuple[P, P],
    drill: Callable[[P, bool], Coroutine[Any, Any, Verdict]],
    argv: list[str] | None,
) -> int:
    """A drill's command line: parse its options, run it at the chosen size (``profiles``:
    full, short) and report; a drill that could not run is a FAIL naming why."""
    full, short = profiles
    down = getattr(full, "down_seconds", None)
    args = parser(name, doc, full.tickets, short.tickets, down).parse_args(argv)
    profile = short if args.short else full
    if args.tickets:
        profile = dataclasses.replace(profile, tickets=args.tickets)  # type: ignore[type-var]
    if getattr(args, "down", None) is not None:
        profile = dataclasses.replace(profile, down_seconds=args.down)  # type: ignore[type-var]
    try:
        verdict = asyncio.run(drill(profile, args.keep))
    except HarnessError as err:
        verdict = Verdict(name, problems=[str(err)])
    out = args.out if args.out is not None or args.short else RESULTS
    if out is not None:
        module = f"python -m drills.{name.replace('-', '_')}"
        command = " ".join([module, *(sys.argv[1:] if argv is None else argv)])
        sizes = dataclasses.asdict(profile)  # type: ignore[call-overload]
        shown = {"profile": "short" if args.short else "full", **sizes}
        written = verdict.write(out, command, shown)
        print(f"verdict written to {written}", file=sys.stderr)
    return verdict.report()
