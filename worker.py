"""Run a worker for the support-ticket task queue.

Registers the ``SupportTicket`` and ``StatementOfWork`` workflows and the activities
(policy resolution, notification delivery, SLA ledger), logs JSON lines through structlog,
serves Prometheus metrics and exports traces when configured (``runtime.telemetry``),
and shuts down cleanly on SIGINT / SIGTERM: in-flight activities finish (up to a grace
period) and timers stay with the server, so no escalation is lost while it is down.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

import httpx
import structlog
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.channels import ChannelSender
from activities.ledger import LedgerActivities
from activities.notify import NotifyActivities
from activities.policy import PolicyActivities
from ledger.policy_archive import PolicyArchive
from ledger.store import SlaLedger, SqlLedger
from policy.load import load_policy
from policy.schema import Policy, PolicyError
from runtime.connection import connect, task_queue
from runtime.links import LINK_SECRET_ENV, KeyConfigError, KeyRing
from runtime.logs import configure_logging
from runtime.process import run_until_stopped
from runtime.telemetry import (
    configure_tracing,
    install_runtime,
    poll_interval,
    report_open_tickets,
    shutdown_tracing,
    tracing_enabled,
)
from workflows import ALL_WORKFLOWS

log = structlog.get_logger("support.worker")
# "0": do not migrate the ledger at start, refuse to start unless it is at the head revision.
MIGRATE_ENV = "SUPPORT_LEDGER_MIGRATE"
CACHE_ENV = "SUPPORT_WORKFLOW_CACHE"
# Measured with bench/memory.py (docs/performance.md): with the workflow package passed
# through the sandbox (below) a cached ticket costs about 0.19 MB; 500 keeps the worker
# at 242 MB with 10,000 tickets open, and lets twice as many tickets as 250 wake together
# before the cache thrashes (a ticket that wakes outside it replays its history first).
DEFAULT_WORKFLOW_CACHE = 500

# The SDK's sandbox, for development and the tests: every ticket in its own sandbox with the
# SDK's call restrictions (a non-deterministic call fails the task at once), our workflow
# package taken from outside it instead of executed again for every ticket it loads.
# Safe because the package keeps no mutable state at module or class level (constants
# and functions only; tests/unit/test_worker_settings.py); keep it that way.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)
# "1": run tickets in the sandbox above. The worker's default ("0") runs them without
# it: during a burst the sandbox was a quarter of the worker's Python time, mostly
# building a new sandbox for every ticket that wakes outside the cache (the profile in
# bench/results/README.md). Determinism is still checked where it is cheap: every test
# that runs a ticket runs it sandboxed (tests/conftest.py sets "1"), and CI replays the
# committed histories.
SANDBOX_ENV = "SUPPORT_WORKFLOW_SANDBOX"


# Python's cyclic garbage collector: what start-up loaded (modules, the policy, the
# worker's settings: objects that live as long as the process) is frozen out of every
# later collection, so a full collection walks the cached tickets, not the libraries.
# The collection thresholds stay the interpreter's: at 10,000 or 50,000 allocations a
# burst spent less time collecting, but `python -m bench.memory` with a cache of 1,000
# grew by about 80 KB for every ticket opened past the cache (402 MB at 2,500 open),
# where the defaults held it at 299 MB (docs/performance.md#worker-settings).


def tune_garbage_collector() -> None:
    """Collect what start-up left behind, then freeze the rest (``gc.freeze``)."""
    gc.collect()
    gc.freeze()


def workflow_runner() -> WorkflowRunner:
    """The runner ``SUPPORT_WORKFLOW_SANDBOX`` asks for (docs/performance.md)."""
    value = os.environ.get(SANDBOX_ENV) or "0"
    if value not in ("0", "1"):
        raise SystemExit(f"{SANDBOX_ENV}: expected 0 or 1, got {value!r}")
    return WORKFLOW_RUNNER if value == "1" else UnsandboxedWorkflowRunner()


def build_worker(
    client: Client,
    queue: str,
    ledger: SlaLedger,
    http: httpx.AsyncClient,
    workflows: Sequence[type] = ALL_WORKFLOWS,
) -> Worker:
    ledger_activities = LedgerActivities(ledger)
    # Plans under the pinned policy version, from the archive in the ledger's database.
    policy = PolicyActivities(PolicyArchive(ledger))
    notify = NotifyActivities(ledger, ChannelSender(http))
    activities: Sequence[object] = [
        policy.resolve_ticket_plan,
        ledger_activities.record_sla_events,
        notify.deliver_step,
        notify.update_pages,
    ]
    return worker_with(client, queue, activities, workflows)


def worker_with(
    client: Client,
    queue: str,
    activities: Sequence[object],
    workflows: Sequence[type] = ALL_WORKFLOWS,
) -> Worker:
    """The worker's settings around any set of activities registered under the worker's
    activity names (the real ones above; the workflow tests' fakes in tests/workflow)."""
    return Worker(
        client,
        task_queue=queue,
        workflows=workflows,
        activities=activities,  # type: ignore[arg-type]
        graceful_shutdown_timeout=timedelta(seconds=10),
        max_cached_workflows=workflow_cache(),
        workflow_runner=workflow_runner(),
    )


def workflow_cache() -> int:
    """How many tickets a worker keeps in memory between their tasks
    (``SUPPORT_WORKFLOW_CACHE``; docs/performance.md)."""
    value = os.environ.get(CACHE_ENV) or str(DEFAULT_WORKFLOW_CACHE)
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{CACHE_ENV}: expected a positive whole number, got {value!r}")
    return int(value)


async def run(stop: asyncio.Event, metrics: str | None = None) -> None:
    # A broken policy file never stops running tickets (they resolve their pinned version
    # from the policy archive), so the worker starts anyway and says so loudly; new
    # tickets are refused at intake until the file is fixed.
    try:
        policy: Policy | None = load_policy()
    except PolicyError as err:
        log.error("policy file invalid: new tickets cannot be planned", error=str(err))
        policy = None
    missing = policy.missing_settings(os.environ) if policy else []
    if missing:
        log.warning(
            "channels not configured: deliveries on them fall over to the next channel",
            missing=missing,
        )
    client = await connect(configure_tracing("support-worker"))
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
            policy_version=policy.version if policy else None,
            ledger=ledger.describe(),
            metrics=f"http://{metrics}/metrics" if metrics else "off",
            tracing="otlp" if tracing_enabled() else "off",
            pid=os.getpid(),
        )
        tune_garbage_collector()
        async with worker:
            reporter = (
                asyncio.create_task(
                    report_open_tickets(client, Runtime.default().metric_meter, poll_interval())
                )
                if metrics
                else None
            )
            await stop.wait()
            log.info("worker stopping")
            if reporter is not None:
                reporter.cancel()
    await ledger.close()
    shutdown_tracing()
    log.info("worker stopped")


def main() -> None:
    configure_logging(os.environ.get("SUPPORT_LOG_LEVEL", "INFO"))
    secret = os.environ.get(LINK_SECRET_ENV)
    if secret:
        # A weak or malformed link secret stops the worker at start, as it stops the
        # service: links signed with it could be forged (docs/security.md).
        try:
            KeyRing.parse(secret)
        except KeyConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    metrics = install_runtime()
    run_until_stopped(lambda stop: run(stop, metrics))


if __name__ == "__main__":
    main()
