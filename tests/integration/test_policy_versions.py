"""Pinned policy versions: the ``resolve_ticket_plan`` activity plans a ticket under the
version it pinned, from the archive, after the file changed or broke; a new ticket with a
broken file fails at once (non-retryable, naming file and field, logged at error level);
a database error stays retryable. Then tickets on the time-skipping server: a re-triage
after the file changed and after it broke keeps the pinned rules, and adopting a new
version is explicit and recorded. Last, the pure half of ``support-ops policy diff``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowQueryFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.policy import PolicyActivities, resolve_ticket_plan
from contract.client import apply_action
from contract.models import (
    AdoptPolicy,
    ChangeSeverity,
    PlanRequest,
    Severity,
    TicketPlan,
    TicketStatus,
    Tier,
)
from harness.policy import policy_data, write_policy
from harness.processes import eventually
from intake.core import open_ticket
from ledger.policy_archive import (
    ArchivedPolicy,
    MemoryPolicyStore,
    PlanChange,
    PolicyArchive,
    plan_changes,
    plan_under,
)
from policy.load import default_policy_path, load_policy
from tests.conftest import (
    advance_to,
    now_second,
    open_ticket_at,
    running_stack,
    sqlite_ledger,
    status_of,
    ticket,
    until_status,
)

H, M = timedelta(hours=1), timedelta(minutes=1)
T0 = datetime(2026, 12, 7, 9, tzinfo=UTC)  # a Monday


def policy_file(path: Path, version: str, premium_target: str = "PT1H", **edits: Any) -> Path:
    """The shipped policy at ``version`` with Premium's response target, written to ``path``."""

    def edit(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["response_target"] = premium_target
        data.update(edits)

    return write_policy(path.parent, edit, version=version, name=path.name)


def request(pinned: str | None = None, severity: Severity | None = None) -> PlanRequest:
    return PlanRequest(
        ticket=ticket("T-PIN", tier="premium", severity="sev2", opened_at=T0),
        severity=severity,
        opened_at=T0,
        pinned_version=pinned,
        tier=Tier.PREMIUM if pinned else None,
    )


async def resolve(activities: PolicyActivities, plan_request: PlanRequest) -> TicketPlan:
    result: TicketPlan = await ActivityEnvironment().run(
        activities.resolve_ticket_plan, plan_request
    )
    return result


# --- the activity ---------------------------------------------------------------------------


async def test_a_pinned_version_is_resolved_from_the_archive_after_the_file_changed_and_broke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(path))
    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    try:
        policy_file(path, "v1")
        first = await resolve(PolicyActivities(ledger), request())
        assert (first.policy_version, first.response_due_at) == ("v1", T0 + H)

        # The file moves on to v2 (Premium 2 h): new tickets get v2, v1's tickets keep 1 h,
        # also on a worker that starts now (nothing cached: the rules come from the archive).
        policy_file(path, "v2", "PT2H")
        worker = PolicyActivities(ledger)
        new = await resolve(worker, request())
        assert (new.policy_version, new.response_due_at) == ("v2", T0 + 2 * H)
        for activities in (worker, PolicyActivities(ledger)):
            pinned = await resolve(activities, request("v1", Severity.SEV1))
            assert (pinned.policy_version, pinned.severity) == ("v1", Severity.SEV1)
            assert pinned.response_due_at == T0 + H
            assert [s.due_at for s in pinned.steps][:4] == [
                T0,
                T0 + 30 * M,
                T0 + 45 * M,
                T0 + H,
            ], "the ladder is v1's: shares of its 1 h target"

        # The file breaks: pinned tickets carry on under their archived rules.
        path.write_text("version: v3\ntiers: [\n")
        caplog.set_level(logging.INFO)
        for activities in (worker, PolicyActivities(ledger)):
            assert (await resolve(activities, request("v1"))).response_due_at == T0 + H
            assert (await resolve(activities, request("v2"))).response_due_at == T0 + 2 * H
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        # ... and a new ticket is refused at once, naming the file and what is wrong.
        with pytest.raises(ApplicationError) as refused:
            await resolve(PolicyActivities(ledger), request())
        assert refused.value.type == "PolicyError" and refused.value.non_retryable
        assert refused.value.message.startswith(f"{path}: not valid YAML")
        [logged] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert logged.getMessage().startswith("ticket policy not resolved")
        assert logged.__dict__["error"] == refused.value.message
    finally:
        await ledger.close()


async def test_a_new_ticket_with_an_invalid_file_fails_naming_the_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = policy_file(tmp_path / "policy.yaml", "v1", "PT90X")
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(path))
    with pytest.raises(ApplicationError) as refused:
        await resolve(PolicyActivities(MemoryPolicyStore()), request())
    assert (refused.value.type, refused.value.non_retryable) == ("PolicyError", True)
    assert refused.value.message.startswith(f"{path}: tiers.premium.response_target: ")


