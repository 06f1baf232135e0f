"""Notification channels against a real HTTP server on loopback, and delivery semantics:
one idempotency key per workflow/step/recipient, retries that never send twice, loud
configuration errors that do not stop the other recipients."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.notify import NotifyActivities
from support.models import Channel, Recipient, StepDelivery
from tests.conftest import (
    advance_to,
    now_second,
    open_ticket_at,
    running_stack,
    sqlite_ledger,
    status_of,
    ticket,
    write_policy,
)


@dataclass
class Sink:
    """A webhook receiver: records every request; answers from a script of status codes."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # paths that always answer 500
    gone: set[str] = field(default_factory=set)  # paths that always answer 404
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str) -> int:
        with self.lock:
            if path in self.down:
                return 500
            if path in self.gone:
                return 404
            return self.script.pop(0) if self.script else 200

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.received if r["status"] == 200]


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.answer(self.path)
            state.received.append(
                {
                    "path": self.path,
                    "key": self.headers.get("Idempotency-Key"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body),
                    "status": status,
                }
            )
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"no such hook")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def webhook_policy(tmp_path: Path, sink: Sink, lead_path: str = "/lead") -> Path:
    def edit(policy: dict[str, Any]) -> None:
        policy["targets"]["duty-engineer"]["channels"] = [
            {"type": "webhook", "url": f"{sink.url}/engineer"}
        ]
        policy["targets"]["support-lead"]["channels"] = [
            {"type": "webhook", "url": f"{sink.url}{lead_path}"}
        ]

    return write_policy(tmp_path, edit)


async def test_webhook_gets_slack_json_with_idempotency_key_and_inert_customer_text(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(webhook_policy(tmp_path, sink)))
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        t0 = await now_second(env)
        data = ticket(subject="<!channel> outage & <http://evil.example|click here>")
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + timedelta(minutes=46))
        status = await status_of(handle)
        assert [e.step for e in status.escalations] == ["intake", "warning", "final-warning"]
    keys = [r["key"] for r in sink.received]
    wf = data.workflow_id
    # Steps arrive in order; one step's recipients are notified concurrently.
    assert keys[:2] == [f"{wf}/intake/duty-engineer", f"{wf}/warning/duty-engineer"]
    assert sorted(keys[2:]) == [
        f"{wf}/final-warning/duty-engineer",
        f"{wf}/final-warning/support-lead",
    ]
    first = sink.received[0]
    assert first["path"] == "/engineer" and first["content_type"] == "application/json"
    text = first["body"]["text"]
    assert f"ticket {data.ticket_id} for customer acme" in text
    assert "[Premium SEV2]" in text and "Response due:" in text
    assert f"--workflow-id {wf} --name acknowledge" in text
    assert "&lt;!channel&gt; outage &amp; &lt;http://evil.example|click here&gt;" in text
    assert "<!channel>" not in text


async def test_failed_delivery_is_retried_with_the_same_key_and_sent_once(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(webhook_policy(tmp_path, sink)))
    sink.script = [503, 500]  # the intake delivery fails twice, then succeeds
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        t0 = await now_second(env)
        data = ticket()
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + timedelta(minutes=1))
        for _ in range(100):
            if sink.accepted():
                break
            await env.sleep(timedelta(seconds=5))
        status = await status_of(handle)
    key = f"{data.workflow_id}/intake/duty-engineer"
    assert [r["status"] for r in sink.received if r["key"] == key] == [503, 500, 200]
    assert len(sink.accepted()) == 1
    assert status.escalations[0].failed == []


async def test_misconfigured_channel_is_loud_not_retried_and_others_still_notified(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(webhook_policy(tmp_path, sink)))
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        t0 = await now_second(env)
        data = ticket()
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + timedelta(minutes=44))
        sink.gone.add("/lead")  # final warning: engineer ok, lead's hook is gone
        await advance_to(env, t0 + timedelta(minutes=46))
        status = await status_of(handle)
        ledger_kinds = [e.kind for e in await stack.ledger.events(data.ticket_id)]
    final = status.escalations[2]
    assert final.step == "final-warning"
    assert [(f.recipient, f.channel) for f in final.failed] == [("support-lead", "config")]
    assert "404" in final.failed[0].error
    lead_requests = [r for r in sink.received if r["key"].endswith("/final-warning/support-lead")]
    assert len(lead_requests) == 1, "a 4xx is not retried"
    assert any(r["key"].endswith("/final-warning/duty-engineer") for r in sink.accepted())
    assert "notification_failed" in ledger_kinds
    assert "notification_failed" in [h.kind for h in status.history]


