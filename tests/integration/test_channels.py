"""Notification channels against real servers on loopback (HTTP for chat / pager /
webhook, SMTP for email), and delivery semantics: one idempotency key per
workflow/step/recipient, retries that never produce a second message at the sink,
fall-over to the next channel and to a fallback target, loud configuration errors, and
customer contracts' contacts at the steps the contract names."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.channels import ChannelSender, Notification
from activities.ledger import LedgerActivities
from activities.notify import NotifyActivities, StepDeliveryResult
from activities.policy import resolve_ticket_plan
from contract.models import (
    Acknowledge,
    Channel,
    MarkOutOfScope,
    Recipient,
    Resolve,
    Severity,
    StepDelivery,
    TicketInput,
)
from harness.policy import Channels, Edit, webhooks, write_policy
from harness.processes import eventually
from harness.sinks import Mailbox, Sink
from ledger.store import SqlLedger
from tests.conftest import (
    Stack,
    advance_to,
    now_second,
    open_ticket_at,
    running_stack,
    skip,
    sqlite_ledger,
    status_if,
    status_of,
    terminate_open,
    ticket,
)
from tests.unit.tickets import delivery
from worker import WORKFLOW_RUNNER, build_worker
from workflows import ALL_WORKFLOWS

M = timedelta(minutes=1)
T = TypeVar("T")


async def skipping_until(
    env: WorkflowEnvironment,
    what: str,
    probe: Callable[[], Awaitable[T | None] | T | None],
    seconds: int = 300,
) -> T:
    """Skip the test server's clock a second at a time until ``probe()`` (a function or a
    coroutine function) is truthy, at most ``seconds`` of its time; what it returned. The
    wait here is on the server's clock, which only moves when skipped (``eventually`` waits
    in real time)."""
    for _ in range(seconds):
        found = probe()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return cast(T, found)
        await skip(env, timedelta(seconds=1))
    raise AssertionError(f"not reached within {seconds} s of the server's clock: {what}")


async def events_with(ledger: SqlLedger, data: TicketInput, step: str) -> dict[str, Any] | None:
    """The ticket's ledger events by key, once the step's are there."""
    events = {e.key: e for e in await ledger.events(data.ticket_id)}
    return events if f"{data.workflow_id}/{step}" in events else None


@asynccontextmanager
async def policy_stack(
    env: WorkflowEnvironment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *edits: Edit,
    targets: Mapping[str, Channels] | None = None,
) -> AsyncIterator[Stack]:
    """A worker with a SQLite ledger under ``tmp_path``, on the policy that
    ``write_policy(tmp_path, *edits, targets=targets)`` writes there."""
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(write_policy(tmp_path, *edits, targets=targets)))
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        yield stack


def chats(sink: Sink, **paths: str) -> dict[str, Channels]:
    """``targets=``: each target (``duty_engineer`` for duty-engineer) on chat at
    ``<sink>/<path>``."""
    return {
        name.replace("_", "-"): [{"type": "chat", "url": f"{sink.url}/{path}"}]
        for name, path in paths.items()
    }


@dataclass
class Notifier:
    """The notify activities over a SQLite ledger, outside any workflow."""

    ledger: SqlLedger
    notify: NotifyActivities

    async def __call__(self, request: StepDelivery) -> StepDeliveryResult:
        """One attempt of ``deliver_step``, as an activity."""
        return await ActivityEnvironment().run(self.notify.deliver_step, request)


@asynccontextmanager
async def notifier(
    tmp_path: Path, sender: Callable[[httpx.AsyncClient], ChannelSender] = ChannelSender
) -> AsyncIterator[Notifier]:
    """A ``Notifier`` over ``tmp_path / "ledger.sqlite3"``, sending with ``sender``."""
    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    try:
        async with httpx.AsyncClient() as http:
            yield Notifier(ledger, NotifyActivities(ledger, sender(http)))
    finally:
        await ledger.close()


# --- chat ----------------------------------------------------------------------------------


async def test_chat_gets_slack_text_and_blocks_with_the_key_and_inert_customer_text(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINEER_CHAT_URL", f"{sink.url}/engineer")
    async with policy_stack(
        env,
        tmp_path,
        monkeypatch,
        targets={
            "duty-engineer": [{"type": "chat", "url_env": "ENGINEER_CHAT_URL"}],
            "support-lead": [{"type": "chat", "url": f"{sink.url}/lead"}],
        },
    ) as stack:
        t0 = await now_second(env)
        data = ticket(subject="<!channel> outage & <http://evil.example|click here>")
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + 46 * M)
        status = await status_of(handle)
        assert [e.step for e in status.escalations] == ["intake", "warning", "final-warning"]
    wf = data.workflow_id
    keys = [r["key"] for r in sink.messages()]
    assert keys[:2] == [f"{wf}/intake/duty-engineer", f"{wf}/warning/duty-engineer"]
    assert sorted(keys[2:]) == [
        f"{wf}/final-warning/duty-engineer",
        f"{wf}/final-warning/support-lead",
    ]
    first = sink.messages()[0]
    assert first["path"] == "/engineer" and first["content_type"] == "application/json"
    body = first["body"]
    assert f"ticket {data.ticket_id} for customer acme" in body["text"]
    due = (t0 + 60 * M).strftime("%Y-%m-%d %H:%M UTC")
    header, facts, subject, context = body["blocks"]
    assert header == {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": f"New ticket [Premium SEV2] ticket {data.ticket_id} for customer acme",
            "emoji": False,
        },
    }
    assert [f["text"] for f in facts["fields"]] == [
        f"*Ticket*\n{data.ticket_id}",
        "*Customer*\nacme",
        "*Tier / severity*\nPremium SEV2",
        "*Step*\nintake",
        f"*Response due*\n{due}",
    ]
    inert = "&lt;!channel&gt; outage &amp; &lt;http://evil.example|click here&gt;"
    assert subject["text"]["text"] == f"*Subject:* {inert}"
    assert context["elements"][0]["text"] == (
        f"Acknowledge: `temporal workflow signal --workflow-id {wf} --name acknowledge"
        ' --input \'{"agent": "<your name>"}\'`'
    )
    assert inert in body["text"]
    assert "<!channel>" not in str(body)


# --- pager ---------------------------------------------------------------------------------


async def test_pager_triggers_one_incident_per_ticket_and_ack_and_resolve_clear_it(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_ROUTING_KEY", "R0UT1NGKEY")
    pager = {"type": "pager", "url": f"{sink.url}/pager", "routing_key_env": "PD_ROUTING_KEY"}
    async with policy_stack(
        env, tmp_path, monkeypatch, targets={"duty-engineer": [pager]}
    ) as stack:
        t0 = await now_second(env)
        data = ticket(severity="sev1")
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + 31 * M)  # intake and the 30-minute warning page
        await handle.signal("acknowledge", Acknowledge(agent="ana"))
        await skipping_until(env, "the acknowledge event", lambda: len(sink.messages()) == 3)
        await handle.signal("resolve", Resolve(by="ana", summary="fixed"))
        await handle.result()
        events = await stack.ledger.events(data.ticket_id)
    wf = data.workflow_id
    bodies = [r["body"] for r in sink.messages()]
    assert [(b["event_action"], b["dedup_key"], b["routing_key"]) for b in bodies] == [
        ("trigger", wf, "R0UT1NGKEY"),
        ("trigger", wf, "R0UT1NGKEY"),
        ("acknowledge", wf, "R0UT1NGKEY"),
        ("resolve", wf, "R0UT1NGKEY"),
    ]
    trigger = bodies[0]["payload"]
    assert trigger["severity"] == "critical", "sev1 maps to PagerDuty's critical"
    assert trigger["summary"] == (
        f"New ticket [Premium SEV1] ticket {data.ticket_id} for customer acme:"
        " Cluster API returns 500"
    )
    assert (trigger["source"], trigger["component"], trigger["group"], trigger["class"]) == (
        "support-sla",
        "acme",
        "premium",
        "intake",
    )
    assert trigger["custom_details"]["ticket_id"] == data.ticket_id
    assert trigger["custom_details"]["response_due_at"] == (t0 + 60 * M).isoformat()
    assert bodies[1]["payload"]["class"] == "warning"
    assert [r["key"] for r in sink.messages()][2:] == [
        f"{wf}/page-acknowledge/duty-engineer",
        f"{wf}/page-resolve/duty-engineer",
    ]
    step_events = {e.key: e for e in events}
    assert step_events[f"{wf}/intake"].detail["channels"] == {
        "support-queue": "log",
        "duty-engineer": "pager",
    }


async def test_routing_a_paged_ticket_to_a_statement_of_work_resolves_the_page(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    pager = {"type": "pager", "url": f"{sink.url}/pager", "routing_key": "K"}
    async with policy_stack(
        env, tmp_path, monkeypatch, targets={"duty-engineer": [pager]}
    ) as stack:
        data = ticket(severity="sev4")
        handle = await open_ticket_at(stack, data)
        await handle.signal("mark_out_of_scope", MarkOutOfScope(by="ana", reason="consulting"))
        await skipping_until(env, "the resolve event", lambda: len(sink.messages()) == 2)
        assert (await status_of(handle)).state.value == "routed_to_sow"
    bodies = [r["body"] for r in sink.messages()]
    assert [(b["event_action"], b.get("payload", {}).get("severity")) for b in bodies] == [
        ("trigger", "info"),
        ("resolve", None),
    ]


# --- email ---------------------------------------------------------------------------------


async def test_email_says_tier_severity_customer_deadline_in_the_recipients_zone_and_how_to_ack(
    env: WorkflowEnvironment, tmp_path: Path, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with policy_stack(
        env,
        tmp_path,
        monkeypatch,
        lambda p: p["targets"]["support-lead"].update(time_zone="America/Chicago"),
        targets={"support-lead": [{"type": "email", "to": ["lead@support.example"]}]},
    ) as stack:
        t0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
        if t0 <= await env.get_current_time():
            t0 = await now_second(env)
        data = ticket(severity="sev2")
        await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + 61 * M)  # final warning (45 min) and breach (60 min)
    wf = data.workflow_id
    by_key = {str(m["X-Support-Idempotency-Key"]): m for m in mailbox.messages()}
    assert sorted(by_key) == [f"{wf}/breach/support-lead", f"{wf}/final-warning/support-lead"]
    breach = by_key[f"{wf}/breach/support-lead"]
    assert breach["Subject"] == (
        f"[SLA BREACH] Premium SEV2 ticket {data.ticket_id} (acme): Cluster API returns 500"
    )
    assert breach["To"] == "lead@support.example"
    assert breach["From"] == "Support SLA <sla@support.example>"
    assert breach["X-Support-Ticket"] == data.ticket_id
    assert breach["References"] == f"<{wf}@support-sla>"
    body = breach.get_content()
    due = t0 + 60 * M
    local = due.astimezone(__import__("zoneinfo").ZoneInfo("America/Chicago"))
    assert "Tier:      Premium" in body
    assert "Severity:  SEV2" in body
    assert "Customer:  acme" in body
    assert "Subject:   Cluster API returns 500" in body
    assert "Step:      breach (breach)" in body
    assert (
        f"Deadline:  {local.strftime('%Y-%m-%d %H:%M %Z')} ({due.strftime('%Y-%m-%d %H:%M')} UTC)"
        in body
    )
    assert (
        f"temporal workflow signal --workflow-id {wf} --name acknowledge"
        ' --input \'{"agent": "<your name>"}\''
    ) in body
    assert mailbox.envelopes[0] == ["lead@support.example"]


async def test_email_over_starttls_with_auth(tmp_path: Path, tls_mailbox: Mailbox) -> None:
    async with notifier(tmp_path) as deliver:
        request = delivery(
            [Recipient(name="lead", channels=[Channel(type="email", to=["lead@support.example"])])]
        )
        result = await deliver(request)
    assert result.delivered == ["lead"] and result.channels == {"lead": "email"}
    assert tls_mailbox.logins == ["sla"] and tls_mailbox.tls_sessions == 1
    assert [m["X-Support-Idempotency-Key"] for m in tls_mailbox.received] == [
        "ticket-X/breach/lead"
    ]


async def test_a_refused_address_is_a_loud_configuration_error_and_the_next_channel_is_used(
    tmp_path: Path, mailbox: Mailbox
) -> None:
    mailbox.refuse.add("gone@support.example")
    async with notifier(tmp_path) as deliver:
        request = delivery(
            [
                Recipient(
                    name="lead",
                    channels=[
                        Channel(type="email", to=["gone@support.example"]),
                        Channel(type="email", to=["lead@support.example"]),
                    ],
                )
            ]
        )
        result = await deliver(request)
    assert result.delivered == ["lead"]
    assert [m["To"] for m in mailbox.received] == ["lead@support.example"]


# --- delivery semantics --------------------------------------------------------------------


class SlowSender(ChannelSender):
    """Sends for real, after holding each send a while (a worker too busy to finish an
    attempt within its start-to-close timeout)."""

    async def send(self, channel: Channel, message: Notification) -> None:
        await asyncio.sleep(0.5)
        await super().send(channel, message)


async def test_a_retry_that_overlaps_a_slow_attempt_in_the_same_worker_sends_nothing_again(
    tmp_path: Path, sink: Sink
) -> None:
    """Temporal starts the retry of an attempt that outlived its timeout while that attempt
    is still running in the worker: the retry waits for it and finds its delivery."""
    async with notifier(tmp_path, SlowSender) as deliver:
        request = delivery(
            [Recipient(name="eng", channels=[Channel(type="chat", url=f"{sink.url}/eng")])]
        )
        timed_out, retry = await asyncio.gather(
            deliver(request),
            deliver(request),
        )
    assert timed_out.delivered == retry.delivered == ["eng"]
    assert [r["key"] for r in sink.received] == ["ticket-X/breach/eng"]


async def test_a_chat_sink_that_loses_its_answer_after_accepting_still_holds_one_message(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.fail_after_accept = 1  # the intake message is stored, then the answer says 500
    async with policy_stack(
        env, tmp_path, monkeypatch, targets=chats(sink, duty_engineer="engineer")
    ) as stack:
        data = ticket()
        handle = await open_ticket_at(stack, data)
        await skipping_until(env, "the retry", lambda: len(sink.received) == 2)
        status = await status_of(handle)
    key = f"{data.workflow_id}/intake/duty-engineer"
    assert [(r["key"], r["status"]) for r in sink.received] == [(key, 500), (key, 200)]
    assert [r["key"] for r in sink.messages()] == [key], "one message at the sink"
    assert sink.received[0]["body"] == sink.received[1]["body"], "the retry is the same message"
    assert status.escalations[0].failed == []


async def test_a_mailbox_that_loses_its_answer_after_accepting_still_holds_one_message(
    tmp_path: Path, mailbox: Mailbox
) -> None:
    mailbox.fail_after_accept = 1
    async with notifier(tmp_path) as deliver:
        request = delivery(
            [Recipient(name="lead", channels=[Channel(type="email", to=["lead@support.example"])])]
        )
        with pytest.raises(Exception, match="451"):
            await deliver(request)
        retried = await deliver(request)
        again = await deliver(request)
    assert retried.delivered == again.delivered == ["lead"]
    assert len(mailbox.received) == 2, "the retry re-sent the message the answer was lost for"
    first, second = mailbox.received
    assert first["Message-ID"] == second["Message-ID"]
    assert len(mailbox.messages()) == 1, "one message in the mailbox"


async def test_a_replayed_activity_never_sends_again(tmp_path: Path, sink: Sink) -> None:
    async with notifier(tmp_path) as deliver:
        request = delivery(
            [Recipient(name="eng", channels=[Channel(type="chat", url=f"{sink.url}/eng")])]
        )
        first = await deliver(request)
        second = await deliver(request)
    assert first.delivered == second.delivered == ["eng"]
    assert len(sink.received) == 1, "the ledger's delivery log stopped the second send"


async def test_a_failing_channel_falls_over_to_the_next_after_failover_after(
    env: WorkflowEnvironment,
    tmp_path: Path,
    sink: Sink,
    mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channels = [
        {"type": "chat", "url": f"{sink.url}/engineer"},
        {"type": "email", "to": ["engineer@support.example"]},
    ]
    sink.down.add("/engineer")
    async with policy_stack(
        env,
        tmp_path,
        monkeypatch,
        lambda p: p.update(delivery={"failover_after": "PT30S"}),
        targets={"duty-engineer": channels},
    ) as stack:
        data = ticket()
        handle = await open_ticket_at(stack, data)
        await skipping_until(env, "the email", lambda: mailbox.received)
        status = await status_of(handle)
        events = await skipping_until(
            env,
            "the intake's ledger events",
            partial(events_with, stack.ledger, data, "intake"),
            50,
        )
    chat_attempts = [r for r in sink.received if r["path"] == "/engineer"]
    # The local first attempt (local-first-attempts), then the server's activity: its
    # attempts at 0 s and after backoffs of 1, 2, 4, 8, 16 s; those within the 30 s budget
    # (0, 0, 1, 3, 7, 15 s from its schedule) stay on chat; the one at 31 s goes to email.
    assert len(chat_attempts) == 1 + 6
    assert [str(m["X-Support-Idempotency-Key"]) for m in mailbox.received] == [
        f"{data.workflow_id}/intake/duty-engineer"
    ]
    assert status.escalations[0].failed == []
    intake = events[f"{data.workflow_id}/intake"]
    assert intake.detail["channels"]["duty-engineer"] == "email"


async def test_a_target_nobody_reaches_falls_over_to_its_fallback_and_the_failure_is_recorded(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:

    def fallback(policy: dict[str, Any]) -> None:
        policy["targets"]["duty-engineer"]["fallback"] = "duty-manager"
        policy["delivery"] = {"failover_after": "PT20S"}

    sink.down.add("/engineer")
    async with policy_stack(
        env,
        tmp_path,
        monkeypatch,
        fallback,
        targets=chats(sink, duty_engineer="engineer", duty_manager="manager"),
    ) as stack:
        data = ticket()
        handle = await open_ticket_at(stack, data)
        await skipping_until(env, "the fallback", lambda: sink.at("/manager"))
        status = await skipping_until(
            env,
            "the recorded failure",
            partial(status_if, handle, lambda s: s.escalations[0].failed),
            50,
        )
        # The ledger is written in the background (real time, not the server's clock).
        events = await eventually(
            "the failure in the ledger", partial(events_with, stack.ledger, data, "intake/failed")
        )
    wf = data.workflow_id
    assert [r["key"] for r in sink.at("/manager")] == [f"{wf}/intake/duty-manager"]
    [failure] = status.escalations[0].failed
    assert (failure.recipient, failure.fell_over_to) == ("duty-engineer", "duty-manager")
    assert "chat answered 500" in failure.error
    assert "notification_failed" in [h.kind for h in status.history]
    assert events[f"{wf}/intake/failed"].detail["failed"][0]["fell_over_to"] == "duty-manager"


async def test_a_4xx_is_loud_not_retried_and_the_others_are_still_notified(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with policy_stack(
        env,
        tmp_path,
        monkeypatch,
        targets=chats(sink, duty_engineer="engineer", support_lead="lead"),
    ) as stack:
        t0 = await now_second(env)
        data = ticket()
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + 44 * M)
        sink.gone.add("/lead")  # final warning: engineer ok, lead's hook is gone
        await advance_to(env, t0 + 46 * M)
        status = await status_of(handle)
        ledger_kinds = [e.kind for e in await stack.ledger.events(data.ticket_id)]
    final = status.escalations[2]
    assert final.step == "final-warning"
    [failure] = final.failed
    assert failure.recipient == "support-lead" and "chat answered 404" in failure.error
    lead = [r for r in sink.received if r["key"].endswith("/final-warning/support-lead")]
    assert len(lead) == 1, "a 4xx is not retried"
    assert sink.at("/engineer")[-1]["key"].endswith("/final-warning/duty-engineer")
    assert "notification_failed" in ledger_kinds


async def test_a_missing_setting_falls_over_to_the_next_channel_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_HOOK", raising=False)
    monkeypatch.delenv("SUPPORT_SMTP_HOST", raising=False)
    async with notifier(tmp_path) as deliver:
        request = delivery(
            [
                Recipient(
                    name="lead",
                    channels=[
                        Channel(type="chat", url_env="UNSET_HOOK"),
                        Channel(type="email", to=["lead@support.example"]),
                        Channel(type="log"),
                    ],
                )
            ]
        )
        result = await deliver(request)
        assert await deliver.ledger.was_delivered("ticket-X/breach/lead")
    assert result.delivered == ["lead"] and result.channels == {"lead": "log"}


async def test_sow_notifications_say_why_and_what_happens_next(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = webhooks(sink.url, ("advisory-services", "account-team"))
    async with policy_stack(env, tmp_path, monkeypatch, targets=hooks) as stack:
        t0 = await now_second(env)
        data = ticket(category="custom_engineering")
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + timedelta(days=2, minutes=1))
        status = await status_of(handle)
    by_key = {r["key"]: r["body"] for r in sink.messages()}
    sow_id = f"sow-{data.ticket_id}"
    opened = by_key[f"{sow_id}/opened/advisory-services"]
    assert (opened["ticket_id"], opened["kind"], opened["acknowledge"]) == (
        data.ticket_id,
        "sow",
        None,
    )
    text = opened["text"]
    assert "Request outside the Premium support scope" in text
    assert "custom engineering is outside the subscribed service scope" in text
    assert "statement of work" in text and "expires on" in text
    assert f"--workflow-id {sow_id} --name sow_decision" in text
    assert f"{sow_id}/opened/account-team" in by_key
    reminder = by_key[f"{sow_id}/reminder/account-team"]["text"]
    assert reminder.startswith("Statement of work") and "Reminder: no statement-of-work" in (
        reminder
    )
    assert status.state.value == "routed_to_sow"


# --- customer contracts --------------------------------------------------------------------


async def test_mission_critical_contract_contacts_are_reached_at_intake_and_breach_only(
    env: WorkflowEnvironment,
    tmp_path: Path,
    sink: Sink,
    mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def edit(policy: dict[str, Any]) -> None:
        policy["customers"]["example-bank"]["contacts"] = [
            {
                "name": "bank-duty-officer",
                "channels": [{"type": "email", "to": ["duty.officer@bank.example"]}],
                "time_zone": "Europe/London",
                "at_steps": ["intake", "breach"],
            },
            {
                "name": "bank-ops-channel",
                "channels": [{"type": "chat", "url": f"{sink.url}/bank-ops"}],
                "at_steps": ["intake", "breach"],
            },
        ]

    async with policy_stack(env, tmp_path, monkeypatch, edit) as stack:
        t0 = await now_second(env)
        data = ticket(customer_id="example-bank", tier="mission_critical", severity="sev1")
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + 26 * M)  # intake, warning 10, breach 15, repeats 20, 25
        status = await status_of(handle)
    wf = data.workflow_id
    assert [e.step for e in status.escalations] == [
        "intake",
        "warning",
        "breach",
        "repeat-1",
        "repeat-2",
    ]
    assert [r["key"] for r in sink.at("/bank-ops")] == [
        f"{wf}/intake/bank-ops-channel",
        f"{wf}/breach/bank-ops-channel",
    ]
    mails = mailbox.messages()
    assert [str(m["X-Support-Idempotency-Key"]) for m in mails] == [
        f"{wf}/intake/bank-duty-officer",
        f"{wf}/breach/bank-duty-officer",
    ]
    assert all(m["To"] == "duty.officer@bank.example" for m in mails)
    assert "Mission Critical SEV1" in mails[1]["Subject"]
    due = (t0 + 15 * M).astimezone(__import__("zoneinfo").ZoneInfo("Europe/London"))
    assert f"Deadline:  {due.strftime('%Y-%m-%d %H:%M %Z')}" in mails[1].get_content()


# --- rendering -----------------------------------------------------------------------------


def test_pager_severity_follows_ours() -> None:
    request = delivery([])
    for ours, theirs in [
        ("sev1", "critical"),
        ("sev2", "error"),
        ("sev3", "warning"),
        ("sev4", "info"),
    ]:
        message = Notification.of(
            request.model_copy(update={"severity": Severity(ours)}),
            Recipient(name="x", channels=[]),
            "k",
        )
        assert message.pagerduty_event("R")["payload"]["severity"] == theirs


@asynccontextmanager
async def chat_engineer_stack(
    env: WorkflowEnvironment,
    ledger: SqlLedger,
    tmp_path: Path,
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
    **more_targets: list[dict[str, Any]],
) -> AsyncIterator[Stack]:
    """A worker over ``ledger`` (a ledger subclass that fails on purpose, migrated here),
    with the duty engineer on chat at the sink (and ``more_targets``)."""
    more = {k.replace("_", "-"): v for k, v in more_targets.items()}
    targets = {**chats(sink, duty_engineer="engineer"), **more}
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(write_policy(tmp_path, targets=targets)))
    await ledger.migrate()
    queue = f"tq-{uuid.uuid4()}"
    async with httpx.AsyncClient() as http, build_worker(env.client, queue, ledger, http):
        yield Stack(env, env.client, queue, ledger, None)  # type: ignore[arg-type]


class LedgerThatFailsOnce(SqlLedger):
    """The real ledger, except that recording the first delivery fails (a database blip
    right after the sink accepted the message); a subclass names another ``part`` of the
    record whose first write fails."""

    part = "delivered"
    failed = False

    async def record_delivery(self, delivered: Any, events: Any, outcome: Any) -> int:
        if {"delivered": delivered, "events": events}[self.part] and not self.failed:
            self.failed = True
            raise ConnectionError("ledger unavailable")
        return await super().record_delivery(delivered, events, outcome)


async def test_a_retry_after_the_ledger_failed_to_record_a_delivery_does_not_resend(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engineer's message is sent but the ledger cannot record it; the support queue's
    chat is down, so the attempt fails and Temporal retries it. The retry knows from the
    attempt's progress (heartbeat details, kept by the server on failure) that the
    engineer has the message: it sends the queue's and nothing to the engineer again. On
    the real dev server: the time-skipping test server does not keep heartbeat details
    across a failed attempt."""
    ledger = LedgerThatFailsOnce.from_url(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    sink.down.add("/queue")
    queue_chat = [{"type": "chat", "url": f"{sink.url}/queue"}]
    async with chat_engineer_stack(
        dev_server, ledger, tmp_path, sink, monkeypatch, support_queue=queue_chat
    ) as stack:
        data = ticket()
        handle = await open_ticket_at(stack, data)
        await eventually("the failed ledger write", lambda: ledger.failed, 30)
        await eventually(
            "the queue's first attempt",
            lambda: any(r["path"] == "/queue" for r in sink.received),
            30,
        )
        sink.down.discard("/queue")
        await eventually("the retry's delivery", lambda: bool(sink.at("/queue")), 60)
        await handle.signal("resolve", Resolve(by="ana"))
        await handle.result()
    await ledger.close()
    engineer = [r for r in sink.received if r["path"] == "/engineer"]
    queue = [r for r in sink.received if r["path"] == "/queue"]
    assert not queue[0]["stored"] and queue[-1]["stored"], "a second attempt ran"
    assert [r["key"] for r in engineer] == [f"{data.workflow_id}/intake/duty-engineer"], (
        "the retry sent the engineer nothing"
    )


class LedgerThatRefusesEventsOnce(LedgerThatFailsOnce):
    """The real ledger, except that the first batch of events fails (the database is away
    between a delivery and the write of its step's events)."""

    part = "events"


async def test_a_ledger_away_after_a_delivery_leaves_the_events_to_the_workflow_at_once(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery is not retried for the ledger's sake: the workflow writes the step's
    events itself (retrying until the ledger takes them), each once, with who was reached
    on which channel, and nothing is recorded as failed."""
    ledger = LedgerThatRefusesEventsOnce.from_url(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    async with chat_engineer_stack(env, ledger, tmp_path, sink, monkeypatch) as stack:
        data = ticket()
        handle = await open_ticket_at(stack, data)
        key = f"{data.workflow_id}/intake"
        events = await skipping_until(
            env, "the intake's ledger events", partial(events_with, ledger, data, "intake"), 50
        )
        status = await status_of(handle)
        await handle.signal("resolve", Resolve(by="ana"))
        await handle.result()
        history = await handle.fetch_history()
    await ledger.close()
    assert ledger.failed
    assert [r["key"] for r in sink.received] == [f"{data.workflow_id}/intake/duty-engineer"]
    assert sorted(events[key].detail["delivered"]) == ["duty-engineer", "support-queue"]
    assert events[key].detail["channels"]["duty-engineer"] == "chat"
    assert f"{data.workflow_id}/opened" in events
    assert status.escalations[0].failed == []
    # One attempt, the local first one (local-first-attempts): the failure was final, not
    # retried, and no server activity was scheduled for the delivery.
    [failed] = [
        e.marker_recorded_event_attributes.failure
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.HasField("failure")
    ]
    assert failed.application_failure_info.type == "LedgerUnavailable"
    assert failed.application_failure_info.non_retryable
    assert not [
        e
        for e in history.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "deliver_step"
    ]


async def test_a_local_first_attempt_that_runs_out_of_time_logs_whom_it_reached(
    tmp_path: Path, sink: Sink
) -> None:
    """A ticket's local first attempt (local-first-attempts) with one sink hanging stops
    sending before it would be cut, writes whom it reached into the delivery log and fails
    retryably; the server's activity that retries it sends to the rest only."""
    sink.hang.add("/slow")
    recipients = [
        Recipient(name="quick", channels=[Channel(type="chat", url=f"{sink.url}/quick")]),
        Recipient(name="slow", channels=[Channel(type="chat", url=f"{sink.url}/slow")]),
    ]
    request = delivery(recipients)
    async with notifier(tmp_path) as deliver:
        local = ActivityEnvironment()
        local.info = dataclasses.replace(
            local.info, is_local=True, start_to_close_timeout=timedelta(seconds=3)
        )
        began = time.monotonic()
        with pytest.raises(ApplicationError) as failed:
            await local.run(deliver.notify.deliver_step, request)
        assert time.monotonic() - began < 3  # stopped at 3 s less the 2 s margin
        assert failed.value.type == "TransientDeliveryError" and not failed.value.non_retryable
        assert failed.value.details[0]["delivered"] == ["quick"]
        assert await deliver.ledger.was_delivered("ticket-X/breach/quick")
        sink.hang.clear()
        result = await deliver(request)  # the server's activity (not local)
    assert sorted(result.delivered) == ["quick", "slow"]
    assert [r["path"] for r in sink.received if r["path"] == "/quick"] == ["/quick"]


@pytest.mark.parametrize("kind", ["chat", "pager", "webhook"])
async def test_every_http_channel_resends_the_same_message_once_after_a_lost_answer(
    tmp_path: Path, sink: Sink, kind: str
) -> None:
    """The sink stores the message and answers 500: the retry carries the same key and the
    same body (so the sink holds one message), and a further run sends nothing."""
    sink.fail_after_accept = 1
    channel = Channel(
        type=kind, url=f"{sink.url}/{kind}", routing_key="rk" if kind == "pager" else None
    )
    async with notifier(tmp_path) as deliver:
        request = delivery([Recipient(name="eng", channels=[channel])])
        with pytest.raises(Exception, match=f"{kind} answered 500"):
            await deliver(request)
        retried = await deliver(request)
        again = await deliver(request)
    assert retried.channels == {"eng": kind} and again.delivered == ["eng"]
    first, second = sink.received
    assert first["key"] == second["key"] == "ticket-X/breach/eng"
    assert first["body"] == second["body"]
    assert len(sink.messages()) == 1


async def test_an_ack_that_overtakes_a_retrying_page_is_sent_after_the_trigger(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    pager = {"type": "pager", "url": f"{sink.url}/pager", "routing_key": "K"}
    sink.script = [503, 503]  # PagerDuty is briefly unavailable for the intake trigger
    async with policy_stack(
        env, tmp_path, monkeypatch, targets={"duty-engineer": [pager]}
    ) as stack:
        data = ticket()
        handle = await open_ticket_at(stack, data)
        await handle.signal("acknowledge", Acknowledge(agent="ana"))  # at once
        await skipping_until(env, "the acknowledge event", lambda: len(sink.messages()) == 2)
        await handle.signal("resolve", Resolve(by="ana"))
        await handle.result()
    assert [(r["body"]["event_action"], r["status"]) for r in sink.received] == [
        ("trigger", 503),
        ("trigger", 503),
        ("trigger", 202),
        ("acknowledge", 202),
        ("resolve", 202),
    ]


def test_messages_carry_a_signed_acknowledge_link_when_the_service_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runtime.links import AckLinks

    request = delivery([])
    recipient = Recipient(name="duty-engineer", channels=[])
    assert Notification.of(request, recipient, "k").ack_link is None
    secret = "k1:channel-test-secret-Qm8vT2xL5pR9wE3n"
    monkeypatch.setenv("SUPPORT_LINK_SECRET", secret)
    monkeypatch.setenv("SUPPORT_PUBLIC_URL", "https://support.example")
    message = Notification.of(request, recipient, "k")
    link = message.ack_link
    assert link is not None and link.startswith("https://support.example/board/ack/")
    token = link.rsplit("/", 1)[1]
    links = AckLinks(secret, timedelta(hours=1), "https://support.example")
    read = links.read(token)
    assert (read.ticket_id, read.agent) == ("X", "duty-engineer")
    # Every link has its own id (recorded with the acknowledgement it makes).
    again = Notification.of(request, recipient, "k").ack_link
    assert again is not None and links.read(again.rsplit("/", 1)[1]).nonce != read.nonce != ""
    assert f"Acknowledge in the browser: {link}" in message.text()
    assert (
        f"To acknowledge in the browser: {link}"
        in message.email("a@b.example", ["c@d.example"]).get_content()
    )
    button = next(b for b in message.slack_payload()["blocks"] if b["type"] == "actions")
    assert button["elements"][0]["url"] == link
    assert message.pagerduty_event("rk")["payload"]["custom_details"]["acknowledge_url"] == link


def test_a_customers_contact_is_told_the_deadline_but_never_how_to_acknowledge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the vendor's responders acknowledge: a customer contact's message has the
    deadline and no link, no instructions and no raw signal command, on every channel."""
    monkeypatch.setenv("SUPPORT_LINK_SECRET", "k1:channel-test-secret-Qm8vT2xL5pR9wE3n")
    monkeypatch.setenv("SUPPORT_PUBLIC_URL", "https://support.example")
    contact = Recipient(name="bank-noc", channels=[], role="customer")
    message = Notification.of(delivery([contact]), contact, "k")
    assert message.ack_link is None and not message.acknowledgeable
    email = message.email("a@b.example", ["noc@bank.example"]).get_content()
    pager = message.pagerduty_event("rk")["payload"]
    rendered = [
        message.text(),
        email,
        str(message.slack_payload()),
        message.webhook_payload()["text"],
        pager["summary"],
    ]
    for text in rendered:
        assert "acknowledge" not in text.lower().replace("unacknowledged", ""), text
        assert "temporal workflow signal" not in text and "/board/ack/" not in text
    assert "Response due: 2026-11-26 12:00 UTC" in message.text()
    assert "Deadline:  2026-11-26 12:00 UTC" in email
    for fields in (message.webhook_payload(), pager["custom_details"]):
        assert (fields["acknowledge"], fields["acknowledge_url"]) == (None, None)
    # A responder on the same step gets both.
    responder = Recipient(name="duty-engineer", channels=[])
    told = Notification.of(delivery([responder]), responder, "k")
    assert told.ack_link is not None and "temporal workflow signal" in told.text()


@activity.defn(name="deliver_step")
async def cannot_deliver(request: StepDelivery) -> StepDeliveryResult:
    raise ApplicationError("this worker cannot deliver", type="TransientDeliveryError")


async def test_a_delivery_waits_out_an_outage_of_delivering_workers_instead_of_failing(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For ten minutes no worker can run ``deliver_step`` (the only worker on the queue
    fails every attempt at once, the local first attempt included): the intake
    notification is delivered when a full worker is back, late, and not recorded as
    failed. Before, its schedule-to-close (5 min here) counted the wait and dropped it."""
    policy = write_policy(
        tmp_path, targets={"duty-engineer": [{"type": "webhook", "url": f"{sink.url}/e"}]}
    )
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    queue = f"tq-{uuid.uuid4()}"
    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    data = ticket()
    async with httpx.AsyncClient(timeout=5.0) as http:
        without_delivery = Worker(
            env.client,
            task_queue=queue,
            workflows=ALL_WORKFLOWS,
            activities=[
                resolve_ticket_plan,
                LedgerActivities(ledger).record_sla_events,
                cannot_deliver,
            ],
            workflow_runner=WORKFLOW_RUNNER,
            # No sticky queue: the test server never hands a gone worker's sticky tasks on.
            max_cached_workflows=0,
        )
        async with without_delivery:
            t0 = await now_second(env)
            await advance_to(env, t0)
            opened = data.model_copy(update={"opened_at": t0})
            handle = await env.client.start_workflow(
                "SupportTicket", opened, id=data.workflow_id, task_queue=queue
            )
            await skip(env, timedelta(minutes=10))
            assert sink.at("/e") == []
        worker = build_worker(env.client, queue, ledger, http)
        async with worker:
            stack = Stack(env, env.client, queue, ledger, worker, opened=[data.workflow_id])
            try:
                await skipping_until(env, "the intake notification", lambda: sink.at("/e"))
                status = await skipping_until(
                    env,
                    "the intake step's outcome",
                    partial(
                        status_if,
                        handle,
                        lambda s: s.escalations and s.escalations[0].failed is not None,
                    ),
                    50,
                )
                assert not (await env.get_current_time()) < t0 + timedelta(minutes=10)
                assert [r["key"] for r in sink.at("/e")] == [
                    f"{data.workflow_id}/intake/duty-engineer"
                ]
                assert status.escalations[0].failed == []
                assert "notification_failed" not in [h.kind for h in status.history]
            finally:
                await terminate_open(stack)
    await ledger.close()