async def test_an_edit_that_kept_its_version_is_refused_for_new_tickets_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = policy_file(tmp_path / "policy.yaml", "v1")
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(path))
    activities = PolicyActivities(MemoryPolicyStore())
    await resolve(activities, request())
    policy_file(path, "v1", "PT2H")
    with pytest.raises(ApplicationError) as refused:
        await resolve(activities, request())
    assert (refused.value.type, refused.value.non_retryable) == ("PolicyError", True)
    assert refused.value.message.startswith(f"{path}: version: 'v1' is already archived")
    assert (await resolve(activities, request("v1"))).response_due_at == T0 + H


async def test_a_pinned_version_that_is_nowhere_is_unavailable_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy_file(tmp_path / "p.yaml", "v2")))
    for activity in (
        PolicyActivities(MemoryPolicyStore()).resolve_ticket_plan,
        resolve_ticket_plan,
    ):
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(activity, request("v1"))
        assert (refused.value.type, refused.value.non_retryable) == (
            "PolicyVersionUnavailable",
            True,
        )
        assert refused.value.message == (
            f"policy v1 is not in the policy archive (the policy file {tmp_path / 'p.yaml'}"
            " is version v2)"
        )
    # The archive-less activity still plans under the file's own version.
    plan = await ActivityEnvironment().run(resolve_ticket_plan, request("v2"))
    assert plan.response_due_at == T0 + H


class UnreachableStore(MemoryPolicyStore):
    async def policy_document(self, version: str) -> str | None:
        raise ConnectionError("the ledger's database is away")

    async def archive_policy(
        self, version: str, digest: str, document: str, source: str = ""
    ) -> str | None:
        raise ConnectionError("the ledger's database is away")


async def test_a_database_error_is_an_ordinary_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy_file(tmp_path / "p.yaml", "v1")))
    for pinned in (None, "v0"):
        with pytest.raises(ConnectionError):
            await resolve(PolicyActivities(UnreachableStore()), request(pinned))


# --- tickets on the time-skipping server ----------------------------------------------------


async def test_a_ticket_keeps_its_version_through_a_changed_and_a_broken_file_until_adopting(
    env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = policy_file(tmp_path / "policy.yaml", "pin-1")
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(path))
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        t0 = await now_second(env)
        handle = await open_ticket_at(stack, ticket(tier="premium", severity="sev3"), t0)
        assert (await status_of(handle)).response_due_at == t0 + H

        # The file changes to pin-2 (Premium 2 h); a re-triage keeps pin-1's rules.
        policy_file(path, "pin-2", "PT2H")
        await advance_to(env, t0 + 5 * M)
        await handle.signal("change_severity", ChangeSeverity(severity="sev2", by="triage"))
        status = await until_status(handle, "severity sev2", lambda s: s.severity is Severity.SEV2)
        assert (status.policy_version, status.response_due_at) == ("pin-1", t0 + H)
        newer = await open_ticket_at(stack, ticket(tier="premium", severity="sev3"))
        assert (await status_of(newer)).policy_version == "pin-2"

        # The file breaks: the next re-triage still plans under pin-1, and nothing is wrong.
        path.write_text("version: pin-3\ntiers: {premium: {response_target: soon}}\n")
        await handle.signal("change_severity", ChangeSeverity(severity="sev1", by="triage"))
        status = await until_status(handle, "severity sev1", lambda s: s.severity is Severity.SEV1)
        assert (status.policy_version, status.response_due_at) == ("pin-1", t0 + H)
        assert status.policy_problem is None

        # A new ticket cannot be planned under the broken file: it says why.
        fresh = ticket(tier="premium", opened_at=await now_second(env))
        assert (await open_ticket(stack.client, fresh, stack.task_queue)).created
        stack.opened.append(fresh.workflow_id)
        problem = await planning_problem(stack.client.get_workflow_handle(fresh.workflow_id))
        assert f"{path}: tiers" in problem

        # Moving to pin-2 is explicit: the update answers with the new deadline, recorded.
        result = await apply_action(
            stack.client,
            handle.id.removeprefix("ticket-"),
            "adopt_policy",
            AdoptPolicy(version="pin-2", by="ops-lead", reason="new Premium target"),
        )
        assert result.status is not None and not result.queued
        assert (result.status.policy_version, result.status.response_due_at) == (
            "pin-2",
            t0 + 2 * H,
        )
        [adopted] = [h for h in result.status.history if h.kind == "policy_adopted"]
        assert adopted.by == "ops-lead" and "pin-1 -> pin-2" in (adopted.detail or "")
        recorded = await ledger_event(stack.ledger, status.ticket_id, "policy_adopted")
        assert (recorded.detail["before"], recorded.detail["after"]) == ("pin-1", "pin-2")
        assert recorded.detail["reason"] == "new Premium target"


async def ledger_event(ledger: Any, ticket_id: str, kind: str) -> Any:
    async def found() -> Any:
        return next((e for e in await ledger.events(ticket_id) if e.kind == kind), None)

    return await eventually(f"a {kind} event in the ledger", found, every=0.02)


async def planning_problem(handle: Any) -> str:
    async def problem() -> str | None:
        try:
            await handle.query("status", result_type=TicketStatus)
        except WorkflowQueryFailedError as err:
            if "still planning its SLA: " in str(err):
                return str(err)
        return None

    return await eventually("the ticket's planning problem", problem, every=0.02)


