"""Committed histories of the main ticket paths replay against the current workflow code,
so a change that alters commands without ``workflow.patched`` fails here, not in production.

``tests/histories/`` holds the paths recorded with the current code; each subdirectory
holds the histories recorded before a versioned change (``before-<change>/``), which
tickets still in flight from that release have, and which must keep replaying until the
old branch is removed (README: "Changing workflow code while tickets are in flight")."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from contract.models import TicketInput, TicketStatus
from runtime.converter import support_data_converter
from workflows import ALL_WORKFLOWS

ROOT = Path(__file__).parent.parent / "histories"
HISTORIES = sorted(ROOT.rglob("*.json"))
MAIN_PATHS = {
    "ack_before_breach",
    "breach_and_repeat",
    "severity_changes",
    "out_of_scope_accepted",
    "marked_out_of_scope_expired",
    "community_idle",
    "long_escalation_continued",
    "paged_ack_resolve",
}


def load(path: Path) -> WorkflowHistory:
    # <path>.<workflow id>[.run<N>].json
    workflow_id = path.name.split(".")[1]
    return WorkflowHistory.from_json(workflow_id, path.read_text())


# A change that alters one path only keeps that path's history from before it.
NARROW_CHANGES = {
    "before-retriage-after-ack": {"raise_after_ack"},
    "before-verify-requester": {"verify_requester"},
    # The agent_reply and await_customer signals' handlers taken at apply (e7b7e15).
    "before-signal-guard": {"agent_signals"},
    # A reply the policy could not plan (tests/record_fake_histories.py), recorded by 953c45c.
    "before-resume-awaits-plan": {"resume_awaits_plan"},
    # An acknowledgement during a failing delivery attempt (the same recorder), by 1f1c430.
    "before-cancelled-attempt": {"ack_during_attempt"},
}


def test_the_main_paths_are_committed_for_now_and_before_each_change() -> None:
    releases = {p.parent.relative_to(ROOT).as_posix() for p in HISTORIES}
    assert releases >= {
        ".",
        "before-ledger-batching",
        "before-sla-truth",
        "before-sla-targets",
        "before-keep-wake-timer",
        "before-local-first-attempts",
        "before-rollup",
        *NARROW_CHANGES,
    }
    for release in releases:
        names = {p.name.split(".")[0] for p in HISTORIES if p.parent == ROOT / release}
        assert names >= NARROW_CHANGES.get(release, MAIN_PATHS), release
    # The current code's set holds every path the recorders know (each patch's new branch).
    # Imported here: the sandbox that validates this module's workflow must not see it.
    from tests.record_histories import PATHS

    current = {p.name.split(".")[0] for p in HISTORIES if p.parent == ROOT}
    assert current >= {*PATHS, "resume_awaits_plan", "ack_during_attempt"}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.relative_to(ROOT).as_posix())
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=support_data_converter)
    await replayer.replay_workflow(load(path))


@workflow.defn(name="SupportTicket")
class ChangedTicket:
    """A careless edit: the ticket now sleeps before resolving its policy."""

    @workflow.run
    async def run(self, ticket: TicketInput) -> TicketStatus:
        await workflow.sleep(1)
        raise AssertionError("unreachable in replay")


async def test_replay_catches_a_workflow_change_that_alters_commands() -> None:
    replayer = Replayer(workflows=[ChangedTicket], data_converter=support_data_converter)
    path = ROOT / "ack_before_breach.ticket-H-ack-before-breach.json"
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
