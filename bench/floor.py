"""The engine floor: what the bare engine does on the same server, with the SDK's default
worker settings (its workflow cache is 1,000, the ticket worker's 500), so every ticket
figure is reported beside what Temporal itself achieves in the same run. With
``BENCH_FLOOR_SETTINGS=worker`` the floor's worker takes the ticket worker's settings
instead (``worker.py``'s workflow cache and runner, from the same ``SUPPORT_WORKFLOW_*``
variables): the burst's second floor, a bare workflow evicted from the same cache.

- ``BenchFloor``: sleeps until an instant, then runs one activity that posts to the same
  HTTP sink the tickets' webhook notifications reach (lateness floor); with no instant it
  runs the activity at once and ends (throughput floor: a trivial workflow, one activity).
  With ``signals`` it then waits for that many ``bench_floor_signal`` signals before it
  ends: the client's messages of a ticket opened, acknowledged and resolved (a start and
  two signals) on a bare workflow (the throughput phase's "same messages" floor).

``python -m bench.floor`` runs its worker as a process, like ``worker.py`` for tickets:
default ``Worker`` settings (or the ticket worker's, above), task queue
``SUPPORT_TASK_QUEUE``, server ``TEMPORAL_ADDRESS``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx
    from temporalio.client import Client
    from temporalio.worker import Worker

    from runtime.process import run_until_stopped


FLOOR_SIGNAL = "bench_floor_signal"
SETTINGS_ENV = "BENCH_FLOOR_SETTINGS"  # "sdk" (the default) or "worker"


@dataclass
class FloorInput:
    key: str
    due_at: datetime | None  # None: no timer (throughput floor)
    sink_url: str | None  # None: the activity posts nothing
    signals: int = 0  # signals to wait for after the activity (the same-messages floor)


class Poster:
    """The floor's one activity: the same HTTP post a webhook notification makes."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @activity.defn(name="bench_floor_post")
    async def post(self, request: FloorInput) -> None:
        if request.sink_url is None:
            return
        due = request.due_at.isoformat() if request.due_at else None
        response = await self.http.post(
            f"{request.sink_url}/floor",
            json={"idempotency_key": request.key, "due_at": due},
            headers={"Idempotency-Key": request.key},
        )
        response.raise_for_status()


@workflow.defn(name="BenchFloor")
class BenchFloor:
    def __init__(self) -> None:
        self.signals = 0

    @workflow.signal(name=FLOOR_SIGNAL)
    def signal(self) -> None:
        self.signals += 1

    @workflow.run
    async def run(self, request: FloorInput) -> None:
        if request.due_at is not None:
            delay = request.due_at - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
        await workflow.execute_activity(
            "bench_floor_post", request, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self.signals >= request.signals)


def worker_settings() -> dict[str, Any]:
    """The floor worker's settings beyond its queue: none (the SDK's defaults), or with
    ``BENCH_FLOOR_SETTINGS=worker`` the ticket worker's workflow cache and runner."""
    chosen = os.environ.get(SETTINGS_ENV) or "sdk"
    if chosen == "sdk":
        return {}
    if chosen != "worker":
        raise SystemExit(f"{SETTINGS_ENV}: expected sdk or worker, got {chosen!r}")
    from worker import workflow_cache, workflow_runner

    return {"max_cached_workflows": workflow_cache(), "workflow_runner": workflow_runner()}


async def serve(stop: asyncio.Event) -> None:
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    queue = os.environ["SUPPORT_TASK_QUEUE"]
    async with httpx.AsyncClient(timeout=10.0) as http:
        worker = Worker(
            client,
            task_queue=queue,
            workflows=[BenchFloor],
            activities=[Poster(http).post],
            **worker_settings(),
        )
        async with worker:
            print('{"event": "worker started"}', flush=True)
            await stop.wait()


def main() -> None:
    run_until_stopped(serve)


if __name__ == "__main__":
    main()
