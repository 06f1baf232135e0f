"""Run a worker for the support-ticket task queue.

Registers the ``SupportTicket`` and ``StatementOfWork`` workflows and the activities
(policy resolution, notification delivery, SLA ledger), logs JSON lines through structlog,
and shuts down cleanly on SIGINT / SIGTERM: in-flight activities finish (up to a grace
period) and timers stay with the server, so no escalation is lost while it is down.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from datetime import timedelta

import httpx
import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.channels import ChannelSender
from activities.ledger import LedgerActivities
from activities.notify import NotifyActivities
from activities.policy import resolve_ticket_plan
from ledger.store import SlaLedger, SqlLedger
from support.connection import connect, task_queue
from support.logs import configure_logging, forward_core_logs
from support.policy import load_policy
from workflows import ALL_WORKFLOWS

log = structlog.get_logger("support.worker")
# "0": do not migrate the ledger at start, refuse to start unless it is at the head revision.
MIGRATE_ENV = "SUPPORT_LEDGER_MIGRATE"


def build_worker(
    client: Client,
    queue: str,
    ledger: SlaLedger,
    http: httpx.AsyncClient,
    workflows: Sequence[type] = ALL_WORKFLOWS,
) -> Worker:
    ledger_activities = LedgerActivities(ledger)
    notify = NotifyActivities(ledger, ChannelSender(http))
    activities: Sequence[object] = [
        resolve_ticket_plan,
        ledger_activities.record_sla_events,
        notify.deliver_step,
        notify.update_pages,
    ]
    return Worker(
        client,
        task_queue=queue,
        workflows=workflows,
        activities=activities,  # type: ignore[arg-type]
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def run(stop: asyncio.Event) -> None:
    policy = load_policy()  # fail at start, loudly, on a broken policy file
    missing = policy.missing_settings(os.environ)
    if missing:
        log.warning(
            "channels not configured: deliveries on them fall over to the next channel",
            missing=missing,
        )
    client = await connect()
    queue = task_queue()
    ledger = SqlLedger.from_url()
    if os.environ.get(MIGRATE_ENV, "1") == "0":
        await ledger.check_schema()  # migrations are run by a one-shot job in production
    else:
        await ledger.migrate()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        worker = build_worker(client, queue, ledger, http)
        log.info(
            "worker started",
            task_queue=queue,
            namespace=client.namespace,
            policy_version=policy.version,
            ledger=ledger.describe(),
            pid=os.getpid(),
        )
        async with worker:
            await stop.wait()
            log.info("worker stopping")
    await ledger.close()
    log.info("worker stopped")


def main() -> None:
    configure_logging(os.environ.get("SUPPORT_LOG_LEVEL", "INFO"))
    forward_core_logs()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(runner())


if __name__ == "__main__":
    main()
