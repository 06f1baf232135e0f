"""``python -m bench.profile``: where the worker's time goes while a burst of breaches drains.

The benchmark's stack (dev server on a SQLite file, the real ``worker.py``, the HTTP sink,
the bench policy), ``--burst`` tickets whose breaches fall due at one instant; from a
second before that instant until the last breach reached the sink, ``py-spy`` samples the
worker process from outside (no change to the worker), and the worker's own Prometheus
metrics (the SDK's) are read before and after. The report sorts the samples into the
costs issue 17 names (the sandbox, payload conversion, workflow code, the SDK's
activation handling, the webhook send, the ledger write, ...) and gives, from the
metrics, how many workflow tasks ran, how many were replays after a cache eviction
(sticky cache misses) and the time spent replaying.

Prints the report (``--out FILE`` also writes it; the raw collapsed stacks stay in the
run's work directory, named on stderr). ``bench/results/`` keeps only the benchmark's
latest report and the notebook: a finding worth keeping goes into the notebook's
"Where the worker's time goes" by hand, with its date and command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import yaml

from bench.run import Bench, bench_policy, lateness_at, open_due, server_args
from harness.processes import HarnessError, WorkerProcess, binary, clean_env, eventually, free_port
from harness.sinks import serve_sink
from harness.temporal import DevServer, connect
from policy.load import parse_policy
from worker import DEFAULT_WORKFLOW_CACHE

# Categories, by the first frame from the leaf up whose file path matches: the innermost
# known cost a sample was inside.
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("ledger write (SQLAlchemy, SQLite)", re.compile(r"sqlalchemy|aiosqlite|sqlite3|/ledger/")),
    ("webhook send (httpx)", re.compile(r"httpx|httpcore|h11|/activities/channels")),
    ("protobuf (history, payloads)", re.compile(r"google/protobuf")),
    (
        "payload conversion (pydantic, JSON)",
        re.compile(r"pydantic|temporalio/converter|temporalio/contrib/pydantic|/json/"),
    ),
    ("the sandbox (imports, restrictions)", re.compile(r"workflow_sandbox")),
    ("ticket workflow code", re.compile(r"/workflows/|/contract/|/policy/")),
    (
        "the SDK's workflow activation handling",
        re.compile(r"temporalio/worker/_workflow|temporalio/workflow\.py"),
    ),
    ("the SDK's activity handling", re.compile(r"temporalio/worker/_activity|/activities/")),
    ("the SDK's bridge to core (Rust)", re.compile(r"temporalio/bridge")),
    ("logging (structlog, logging)", re.compile(r"structlog|/logging/")),
    ("asyncio event loop", re.compile(r"asyncio/")),
]
OTHER = "other"

# The SDK's metrics (Prometheus names) read before and after the drain.
METRICS = {
    "workflow tasks completed": "temporal_workflow_task_execution_latency_count",
    "workflow task execution, total s": "temporal_workflow_task_execution_latency_sum",
    "workflow task replay, total s": "temporal_workflow_task_replay_latency_sum",
    "sticky cache misses": "temporal_sticky_cache_miss",
    "sticky cache hits": "temporal_sticky_cache_hit",
    "forced cache evictions": "temporal_sticky_cache_total_forced_eviction",
    "activity executions": "temporal_activity_execution_latency_count",
    "activity execution, total s": "temporal_activity_execution_latency_sum",
    "workflow task schedule-to-start, total s": (
        "temporal_workflow_task_schedule_to_start_latency_sum"
    ),
}


@dataclass
class Profile:
    burst: int
    cache: int
    samples: int
    drain_seconds: float
    delivered: int
    shares: dict[str, int] = field(default_factory=dict)
    top: list[tuple[str, int]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    raw: str = ""
    settings: dict[str, str] = field(default_factory=dict)


def category(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return OTHER


def read_collapsed(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Samples per category, and per leaf function (file:function), from py-spy's raw
    (collapsed) output: ``frame;frame;... count`` per line."""
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        by_category[category(stack)] += int(count)
        by_leaf[stack.split(";")[-1]] += int(count)
    return by_category, by_leaf


