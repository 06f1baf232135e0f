"""A ticket escalating for hours keeps each run's history bounded by the policy's history
limit (continue-as-new), so a replay after cache eviction never replays more than one
run's worth of events, however long it has escalated: the property bench/replay.py
measures for a week, here on a short run with a tiny limit."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.worker import Replayer

from bench.replay import history_sizes
from harness.policy import write_policy
from policy.schema import POLICY_FILE_ENV
from runtime.converter import support_data_converter
from tests.conftest import Stack, advance_to, now_second, open_ticket_at, ticket
from tests.record_histories import runs_of
from worker import WORKFLOW_RUNNER
from workflows import ALL_WORKFLOWS

LIMIT = 60  # the smallest the policy schema allows is 50
# A run checks its length between steps, and continues as new once the step it is on has
# landed: it may pass the limit by one step's events (about a dozen).
SLACK = 30


async def test_every_run_of_a_long_escalation_stays_within_the_history_limit(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def edit(policy: dict[str, Any]) -> None:
        policy["limits"] = {"continue_as_new_after_events": LIMIT}

    monkeypatch.setenv(POLICY_FILE_ENV, str(write_policy(tmp_path, edit)))
    t0 = await now_second(stack.env)
    data = ticket(tier="mission_critical", severity="sev1")  # a repeat every 5 minutes
    await open_ticket_at(stack, data, t0)
    await advance_to(stack.env, t0 + timedelta(hours=4, seconds=30))

    runs = await runs_of(stack.env, data.workflow_id)
    events = [history_sizes(run)[0] for run in runs]
    # Five runs in four hours (six before a run's patch markers were rolled up into one,
    # seven before local-first-attempts, when each step's delivery took a workflow task
    # of its own).
    assert len(runs) >= 5, events
    assert max(events) <= LIMIT + SLACK, events
    # The whole escalation is far longer than any run: without continue-as-new, one
    # replay would go through all of it.
    assert sum(events) >= 4 * max(events), events
    # The latest run, carrying the ticket's state, replays (sandboxed, as the tests run).
    replayer = Replayer(
        workflows=ALL_WORKFLOWS,
        data_converter=support_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )
    await replayer.replay_workflow(runs[-1])
