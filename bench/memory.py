"""Worker memory against its workflow cache size: ``python -m bench.memory``.

For each cache size (``SUPPORT_WORKFLOW_CACHE``), a fresh dev server and ``worker.py``;
tickets are opened at a pace the worker keeps up with (Premium, 1 h target: nothing falls
due during the run) and the worker's RSS is read every ``--every`` tickets. A sandboxed
workflow kept in the cache holds its own copy of the workflow modules, so the cache, not
the number of open tickets, bounds the worker's memory; a smaller cache costs a replay of
the ticket's (short) history when its next timer or signal arrives. Prints a Markdown
table and writes JSON beside the benchmark report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from bench.run import RESULTS, rss_mb, ticket
from drills.tickets import bounded
from harness.processes import WorkerProcess, clean_env
from harness.temporal import DevServer, connect, server_settings
from intake.core import open_ticket


async def measure(cache: int, tickets: int, rate: float, every: int) -> dict[int, float]:
    """RSS (MB) of a worker with ``cache`` after each ``every`` tickets opened."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-memory-{cache}-"))
    server = DevServer(workdir, extra_args=server_settings())
    queue = f"memory-{cache}"
    worker = WorkerProcess(
        workdir,
        clean_env(
            TEMPORAL_ADDRESS="",  # set below, once the server has its address
            SUPPORT_TASK_QUEUE=queue,
            SUPPORT_LEDGER_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}",
            SUPPORT_WORKFLOW_CACHE=str(cache),
            PYTHONUNBUFFERED="1",
        ),
    )
    samples: dict[int, float] = {}
    try:
        await server.start()
        worker.env["TEMPORAL_ADDRESS"] = server.address
        client = await connect(server.address)
        await worker.start()
        assert worker.process is not None
        pid = worker.process.pid
        samples[0] = rss_mb(pid)
        began = time.monotonic()
        done = 0
        bar = tqdm(total=tickets, desc=f"cache {cache}", unit="ticket", file=sys.stderr)

        async def one(index: int) -> None:
            nonlocal done
            await asyncio.sleep(max(0.0, began + index / rate - time.monotonic()))
            data = ticket(f"M-{index:05d}", datetime.now(UTC).replace(microsecond=0))
            await open_ticket(client, data, queue)
            done += 1
            bar.update(1)
            if done % every == 0:
                mark = done
                await asyncio.sleep(2)  # let the worker finish the latest tickets' tasks
                samples[mark] = rss_mb(pid)

        await bounded((one(i) for i in range(tickets)), limit=64)
        bar.close()
        await asyncio.sleep(5)
        samples[tickets] = rss_mb(pid)
    finally:
        worker.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--caches", default="1000,250,100", help="cache sizes to compare")
    parser.add_argument("--tickets", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=15, help="tickets opened per second")
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--name", default="memory", help="results file name (.md / .json)")
    args = parser.parse_args(argv)
    results = {
        int(c): asyncio.run(measure(int(c), args.tickets, args.rate, args.every))
        for c in args.caches.split(",")
    }
    counts = sorted({n for r in results.values() for n in r})
    lines = [
        "| cache | " + " | ".join(f"{n:,} open" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
        *(
            f"| {c:,} | " + " | ".join(f"{r.get(n, float('nan')):.0f} MB" for n in counts) + " |"
            for c, r in results.items()
        ),
    ]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
