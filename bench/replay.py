"""Replay after cache eviction: what a ticket that has escalated for days costs the worker
when it wakes outside the workflow cache and its history is replayed.

    python -m bench.replay [--days 7] [--repeats 5] [--no-sandboxed] [--json PATH]

One unacknowledged Mission Critical sev1 ticket (the default policy, ``policy/default.yaml``:
breach at 15 min, then a repeat every 5 minutes until acknowledged, the fastest ladder it
ships) escalates on the time-skipping test server for ``--days`` of skipped time, with the
real activities (log channels, a SQLite ledger) and the worker's own settings
(``worker.build_worker``). At each checkpoint (1 hour, 1, 3 and 7 days, and the last day)
the clock stops and the ticket's current run is fetched and measured:

- run: the run number (1 + the continue-as-new so far); events: the run's history length;
  events in all runs: what one history would hold without continue-as-new;
- history bytes: the run's events, serialized (protobuf); largest payload: the largest
  single payload in them (the carried ticket state rides in the first event's input);
- replay: the median of ``--repeats`` replays of that history with
  ``temporalio.worker.Replayer`` (``workflows.ALL_WORKFLOWS``, the pydantic converter)
  after one warm-up replay, unsandboxed (the worker's default runner,
  ``SUPPORT_WORKFLOW_SANDBOX`` unset) and sandboxed (``worker.WORKFLOW_RUNNER``). Each
  replay includes the SDK's fixed cost of a replay worker; the history is in memory (the
  server's history fetch is not timed).

Once the ticket has continued as new, the run before the current one (which ran until its
history was full) is measured as well: a ticket evicted just before it continues replays
a full run, the most any ticket replays under that history limit. The verdict compares the
worst of the two at the last checkpoint with the worst at the reference checkpoint: the
first one that measured a full run (or 1 day, when no earlier checkpoint did): bounded if
within ``BOUND`` times (2x), growing otherwise. (With a ladder's step costing fewer
events, as since ``local-first-attempts``, the first run is not yet full at 1 day; the
1-day figure then measures a part of a run, not what a ticket replays at worst.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from google.protobuf.message import Message
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, WorkflowRunner

from intake.core import open_ticket
from policy.load import default_policy_path, load_policy
from policy.schema import POLICY_FILE_ENV
from runtime.converter import support_data_converter
from runtime.logs import configure_logging, core_runtime
from tests.conftest import (
    advance_to,
    binary,
    now_second,
    register_search_attributes,
    sqlite_ledger,
    ticket,
)
from tests.record_histories import runs_of
from worker import WORKFLOW_RUNNER, build_worker
from workflows import ALL_WORKFLOWS

CHECKPOINTS = (timedelta(hours=1), timedelta(days=1), timedelta(days=3), timedelta(days=7))
BASE = timedelta(days=1)  # the verdict's reference checkpoint, unless a full run came earlier
BOUND = 2.0  # bounded: replay at the last checkpoint within this factor of the reference
TIER, SEVERITY = "mission_critical", "sev1"
PAYLOAD = "temporal.api.common.v1.Payload"
CURRENT, PREVIOUS = "current", "previous (full)"


# --- pure parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One history measured at one checkpoint: the ticket's current run, or the run before
    it (``which``)."""

    age_hours: float  # skipped time since the ticket opened
    which: str  # CURRENT or PREVIOUS
    run: int  # 1 + continue-as-new so far
    events: int
    events_all_runs: int  # every run's events up to this checkpoint
    history_bytes: int
    largest_payload_bytes: int
    replay_s: float  # median, unsandboxed (the worker's default)
    replay_sandboxed_s: float | None = None  # median, sandboxed (None: not measured)


def checkpoints(days: float) -> list[timedelta]:
    """The checkpoints up to ``days``, and ``days`` itself."""
    total = timedelta(days=days)
    return sorted({c for c in CHECKPOINTS if c <= total} | {total})


def age_label(hours: float) -> str:
    """``1 h``, ``1 d``, ``2.5 d``: days from a day on, hours below."""
    if hours < 24:
        return f"{hours:g} h"
    return f"{hours / 24:g} d"


