"""Timeouts and retry policies of the activities that workflows call (deterministic data)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Policy resolution must survive a broken policy file until someone fixes it.
POLICY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
POLICY_TIMEOUT = timedelta(seconds=30)
# Deliveries retry with backoff for a bounded time (about 3 minutes over 8 attempts), then
# the step is recorded as failed on the ticket and in the ledger.
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=8,
)
DELIVERY_TIMEOUT = timedelta(seconds=30)
# The ledger is the system of record: keep trying (writes are idempotent) until it is back.
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)
LEDGER_TIMEOUT = timedelta(seconds=30)
