"""Committed histories of the main ticket paths replay against the current workflow code,
so a change that alters commands without ``workflow.patched`` fails here, not in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from support.models import TicketInput, TicketStatus
from workflows import ALL_WORKFLOWS

HISTORIES = sorted(Path(__file__).with_name("histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    # <path>.<workflow id>[.run<N>].json
    workflow_id = path.name.split(".")[1]
    return WorkflowHistory.from_json(workflow_id, path.read_text())


def test_the_main_paths_are_committed() -> None:
    names = {p.name.split(".")[0] for p in HISTORIES}
    assert names >= {
        "ack_before_breach",
        "breach_and_repeat",
        "severity_changes",
        "out_of_scope_accepted",
        "marked_out_of_scope_expired",
        "community_idle",
        "long_escalation_continued",
        "paged_ack_resolve",
    }


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.name)
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(load(path))


@workflow.defn(name="SupportTicket")
class ChangedTicket:
    """A careless edit: the ticket now sleeps before resolving its policy."""

    @workflow.run
    async def run(self, ticket: TicketInput) -> TicketStatus:
        await workflow.sleep(1)
        raise AssertionError("unreachable in replay")


async def test_replay_catches_a_workflow_change_that_alters_commands() -> None:
    replayer = Replayer(workflows=[ChangedTicket], data_converter=pydantic_data_converter)
    path = next(p for p in HISTORIES if p.name.startswith("ack_before_breach"))
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