def largest_payload(message: Message) -> int:
    """Bytes of the largest ``Payload`` anywhere inside ``message`` (0 if none)."""
    if message.DESCRIPTOR.full_name == PAYLOAD:
        return message.ByteSize()
    largest = 0
    for field, value in message.ListFields():
        if field.message_type is None:
            continue  # a scalar, or a repeated or map field of scalars
        if isinstance(value, Message):
            children: Iterable[Any] = [value]
        elif field.message_type.GetOptions().map_entry:
            children = value.values()
        else:
            children = value  # a repeated field of messages
        for child in children:
            if isinstance(child, Message):
                largest = max(largest, largest_payload(child))
    return largest


def history_sizes(history: WorkflowHistory) -> tuple[int, int, int]:
    """(events, serialized bytes, largest payload bytes) of one run's history."""
    events = history.events
    return (
        len(events),
        sum(e.ByteSize() for e in events),
        max((largest_payload(e) for e in events), default=0),
    )


def worst_by_age(points: Sequence[Point]) -> dict[float, float]:
    """Per checkpoint, the slowest unsandboxed replay measured there."""
    worst: dict[float, float] = {}
    for p in points:
        worst[p.age_hours] = max(worst.get(p.age_hours, 0.0), p.replay_s)
    return worst


def reference_age(points: Sequence[Point]) -> tuple[float, bool]:
    """The verdict's reference checkpoint (hours), and whether it is a full run's: the
    first before the last one that measured a full run (the run before a
    continue-as-new), else 1 day."""
    last = max((p.age_hours for p in points), default=0.0)
    full = [p.age_hours for p in points if p.which == PREVIOUS and p.age_hours < last]
    return (min(full), True) if full else (BASE.total_seconds() / 3600, False)


def verdict(points: Sequence[Point], history_limit: int) -> str:
    """One line: is replay at the last checkpoint within ``BOUND`` x the reference's?"""
    worst = worst_by_age(points)
    base_hours, full = reference_age(points)
    if base_hours not in worst or max(worst) <= base_hours:
        return "n/a: the run did not go past 1 day, the reference checkpoint"
    last = max(worst)
    ratio = worst[last] / worst[base_hours]
    runs = max(p.run for p in points)
    longest = max(p.events for p in points)
    detail = (
        f"worst replay at {age_label(last)} {worst[last]:.3f} s against"
        f" {worst[base_hours]:.3f} s at {age_label(base_hours)}"
        + (", the first full run" if full else "")
        + f" ({ratio:.2f}x, bound {BOUND:g}x); {runs} runs,"
        f" none longer than {longest:,} events (history limit {history_limit:,})"
    )
    if ratio <= BOUND:
        return f"Bounded: {detail}."
    return f"GROWS with the days: {detail}."


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def markdown(points: Sequence[Point], history_limit: int, repeats: int) -> str:
    """The table and the verdict line."""
    lines = [
        f"Replay of one unacknowledged {TIER} {SEVERITY} ticket (default policy: a repeat"
        f" every 5 min; history limit {history_limit:,} events), median of {repeats}"
        " replays after a warm-up.",
        "",
        "| age | run | history | events | events in all runs | history bytes"
        " | largest payload | replay (unsandboxed, default) | replay (sandboxed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {age_label(p.age_hours)} | {p.run} | {p.which} | {p.events:,}"
            f" | {p.events_all_runs:,} | {p.history_bytes:,} | {p.largest_payload_bytes:,}"
            f" | {_s(p.replay_s)} | {_s(p.replay_sandboxed_s)} |"
        )
    lines += ["", verdict(points, history_limit)]
    return "\n".join(lines) + "\n"


def to_json(points: Sequence[Point], history_limit: int, repeats: int, days: float) -> str:
    document = {
        "tier": TIER,
        "severity": SEVERITY,
        "days": days,
        "repeats": repeats,
        "history_limit": history_limit,
        "bound": BOUND,
        "points": [asdict(p) for p in points],
        "verdict": verdict(points, history_limit),
    }
    return json.dumps(document, indent=2) + "\n"


# --- measuring ----------------------------------------------------------------------------


