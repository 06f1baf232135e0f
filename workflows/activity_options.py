"""Timeouts and retry policies of the activities that workflows call (deterministic data)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio.common import RetryPolicy

if TYPE_CHECKING:
    from contract.models import Recipient

# Since LOCAL_FIRST_ATTEMPTS the ticket makes an activity's first attempt a local activity
# (in the workflow task that asks for it): one attempt, at most this long (the worker's
# HTTP and SMTP timeouts), so a slow channel holds the ticket's task no longer than that;
# an attempt that fails (or is cut) and may be retried goes to the server as the activity
# below, with its own timeouts and retries.
LOCAL_ATTEMPT_TIMEOUT = timedelta(seconds=10)
LOCAL_ATTEMPT_RETRY = RetryPolicy(maximum_attempts=1)

# Policy resolution: a policy problem (a broken file for a new ticket, a version missing
# from the archive) fails at once (non-retryable); anything else (the archive's database
# down) is retried for a bounded time. Either way the ticket keeps its last good plan,
# records the failure, and tries again ``POLICY_RETRY_AFTER`` later where it needs a plan.
POLICY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
POLICY_TIMEOUT = timedelta(seconds=30)
POLICY_SCHEDULE_TIMEOUT = timedelta(minutes=2)
POLICY_RETRY_AFTER = timedelta(minutes=1)
# Deliveries retry with backoff. The activity itself moves a recipient to its next channel
# after ``failover_after`` and to its fallback target after the last one, and returns when
# everyone is reached or out of options; the schedule-to-close bound is the backstop, after
# which the step is recorded as failed on the ticket and in the ledger. The bound counts
# from when the step was scheduled, so it also covers waiting for a worker: every worker
# down, or a backlog, delays an escalation but must not drop it.
DELIVERY_RETRY_MAX_INTERVAL = timedelta(seconds=30)
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=DELIVERY_RETRY_MAX_INTERVAL,
)
DELIVERY_TIMEOUT = timedelta(seconds=30)
# How long a scheduled delivery may wait for a worker before it counts as failed. A step
# more than a day late is superseded by the ticket's later steps (repeats go on until it is
# acknowledged); anything shorter would drop escalations in an outage of workers.
DELIVERY_OUTAGE_ALLOWANCE = timedelta(days=1)


def delivery_deadline(failover_after: timedelta, recipients: list[Recipient]) -> timedelta:
    """Schedule-to-close of a delivery: every channel of the longest fallback chain gets its
    turn, plus one more turn and room for a last attempt (the server does not start an
    attempt that could outlast this bound), plus a day of waiting for a worker."""
    longest = max((sum(len(r.channels) for r in first.chain()) for first in recipients), default=1)
    attempts = failover_after * (longest + 1) + DELIVERY_RETRY_MAX_INTERVAL + DELIVERY_TIMEOUT
    return attempts + DELIVERY_OUTAGE_ALLOWANCE


# The ledger is the system of record: keep trying (writes are idempotent) until it is back.
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)
LEDGER_TIMEOUT = timedelta(seconds=30)
