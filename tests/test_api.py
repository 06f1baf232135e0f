"""The HTTP API served by uvicorn on loopback, in front of the time-skipping server: intake
(idempotent, validated, authenticated), status, agent actions and their refusals."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from temporalio.client import Client
from temporalio.service import RPCError

from service.app import create_app
from service.auth import Settings, TokenConfigError, parse_tokens
from tests.conftest import Stack, now_second

INTAKE = "intake-token-0123456789"
AGENT_ANA = "agent-ana-0123456789"
AGENT_BOB = "agent-bob-0123456789"


def settings() -> Settings:
    return Settings(
        intake_tokens={INTAKE: "acme-portal"},
        agent_tokens={AGENT_ANA: "ana", AGENT_BOB: "bob"},
        link_secret="test-secret",
    )


@pytest_asyncio.fixture(loop_scope="session")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The service on a free loopback port, talking to the test's Temporal and worker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(client=stack.client, settings=settings(), queue=stack.task_queue)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        http.stack = stack  # type: ignore[attr-defined]
        yield http
    server.should_exit = True
    await task


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body(ticket_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "customer_id": "acme",
        "tier": "premium",
        "severity": "sev2",
        "subject": "Checkout API returns 500",
        "reporter_email": "ops@acme.example",
    } | fields


async def opened(api: httpx.AsyncClient, ticket_id: str, **fields: Any) -> dict[str, Any]:
    response = await api.post("/api/tickets", json=body(ticket_id, **fields), headers=auth(INTAKE))
    assert response.status_code == 201, response.text
    api.stack.opened.append(f"ticket-{ticket_id}")  # type: ignore[attr-defined]
    return response.json()


async def until(api: httpx.AsyncClient, ticket_id: str, check: Any) -> dict[str, Any]:
    for _ in range(200):
        response = await api.get(f"/api/tickets/{ticket_id}", headers=auth(AGENT_ANA))
        if response.status_code == 200 and check(response.json()):
            return response.json()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{ticket_id}: never reached the expected state: {response.text}")


def tid() -> str:
    import uuid

    return f"API-{uuid.uuid4().hex[:10]}"


async def test_intake_opens_a_ticket_and_answers_the_promised_deadline(
    api: httpx.AsyncClient,
) -> None:
    t0 = await now_second(api.stack.env)  # type: ignore[attr-defined]
    ticket_id = tid()
    result = await opened(api, ticket_id, opened_at=t0.isoformat())
    assert result == {
        "ticket_id": ticket_id,
        "workflow_id": f"ticket-{ticket_id}",
        "created": True,
        "state": "open",
        "tier": "premium",
        "severity": "sev2",
        "response_target": "PT1H",
        "response_due_at": (t0 + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    status = await until(api, ticket_id, lambda s: s["policy_version"] is not None)
    assert datetime.fromisoformat(status["response_due_at"]) == t0 + timedelta(hours=1)
    assert status["state"] == "open" and status["escalations"][0]["step"] == "intake"


async def test_intake_is_idempotent_on_ticket_id_and_refuses_a_reused_id(
    api: httpx.AsyncClient,
) -> None:
    ticket_id = tid()
    first = await opened(api, ticket_id)
    again = await api.post("/api/tickets", json=body(ticket_id), headers=auth(INTAKE))
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["response_due_at"] == first["response_due_at"]
    other = await api.post(
        "/api/tickets", json=body(ticket_id, customer_id="globex"), headers=auth(INTAKE)
    )
    assert other.status_code == 409
    assert other.json() == {
        "error": "conflict",
        "message": f"ticket_id '{ticket_id}' already belongs to another ticket",
    }


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"tier": "gold"}, "tier", "Input should be 'community', 'standard', 'premium' or"),
        ({"customer_id": None}, "customer_id", "Field required"),
        ({"severity": "sev9"}, "severity", "Input should be 'sev1', 'sev2', 'sev3' or 'sev4'"),
        ({"reporter_email": "not-mail"}, "reporter_email", "String should match pattern"),
        ({"opened_at": "2020-01-01T00:00:00Z"}, "opened_at", "more than 30 days in the past"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
async def test_invalid_intake_is_422_with_field_errors_and_starts_nothing(
    api: httpx.AsyncClient, change: dict[str, Any], field: str, message: str
) -> None:
    ticket_id = tid()
    data = {k: v for k, v in (body(ticket_id) | change).items() if v is not None}
    response = await api.post("/api/tickets", json=data, headers=auth(INTAKE))
    assert response.status_code == 422
    reply = response.json()
    assert reply["error"] == "invalid"
    assert [e["field"] for e in reply["errors"]] == [field]
    assert message in reply["errors"][0]["message"]
    client: Client = api.stack.client  # type: ignore[attr-defined]
    with pytest.raises(RPCError):
        await client.get_workflow_handle(f"ticket-{ticket_id}").describe()


async def test_a_body_that_is_not_a_ticket_object_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/tickets", json=["x"], headers=auth(INTAKE))
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "(ticket)", "message": "expected a JSON object, got list"}
    ]
    response = await api.post(
        "/api/tickets",
        content=b"{not json",
        headers=auth(INTAKE) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422


async def test_refusals_are_401_403_404_with_a_json_body(api: httpx.AsyncClient) -> None:
    cases = [
        (api.post("/api/tickets", json=body(tid())), 401, "unauthenticated"),
        (api.post("/api/tickets", json=body(tid()), headers=auth("wrong-token")), 401, None),
        (api.post("/api/tickets", json=body(tid()), headers=auth(AGENT_ANA)), 403, "forbidden"),
        (api.post(f"/api/tickets/{tid()}/ack", headers=auth(INTAKE)), 403, "forbidden"),
        (api.get(f"/api/tickets/{tid()}"), 401, "unauthenticated"),
        (api.get(f"/api/tickets/{tid()}", headers=auth(AGENT_ANA)), 404, "not_found"),
        (api.post(f"/api/tickets/{tid()}/ack", headers=auth(AGENT_ANA)), 404, "not_found"),
        (api.get("/api/nothing-here", headers=auth(AGENT_ANA)), 404, "not_found"),
    ]
    for request, status, code in cases:
        response = await request
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["message"]
        if code:
            assert response.json()["error"] == code


async def test_agents_acknowledge_and_resolve_and_a_second_ack_is_a_409(
    api: httpx.AsyncClient,
) -> None:
    ticket_id = tid()
    await opened(api, ticket_id)
    await until(api, ticket_id, lambda s: s["policy_version"] is not None)
    ack = await api.post(
        f"/api/tickets/{ticket_id}/ack", json={"note": "looking"}, headers=auth(AGENT_ANA)
    )
    assert (ack.status_code, ack.json()) == (
        202,
        {"ticket_id": ticket_id, "action": "ack", "accepted": True},
    )
    status = await until(api, ticket_id, lambda s: s["state"] == "acknowledged")
    assert status["acknowledged_by"] == "ana", "the agent is who the token says"
    again = await api.post(f"/api/tickets/{ticket_id}/ack", headers=auth(AGENT_BOB))
    assert again.status_code == 409
    assert again.json()["message"].startswith(
        f"cannot ack: ticket {ticket_id} is acknowledged (by ana at "
    )
    resolved = await api.post(
        f"/api/tickets/{ticket_id}/resolve", json={"summary": "fixed"}, headers=auth(AGENT_BOB)
    )
    assert resolved.status_code == 202
    status = await until(api, ticket_id, lambda s: s["state"] == "resolved")
    assert status["resolved_by"] == "bob"
    late = await api.post(
        f"/api/tickets/{ticket_id}/severity", json={"severity": "sev1"}, headers=auth(AGENT_ANA)
    )
    assert late.status_code == 409 and "is resolved" in late.json()["message"]


async def test_severity_and_out_of_scope_take_validated_bodies(api: httpx.AsyncClient) -> None:
    ticket_id = tid()
    await opened(api, ticket_id)
    await until(api, ticket_id, lambda s: s["policy_version"] is not None)
    bad = await api.post(
        f"/api/tickets/{ticket_id}/severity", json={"severity": "urgent"}, headers=auth(AGENT_ANA)
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "severity"
    no_reason = await api.post(
        f"/api/tickets/{ticket_id}/out-of-scope", json={}, headers=auth(AGENT_ANA)
    )
    assert no_reason.status_code == 422
    assert no_reason.json()["errors"] == [{"field": "reason", "message": "Field required"}]
    up = await api.post(
        f"/api/tickets/{ticket_id}/severity",
        json={"severity": "sev1", "reason": "outage"},
        headers=auth(AGENT_ANA),
    )
    assert up.status_code == 202
    status = await until(
        api, ticket_id, lambda s: "severity_changed" in [h["kind"] for h in s["history"]]
    )
    assert status["severity"] == "sev1"
    out = await api.post(
        f"/api/tickets/{ticket_id}/out-of-scope",
        json={"reason": "custom integration work"},
        headers=auth(AGENT_ANA),
    )
    assert out.status_code == 202
    status = await until(api, ticket_id, lambda s: s["state"] == "routed_to_sow")
    assert status["sow"]["reason"] == "custom integration work"


async def test_health_reports_the_temporal_connection(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "temporal": True})


def test_token_settings_name_the_variable_and_entry() -> None:
    assert parse_tokens("V", "web:abcdefghijklmnop, portal:0123456789abcdef") == {
        "abcdefghijklmnop": "web",
        "0123456789abcdef": "portal",
    }
    with pytest.raises(TokenConfigError, match="V: entry 2 must be name:token"):
        parse_tokens("V", "web:abcdefghijklmnop,short:123")