async def replay_seconds(history: WorkflowHistory, runner: WorkflowRunner, repeats: int) -> float:
    """Median seconds to replay ``history`` with ``runner``, after one warm-up replay."""
    replayer = Replayer(
        workflows=ALL_WORKFLOWS,
        data_converter=support_data_converter,
        workflow_runner=runner,
    )
    await replayer.replay_workflow(history)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        await replayer.replay_workflow(history)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


async def measure_run(
    history: WorkflowHistory,
    age: timedelta,
    which: str,
    run: int,
    events_all_runs: int,
    repeats: int,
    sandboxed: bool,
) -> Point:
    events, size, largest = history_sizes(history)
    return Point(
        age_hours=age.total_seconds() / 3600,
        which=which,
        run=run,
        events=events,
        events_all_runs=events_all_runs,
        history_bytes=size,
        largest_payload_bytes=largest,
        replay_s=await replay_seconds(history, UnsandboxedWorkflowRunner(), repeats),
        replay_sandboxed_s=(
            await replay_seconds(history, WORKFLOW_RUNNER, repeats) if sandboxed else None
        ),
    )


async def escalate(
    env: WorkflowEnvironment, days: float, repeats: int, sandboxed: bool
) -> list[Point]:
    """Open the ticket on ``env`` (a time-skipping server with the search attributes
    registered), let it escalate, and measure its histories at each checkpoint."""
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        ledger = await sqlite_ledger(Path(tmp) / "ledger.sqlite3")
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                queue = f"replay-{uuid.uuid4().hex[:8]}"
                async with build_worker(env.client, queue, ledger, http):
                    t0 = await now_second(env)
                    data = ticket(
                        f"R-{uuid.uuid4().hex[:8]}", tier=TIER, severity=SEVERITY
                    ).model_copy(update={"opened_at": t0})
                    if not (await open_ticket(env.client, data, queue)).created:
                        raise RuntimeError(f"ticket {data.ticket_id} already existed")
                    handle = env.client.get_workflow_handle(data.workflow_id)
                    try:
                        for age in checkpoints(days):
                            await advance_to(env, t0 + age)
                            runs = await runs_of(env, data.workflow_id)
                            total = sum(len(r.events) for r in runs)
                            measured = [(runs[-1], CURRENT)]
                            if len(runs) > 1:
                                measured.append((runs[-2], PREVIOUS))
                            for offset, (history, which) in enumerate(measured):
                                run = len(runs) - offset
                                points.append(
                                    await measure_run(
                                        history, age, which, run, total, repeats, sandboxed
                                    )
                                )
                    finally:
                        await handle.terminate(reason="replay benchmark finished")
        finally:
            await ledger.close()
    return points


def history_limit() -> int:
    """The default policy's continue-as-new threshold (events)."""
    return load_policy(default_policy_path()).limits.continue_as_new_after_events


async def measure_on_own_server(
    days: float = 7, repeats: int = 5, sandboxed: bool = True
) -> list[Point]:
    """The measurement on a time-skipping server of its own, under the default policy."""
    if os.environ.get(POLICY_FILE_ENV):
        raise RuntimeError(f"{POLICY_FILE_ENV} is set: the replay is for the default policy")
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=support_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
        runtime=core_runtime(),
    )
    try:
        await register_search_attributes(env)
        return await escalate(env, days, repeats, sandboxed)
    finally:
        await env.shutdown()


async def measured(
    days: float = 7, repeats: int = 5, sandboxed: bool = True
) -> tuple[str, dict[str, Any]]:
    """The measurement on a server of its own: its Markdown (table and verdict) and its
    JSON document (what ``--json`` writes; ``bench.run`` puts both in its report)."""
    points = await measure_on_own_server(days, repeats, sandboxed)
    limit = history_limit()
    document: dict[str, Any] = json.loads(to_json(points, limit, repeats, days))
    return markdown(points, limit, repeats), document


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--days", type=float, default=7, help="skipped days of escalation")
    parser.add_argument("--repeats", type=int, default=5, help="replays per history (median)")
    parser.add_argument(
        "--no-sandboxed", dest="sandboxed", action="store_false", help="skip sandboxed replays"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.days <= 0 or args.repeats < 1:
        parser.error("--days must be positive and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    configure_logging("ERROR")  # on stderr: stdout is the report
    text, document = asyncio.run(measured(args.days, args.repeats, args.sandboxed))
    print(text, end="")
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