# --- what a move to another version changes (pure) -----------------------------------------


def status(tier: str = "premium", severity: str = "sev2", **fields: Any) -> TicketStatus:
    data: dict[str, Any] = {
        "ticket_id": "T-1",
        "customer_id": "acme",
        "tier": tier,
        "severity": severity,
        "category": "incident",
        "state": "open",
        "opened_at": T0,
        "policy_version": "v1",
    }
    return TicketStatus.model_validate(data | fields)


def edited(**tiers: Any) -> Any:
    def edit(data: dict[str, Any]) -> None:
        data["version"] = "v2"
        for tier, keys in tiers.items():
            data["tiers"][tier].update(keys)

    return edit


def test_an_unchanged_policy_changes_no_plan() -> None:
    policy = load_policy(default_policy_path())
    for tier, severity in (("premium", "sev2"), ("standard", "sev3"), ("community", "sev4")):
        plan = plan_under(policy, status(tier, severity))
        assert plan_changes(plan, plan) == []


def test_a_slower_premium_target_moves_the_deadline_and_every_share_of_it(tmp_path: Path) -> None:
    before = plan_under(load_policy(default_policy_path()), status())
    after = plan_under(
        load_policy(write_policy(tmp_path, edited(premium={"response_target": "PT2H"}))), status()
    )
    assert plan_changes(before, after) == [
        PlanChange("response due", "2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z"),
        PlanChange("warning due", "2026-12-07T09:30:00Z", "2026-12-07T10:00:00Z"),
        PlanChange("final-warning due", "2026-12-07T09:45:00Z", "2026-12-07T10:30:00Z"),
        PlanChange("breach due", "2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z"),
        PlanChange("repeat first due", "2026-12-07T10:30:00Z", "2026-12-07T11:30:00Z"),
    ]
    # Standard and Community tickets are untouched by a Premium edit.
    for tier, severity in (("standard", "sev3"), ("community", "sev4")):
        assert (
            plan_changes(
                plan_under(load_policy(default_policy_path()), status(tier, severity)),
                plan_under(
                    load_policy(
                        write_policy(tmp_path, edited(premium={"response_target": "PT2H"}))
                    ),
                    status(tier, severity),
                ),
            )
            == []
        )


def test_ladder_changes_name_steps_recipients_cadence_and_limits(tmp_path: Path) -> None:
    default = load_policy(default_policy_path())
    ladder = [dict(step) for step in yaml_ladder("premium")]
    ladder[3]["targets"] = ["support-lead", "duty-manager", "incident-commander"]  # breach
    ladder[4] = ladder[4] | {"repeat_every": "PT1H", "max_repeats": 3}
    del ladder[2]  # final-warning
    ladder.insert(
        1,
        {
            "name": "heads-up",
            "kind": "warning",
            "at": {"offset": "PT10M"},
            "targets": ["support-lead"],
        },
    )
    after = load_policy(write_policy(tmp_path, edited(premium={"ladder": ladder})))
    assert plan_changes(plan_under(default, status()), plan_under(after, status())) == [
        PlanChange(
            "final-warning", "due 2026-12-07T09:45:00Z to duty-engineer, support-lead", "none"
        ),
        PlanChange(
            "breach recipients",
            "support-lead, duty-manager",
            "support-lead, duty-manager, incident-commander",
        ),
        PlanChange("repeat first due", "2026-12-07T10:30:00Z", "2026-12-07T11:00:00Z"),
        PlanChange("repeat every", "30m", "1h"),
        PlanChange("repeat repeats", "until acknowledged", "3"),
        PlanChange("heads-up", "none", "due 2026-12-07T09:10:00Z to support-lead"),
    ]


def test_a_channel_change_for_the_same_recipient_is_a_change(tmp_path: Path) -> None:
    def page_the_manager(data: dict[str, Any]) -> None:
        data["version"] = "v2"
        data["targets"]["duty-manager"]["channels"] = [
            {"type": "pager", "routing_key": "K"},
            {"type": "log"},
        ]

    before = plan_under(load_policy(default_policy_path()), status())
    after = plan_under(load_policy(write_policy(tmp_path, page_the_manager)), status())
    changes = plan_changes(before, after)
    assert [c.what for c in changes] == ["breach channels", "repeat channels"]
    assert changes[0].before == "support-lead: support-lead(log); duty-manager: duty-manager(log)"
    assert (
        changes[0].after == "support-lead: support-lead(log); duty-manager: duty-manager(pager+log)"
    )


def yaml_ladder(tier: str) -> list[dict[str, Any]]:
    ladder: list[dict[str, Any]] = policy_data()["tiers"][tier]["ladder"]
    return ladder


async def test_the_memory_store_lists_what_it_archived() -> None:
    store = MemoryPolicyStore()
    archive = PolicyArchive(store, default_policy_path())
    policy = await archive.current()
    [row] = await store.policy_versions()
    assert isinstance(row, ArchivedPolicy) and row.version == policy.version
    assert await archive.version(policy.version) is policy