def scrape(url: str) -> dict[str, float]:
    """Sum of each metric of METRICS over its labels."""
    text = httpx.get(url, timeout=10).text
    values: dict[str, float] = {}
    for label, name in METRICS.items():
        total = 0.0
        for line in text.splitlines():
            rest = line[len(name) :].removeprefix("_total")
            if line.startswith(name) and rest[:1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        values[label] = total
    return values


async def profile(burst: int, rate: float, worker_env: dict[str, str]) -> Profile:
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    metrics_port = free_port()
    with serve_sink() as sink:
        policy = workdir / "policy.yaml"
        text = yaml.safe_dump(bench_policy(sink.url), sort_keys=False)
        parse_policy(text, str(policy))
        policy.write_text(text, encoding="utf-8")
        server = DevServer(workdir, extra_args=server_args([]))  # the benchmark's server
        await server.start()
        queue = f"profile-{uuid.uuid4().hex[:8]}"
        worker = WorkerProcess(
            workdir,
            clean_env(
                TEMPORAL_ADDRESS=server.address,
                PYTHONUNBUFFERED="1",
                SUPPORT_TASK_QUEUE=queue,
                SUPPORT_POLICY_FILE=str(policy),
                SUPPORT_LEDGER_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}",
                SUPPORT_METRICS_BIND=f"127.0.0.1:{metrics_port}",
                **worker_env,
            ),
        )
        try:
            client = await connect(server.address)
            await worker.start()
            assert worker.process is not None
            bench = Bench(workdir, sink, server, client, worker, worker, queue, queue)
            lead = burst / rate + 30
            due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
            await open_due(bench, [due] * burst, "B", rate, lambda n: None)
            await asyncio.sleep(max(0.0, due.timestamp() - time.time() - 1))
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            before = scrape(url)
            raw = workdir / "profile.collapsed"
            spy = await asyncio.create_subprocess_exec(
                str(binary("py-spy")),
                "record",
                "--pid",
                str(worker.process.pid),
                "--format",
                "raw",
                "--full-filenames",
                "--nolineno",
                "--gil",  # only what holds the GIL: the worker's Python CPU, not its waits
                "--rate",
                "100",
                "--output",
                str(raw),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            with contextlib.suppress(HarnessError):
                await eventually(
                    "the burst to drain",
                    lambda: len(lateness_at(sink, "/bench")) >= burst,
                    seconds=due.timestamp() + 600 - time.time(),
                )
            got = lateness_at(sink, "/bench")
            drain = max((a for _, _, a in got), default=time.time()) - due.timestamp()
            after = scrape(url)
            spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            await asyncio.wait_for(spy.wait(), 60)
        finally:
            worker.stop()
            server.stop()
    by_category, by_leaf = read_collapsed(raw)
    return Profile(
        burst=burst,
        cache=int(worker_env.get("SUPPORT_WORKFLOW_CACHE", DEFAULT_WORKFLOW_CACHE)),
        samples=sum(by_category.values()),
        drain_seconds=drain,
        delivered=len(got),
        shares=dict(by_category.most_common()),
        top=by_leaf.most_common(15),
        metrics={k: after[k] - before[k] for k in METRICS},
        raw=str(raw),
    )


def render(p: Profile) -> str:
    m = p.metrics
    tasks = m["workflow tasks completed"] or 1
    lines = [
        "# Where the worker's time goes during the burst",
        "",
        f"`python -m bench.profile --burst {p.burst}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC:"
        f" {p.delivered:,} of {p.burst:,} breaches delivered, the last {p.drain_seconds:.1f} s"
        f" after the due instant; workflow cache {p.cache:,}; worker settings"
        f" {p.settings or 'the defaults'}; py-spy, 100 samples/s of the"
        f" worker's threads holding the GIL, {p.samples:,} samples.",
        "",
        "| where (innermost known frame) | samples | share |",
        "|---|---|---|",
    ]
    for name, count in p.shares.items():
        lines.append(f"| {name} | {count:,} | {100 * count / max(1, p.samples):.1f} % |")
    lines += [
        "",
        "The SDK's own metrics over the same interval:",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in m.items():
        shown = f"{value:,.2f}" if name.endswith(" s") else f"{value:,.0f}"
        lines.append(f"| {name} | {shown} |")
    lines += [
        "",
        f"Per workflow task: {1000 * m['workflow task execution, total s'] / tasks:.1f} ms"
        f" executing; replays after eviction (cache misses): {m['sticky cache misses']:,.0f}"
        f" ({m['workflow task replay, total s']:,.1f} s in all).",
        "",
        "The busiest leaf functions:",
        "",
        "| function | samples |",
        "|---|---|",
    ]
    for leaf, count in p.top:
        lines.append(f"| `{leaf}` | {count:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--burst", type=int, default=1_000, help="breaches due at one instant")
    parser.add_argument("--open-rate", type=float, default=15, help="tickets opened per second")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the worker (e.g. SUPPORT_WORKFLOW_CACHE=1000); repeatable",
    )
    args = parser.parse_args(argv)
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    result = asyncio.run(profile(args.burst, args.open_rate, worker_env))
    result.settings = worker_env
    text = render(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"raw stacks: {result.raw}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