async def test_delivery_falls_over_to_the_next_channel_on_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_HOOK", raising=False)
    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(ledger, http)
        request = delivery(
            [
                Recipient(
                    name="lead",
                    channels=[Channel(type="webhook", url_env="UNSET_HOOK"), Channel(type="log")],
                )
            ]
        )
        result = await ActivityEnvironment().run(notify.deliver_step, request)
    assert result.delivered == ["lead"] and result.failed == []
    assert await ledger.was_delivered("ticket-X/breach/lead")


async def test_a_repeated_activity_does_not_send_again(tmp_path: Path, sink: Sink) -> None:
    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(ledger, http)
        request = delivery(
            [Recipient(name="eng", channels=[Channel(type="webhook", url=f"{sink.url}/eng")])]
        )
        first = await ActivityEnvironment().run(notify.deliver_step, request)
        second = await ActivityEnvironment().run(notify.deliver_step, request)
    assert first.delivered == second.delivered == ["eng"]
    assert len(sink.received) == 1


def delivery(recipients: list[Recipient]) -> StepDelivery:
    return StepDelivery(
        workflow_id="ticket-X",
        ticket_id="X",
        customer_id="acme",
        tier="premium",
        severity="sev1",
        step="breach",
        kind="breach",
        due_at=datetime(2026, 11, 26, 12, tzinfo=UTC),
        response_due_at=datetime(2026, 11, 26, 12, tzinfo=UTC),
        subject="s",
        recipients=recipients,
    )


async def test_a_step_whose_delivery_keeps_failing_is_recorded_not_skipped(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(webhook_policy(tmp_path, sink)))
    sink.down.add("/lead")
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        t0 = await now_second(env)
        data = ticket()
        handle = await open_ticket_at(stack, data, t0)
        # final warning at 45 min to engineer (works) and lead (down for good); retries
        # back off for about 1.5 minutes of server time, then the step is recorded failed.
        await advance_to(env, t0 + timedelta(minutes=50))
        status = await status_of(handle)
        events = {e.key: e for e in await stack.ledger.events(data.ticket_id)}
    final = status.escalations[2]
    assert final.step == "final-warning"
    assert [f.recipient for f in final.failed] == ["support-lead"], "engineer got it"
    lead = [r for r in sink.received if r["key"].endswith("/final-warning/support-lead")]
    assert len(lead) == 8, "bounded retries: the policy's 8 attempts"
    engineer = [r for r in sink.accepted() if r["key"].endswith("/final-warning/duty-engineer")]
    assert len(engineer) == 1, "the retries never sent the engineer's message twice"
    step_event = events[f"{data.workflow_id}/final-warning"]
    assert step_event.kind == "warned" and step_event.detail["delivered"] == ["duty-engineer"]
    assert events[f"{data.workflow_id}/final-warning/failed"].kind == "notification_failed"


async def test_sow_notifications_say_why_and_what_happens_next(
    env: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def edit(policy: dict[str, Any]) -> None:
        for target in ("advisory-services", "account-team"):
            policy["targets"][target]["channels"] = [
                {"type": "webhook", "url": f"{sink.url}/{target}"}
            ]

    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(write_policy(tmp_path, edit)))
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        t0 = await now_second(env)
        data = ticket(category="custom_engineering")
        handle = await open_ticket_at(stack, data, t0)
        await advance_to(env, t0 + timedelta(days=2, minutes=1))
        status = await status_of(handle)
    by_key = {r["key"]: r["body"]["text"] for r in sink.accepted()}
    sow_id = f"sow-{data.ticket_id}"
    opened = by_key[f"{sow_id}/opened/advisory-services"]
    assert "Request outside the Premium support scope" in opened
    assert "custom engineering is outside the subscribed service scope" in opened
    assert "statement of work" in opened and "expires on" in opened
    assert f"--workflow-id {sow_id} --name sow_decision" in opened
    assert f"{sow_id}/opened/account-team" in by_key
    reminder = by_key[f"{sow_id}/reminder/account-team"]
    assert reminder.startswith("Statement of work") and "Reminder: no statement-of-work" in (
        reminder
    )
    assert status.state.value == "routed_to_sow"
