"""The HTTP API served by uvicorn on loopback, in front of the time-skipping server: intake
(idempotent, validated, authenticated, entitled, scoped to the token's integration),
status, agent actions through the ticket's updates and their refusals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import TypeAdapter
from temporalio.client import Client
from temporalio.service import RPCError

import intake.core
from contract import client as visibility
from contract import search_attributes as sa
from contract.models import CustomerReply, Tier
from harness.policy import with_targets, write_policy
from harness.processes import eventually
from harness.serve import serve
from harness.temporal import connect
from intake.core import Scope
from service.app import create_app
from service.auth import Settings, TokenConfigError, parse_scopes, parse_tokens
from tests.conftest import Stack, busy_visibility_server, now_second
from tests.integration.conftest import intake_body

INTAKE = "intake-token-0123456789"  # acme-portal: acme and globex, up to premium
BANK = "intake-bank-0123456789"  # bank-portal: example-bank (contracted) and anyone else
ANYONE = "intake-any-01234567890"  # no scope entry: any uncontracted customer, Community
AGENT_ANA = "agent-ana-0123456789"
AGENT_BOB = "agent-bob-0123456789"


def settings() -> Settings:
    return Settings(
        intake_tokens={INTAKE: "acme-portal", BANK: "bank-portal", ANYONE: "any-portal"},
        agent_tokens={AGENT_ANA: "ana", AGENT_BOB: "bob"},
        intake_scopes=parse_scopes(
            "SUPPORT_INTAKE_SCOPES",
            "acme-portal=customers:acme|globex;max_tier:premium,"
            " bank-portal=customers:example-bank|*",
            {"acme-portal", "bank-portal", "any-portal"},
        ),
        link_secret="test-secret",
    )


@pytest_asyncio.fixture(loop_scope="session")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The service on a free loopback port, talking to the test's Temporal and worker."""
    app = create_app(client=stack.client, settings=settings(), queue=stack.task_queue)
    async with (
        serve(app, lifespan="on") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        http.stack = stack  # type: ignore[attr-defined]
        yield http


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body_without(field: str, ticket_id: str, **fields: Any) -> dict[str, Any]:
    """``intake_body(...)`` with ``field`` left out (the intake's default applies)."""
    return {k: v for k, v in intake_body(ticket_id, **fields).items() if k != field}


async def accepted(
    api: httpx.AsyncClient, data: dict[str, Any], token: str = INTAKE
) -> dict[str, Any]:
    """Intake of ``data`` with ``token`` answers 201 (the ticket is closed after the test);
    its reply."""
    response = await api.post("/api/tickets", json=data, headers=auth(token))
    assert response.status_code == 201, response.text
    api.stack.opened.append(f"ticket-{data['ticket_id']}")  # type: ignore[attr-defined]
    reply: dict[str, Any] = response.json()
    return reply


async def opened(api: httpx.AsyncClient, ticket_id: str, **fields: Any) -> dict[str, Any]:
    return await accepted(api, intake_body(ticket_id, **fields))


async def refused(
    api: httpx.AsyncClient, data: dict[str, Any], token: str, field: str, message: str
) -> dict[str, Any]:
    """Intake of ``data`` with ``token`` answers 422 with one error, ``field``: ``message``,
    and starts nothing; its reply."""
    response = await api.post("/api/tickets", json=data, headers=auth(token))
    assert response.status_code == 422, response.text
    reply: dict[str, Any] = response.json()
    assert reply["errors"] == [{"field": field, "message": message}]
    assert not await started(api, data["ticket_id"]), "nothing is started"
    return reply


async def until(api: httpx.AsyncClient, ticket_id: str, check: Any) -> dict[str, Any]:
    """The ticket as ``GET /api/tickets/<id>`` shows it, once ``check`` accepts it."""

    async def shown() -> dict[str, Any] | None:
        response = await api.get(f"/api/tickets/{ticket_id}", headers=auth(AGENT_ANA))
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if check(body) else None

    return await eventually(f"{ticket_id} to reach the expected state", shown, every=0.02)


async def planned(api: httpx.AsyncClient, ticket_id: str) -> dict[str, Any]:
    """The ticket once its plan is resolved (it shows a policy version)."""
    return await until(api, ticket_id, lambda s: s["policy_version"] is not None)


async def open_planned(api: httpx.AsyncClient) -> str:
    """A new ticket (``opened``), once its plan is resolved; its id."""
    ticket_id = tid()
    await opened(api, ticket_id)
    await planned(api, ticket_id)
    return ticket_id


def tid() -> str:
    return f"API-{uuid.uuid4().hex[:10]}"


async def started(api: httpx.AsyncClient, ticket_id: str) -> bool:
    client: Client = api.stack.client  # type: ignore[attr-defined]
    try:
        await client.get_workflow_handle(f"ticket-{ticket_id}").describe()
    except RPCError:
        return False
    api.stack.opened.append(f"ticket-{ticket_id}")  # type: ignore[attr-defined]
    return True


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
        "entitlement": None,
    }
    status = await planned(api, ticket_id)
    assert datetime.fromisoformat(status["response_due_at"]) == t0 + timedelta(hours=1)
    assert status["state"] == "open" and status["escalations"][0]["step"] == "intake"
    assert status["integration"] == "acme-portal", "the ticket records who opened it"


async def test_intake_is_idempotent_on_ticket_id_and_refuses_a_reused_id(
    api: httpx.AsyncClient,
) -> None:
    ticket_id = tid()
    first = await opened(api, ticket_id)
    again = await api.post("/api/tickets", json=intake_body(ticket_id), headers=auth(INTAKE))
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["response_due_at"] == first["response_due_at"]
    other = await api.post(
        "/api/tickets", json=intake_body(ticket_id, customer_id="globex"), headers=auth(INTAKE)
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
    data = {k: v for k, v in (intake_body(ticket_id) | change).items() if v is not None}
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
        (api.post("/api/tickets", json=intake_body(tid())), 401, "unauthenticated"),
        (api.post("/api/tickets", json=intake_body(tid()), headers=auth("wrong-token")), 401, None),
        (
            api.post("/api/tickets", json=intake_body(tid()), headers=auth(AGENT_ANA)),
            403,
            "forbidden",
        ),
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


async def test_an_action_answers_200_with_the_status_after_it_and_a_refused_one_409(
    api: httpx.AsyncClient,
) -> None:
    ticket_id = await open_planned(api)
    before = datetime.now(UTC)
    ack = await api.post(
        f"/api/tickets/{ticket_id}/ack", json={"note": "looking"}, headers=auth(AGENT_ANA)
    )
    after = datetime.now(UTC)
    assert ack.status_code == 200, ack.text
    status = ack.json()
    assert (status["ticket_id"], status["state"], status["acknowledged_by"]) == (
        ticket_id,
        "acknowledged",
        "ana",
    ), "the status after the ack, the agent being who the token says"
    # The ack counts at the instant the API received it (stamped ``at``).
    assert before <= datetime.fromisoformat(status["acknowledged_at"]) <= after
    again = await api.post(f"/api/tickets/{ticket_id}/ack", headers=auth(AGENT_BOB))
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"
    assert again.json()["message"].startswith(
        f"cannot acknowledge: ticket {ticket_id} is acknowledged (by ana at "
    ), "the workflow's validator says why"
    resolved = await api.post(
        f"/api/tickets/{ticket_id}/resolve", json={"summary": "fixed"}, headers=auth(AGENT_BOB)
    )
    assert resolved.status_code == 200
    assert (resolved.json()["state"], resolved.json()["resolved_by"]) == ("resolved", "bob")
    late = await api.post(
        f"/api/tickets/{ticket_id}/severity", json={"severity": "sev1"}, headers=auth(AGENT_ANA)
    )
    # Refused by the workflow's validator ("is resolved") while its last writes land, or
    # ("is closed (resolved; workflow completed)") once the resolved ticket's run ended.
    assert late.status_code == 409 and "resolved" in late.json()["message"], late.text


async def test_an_agent_cannot_choose_the_instant_of_an_action(api: httpx.AsyncClient) -> None:
    ticket_id = tid()
    await opened(api, ticket_id)
    for action in ("ack", "resolve"):
        backdated = await api.post(
            f"/api/tickets/{ticket_id}/{action}",
            json={"at": "2020-01-01T00:00:00Z"},
            headers=auth(AGENT_ANA),
        )
        assert backdated.status_code == 422
        assert backdated.json()["errors"] == [{"field": "at", "message": "unknown field"}]


async def test_severity_and_out_of_scope_take_validated_bodies(api: httpx.AsyncClient) -> None:
    ticket_id = await open_planned(api)
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
    assert up.status_code == 200
    assert up.json()["severity"] == "sev1"
    assert "severity_changed" in [h["kind"] for h in up.json()["history"]]
    same = await api.post(
        f"/api/tickets/{ticket_id}/severity", json={"severity": "sev1"}, headers=auth(AGENT_ANA)
    )
    assert same.status_code == 409 and "is already sev1" in same.json()["message"]
    out = await api.post(
        f"/api/tickets/{ticket_id}/out-of-scope",
        json={"reason": "custom integration work"},
        headers=auth(AGENT_ANA),
    )
    assert out.status_code == 200
    status = await until(api, ticket_id, lambda s: s["state"] == "routed_to_sow")
    assert status["sow"]["reason"] == "custom integration work"


# --- entitlement and scopes -------------------------------------------------------------------


async def test_a_contracted_customer_claiming_another_tier_is_refused_naming_both(
    api: httpx.AsyncClient,
) -> None:
    reply = await refused(
        api,
        intake_body(tid(), customer_id="example-bank", tier="premium"),
        BANK,
        "tier",
        "customer 'example-bank' has a mission_critical contract; open the"
        " ticket at mission_critical (or leave tier out), not premium",
    )
    assert reply["error"] == "refused"


async def test_an_omitted_tier_is_the_contracted_tier(api: httpx.AsyncClient) -> None:
    ticket_id = tid()
    promise = await accepted(api, body_without("tier", ticket_id, customer_id="example-bank"), BANK)
    assert (promise["tier"], promise["entitlement"]) == (
        "mission_critical",
        "contract example-bank",
    )
    assert promise["response_target"] == "PT1H"  # Mission Critical sev2
    status = await planned(api, ticket_id)
    assert status["tier"] == "mission_critical"
    assert status["response_due_at"].replace("+00:00", "Z") == promise["response_due_at"]


async def test_a_token_asserts_at_most_its_tier_for_customers_without_a_contract(
    api: httpx.AsyncClient,
) -> None:
    await refused(
        api,
        intake_body(tid(), customer_id="initech", tier="standard"),
        ANYONE,
        "tier",
        "integration 'any-portal' may assert at most community for a customer"
        " without a contract, not standard",
    )
    community = intake_body(tid(), customer_id="initech", tier="community")
    promise = await accepted(api, community, ANYONE)
    assert (promise["tier"], promise["response_due_at"]) == ("community", None)
    # Left out, the tier of a customer without a contract is Community.
    omitted = await accepted(api, body_without("tier", tid(), customer_id="initech"), ANYONE)
    assert omitted["tier"] == "community"


async def test_a_token_opens_tickets_only_for_the_customers_it_serves(
    api: httpx.AsyncClient,
) -> None:
    # A contracted customer needs a token that lists it, whatever the tier.
    bank = tid()
    data = body_without("tier", bank, customer_id="example-bank")
    for token in (ANYONE, INTAKE):
        response = await api.post("/api/tickets", json=data, headers=auth(token))
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
        assert response.json()["errors"][0]["field"] == "customer_id"
        assert "has a support contract" in response.json()["message"]
    # A token that lists its customers serves no one else.
    other = tid()
    response = await api.post(
        "/api/tickets", json=intake_body(other, customer_id="initech"), headers=auth(INTAKE)
    )
    assert response.status_code == 403
    assert response.json()["message"] == (
        "customer_id: integration 'acme-portal' does not open tickets for customer 'initech'"
        " (it serves: acme, globex)"
    )
    assert not await started(api, bank) and not await started(api, other)


async def test_an_integration_reads_only_its_customers_tickets(api: httpx.AsyncClient) -> None:
    mine = (await opened(api, tid()))["ticket_id"]  # acme, by acme-portal
    data = body_without("tier", tid(), customer_id="example-bank")
    bank = (await accepted(api, data, BANK))["ticket_id"]
    await planned(api, mine)
    await planned(api, bank)
    assert (await api.get(f"/api/tickets/{mine}", headers=auth(INTAKE))).status_code == 200
    outside = await api.get(f"/api/tickets/{bank}", headers=auth(INTAKE))
    missing = await api.get("/api/tickets/API-none", headers=auth(INTAKE))
    # Outside its scope a ticket is as missing as one that does not exist: ids do not leak.
    assert (outside.status_code, outside.json()) == (
        404,
        {"error": "not_found", "message": f"no ticket '{bank}'"},
    )
    assert missing.status_code == 404
    # A contracted customer's tickets are for the integrations that list it (and agents).
    assert (await api.get(f"/api/tickets/{bank}", headers=auth(BANK))).status_code == 200
    assert (await api.get(f"/api/tickets/{bank}", headers=auth(ANYONE))).status_code == 404
    assert (await api.get(f"/api/tickets/{bank}", headers=auth(AGENT_ANA))).status_code == 200
    # "*" serves every customer without a contract: acme's ticket too.
    assert (await api.get(f"/api/tickets/{mine}", headers=auth(ANYONE))).status_code == 200


# --- the promise: one plan, the policy's rules --------------------------------------------


async def test_the_promise_comes_from_one_plan_and_is_the_tickets_deadline(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = intake.core.resolve_plan

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1].ticket_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(intake.core, "resolve_plan", counted)
    ticket_id = tid()
    promise = await opened(api, ticket_id)
    assert calls == [ticket_id], "intake resolves the plan once"
    status = await planned(api, ticket_id)
    assert datetime.fromisoformat(status["response_due_at"]) == datetime.fromisoformat(
        promise["response_due_at"]
    )
    client: Client = api.stack.client  # type: ignore[attr-defined]
    attributes = (
        await client.get_workflow_handle(f"ticket-{ticket_id}").describe()
    ).typed_search_attributes
    assert attributes.get(sa.RESPONSE_DUE_AT) == datetime.fromisoformat(promise["response_due_at"])
    assert attributes.get(sa.SLA_BREACHED) is False
    assert (attributes.get(sa.SUPPORT_TIER), attributes.get(sa.SUPPORT_SEVERITY)) == (
        "premium",
        "sev2",
    )


async def test_an_out_of_scope_category_has_no_clock_in_the_promise(
    api: httpx.AsyncClient,
) -> None:
    promise = await opened(api, tid(), category="consulting")
    assert (promise["response_target"], promise["response_due_at"]) == (None, None)


async def test_the_default_severity_applies_when_none_is_given(
    api: httpx.AsyncClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(tmp_path, lambda p: p.update(default_severity="sev1"))
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    ticket_id = tid()
    promise = await accepted(api, body_without("severity", ticket_id))
    assert promise["severity"] == "sev1"
    status = await planned(api, ticket_id)
    assert status["severity"] == "sev1"


async def test_a_broken_policy_is_503_and_starts_nothing(
    api: httpx.AsyncClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: x\ntiers: [\n")
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(broken))
    ticket_id = tid()
    response = await api.post("/api/tickets", json=intake_body(ticket_id), headers=auth(INTAKE))
    assert response.status_code == 503
    assert response.json()["error"] == "policy_unavailable"
    assert (
        str(broken) in response.json()["message"] and "not valid YAML" in response.json()["message"]
    )
    assert not await started(api, ticket_id)


async def test_a_contracts_intake_channels_are_the_only_way_in(
    api: httpx.AsyncClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write_policy(
        tmp_path,
        lambda p: p["customers"]["example-bank"].update(intake_channels=["named_contact"]),
    )
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    data = body_without("tier", tid(), customer_id="example-bank")
    await refused(
        api,
        data,
        BANK,
        "intake_channel",
        "customer 'example-bank' has agreed to open tickets through named_contact, not api",
    )
    await accepted(api, data | {"intake_channel": "named_contact"}, BANK)


async def test_health_reports_the_temporal_connection(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "temporal": True})


def test_scope_settings_name_the_variable_and_entry() -> None:
    scopes = parse_scopes(
        "V",
        "portal=customers:acme|acme-eu;max_tier:premium, demo=customers:example-bank|*",
        {"portal", "demo", "other"},
    )
    assert scopes == {
        "portal": Scope(frozenset({"acme", "acme-eu"}), others=False, max_tier=Tier.PREMIUM),
        "demo": Scope(frozenset({"example-bank"}), others=True, max_tier=Tier.COMMUNITY),
    }
    assert Settings(intake_scopes=scopes).scope("other") == Scope(), "default: anyone, Community"
    for value, message in [
        ("nobody=customers:a", "V: entry 1 (nobody): 'nobody' is not an integration of"),
        ("portal=colour:red", "V: entry 1 (portal): 'colour:red' is not one of customers:"),
        ("portal=max_tier:gold", "V: entry 1 (portal): max_tier: 'gold' is not one of"),
        ("portal=customers:a'b", 'V: entry 1 (portal): customers: "a\'b" is not a customer id'),
        ("portal=customers:a, portal=customers:b", "V: entry 2 (portal): 'portal' has a scope"),
    ]:
        with pytest.raises(TokenConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_scopes("V", value, {"portal"})


def test_token_settings_name_the_variable_and_entry() -> None:
    assert parse_tokens("V", "web:abcdefghijklmnop, portal:0123456789abcdef") == {
        "abcdefghijklmnop": "web",
        "0123456789abcdef": "portal",
    }
    with pytest.raises(TokenConfigError, match="V: entry 2 must be name:token"):
        parse_tokens("V", "web:abcdefghijklmnop,short:123")


async def test_reply_and_wait_answer_with_the_status_after_them(api: httpx.AsyncClient) -> None:
    ticket_id = await open_planned(api)
    before = datetime.now(UTC)
    reply = await api.post(
        f"/api/tickets/{ticket_id}/reply", json={"summary": "on it"}, headers=auth(AGENT_ANA)
    )
    assert reply.status_code == 200, reply.text
    status = reply.json()
    # An agent's public answer on an open ticket is its first response, at receipt.
    assert (status["state"], status["acknowledged_by"]) == ("acknowledged", "ana")
    assert before <= datetime.fromisoformat(status["acknowledged_at"]) <= datetime.now(UTC)
    assert [t["metric"] for t in status["targets"]] == ["first_response"]
    assert status["targets"][0]["met_at"] == status["acknowledged_at"]
    wait = await api.post(
        f"/api/tickets/{ticket_id}/wait", json={"reason": "logs?"}, headers=auth(AGENT_BOB)
    )
    assert wait.status_code == 200, wait.text
    assert wait.json()["awaiting_customer_reason"] == "logs?"
    assert wait.json()["awaiting_customer_since"] is not None
    again = await api.post(
        f"/api/tickets/{ticket_id}/wait", json={"reason": "again"}, headers=auth(AGENT_ANA)
    )
    assert again.status_code == 409
    assert "waits on the customer since" in again.json()["message"]
    for body, field in (({}, "reason"), ({"reason": ""}, "reason"), ({"at": "x"}, "at")):
        bad = await api.post(f"/api/tickets/{ticket_id}/wait", json=body, headers=auth(AGENT_ANA))
        assert bad.status_code == 422, (body, bad.text)
        assert field in [e["field"] for e in bad.json()["errors"]], bad.json()
    anonymous = await api.post(f"/api/tickets/{ticket_id}/reply", json={})
    assert anonymous.status_code == 401
    for action in ("reply", "wait"):  # an intake token opens tickets; it does not act on them
        refused = await api.post(
            f"/api/tickets/{ticket_id}/{action}", json={"reason": "x"}, headers=auth(INTAKE)
        )
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")


async def test_a_ticket_lists_every_target_with_its_deadline_answer_breach_and_pause(
    api: httpx.AsyncClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Premium (24x7: the business time paused is the wall time) with a 4 h next reply and
    # a 1 day resolution.
    policy = write_policy(tmp_path, with_targets("premium", next_reply="PT4H", resolution="P1D"))
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    ticket_id = await open_planned(api)
    client: Client = api.stack.client  # type: ignore[attr-defined]
    handle = client.get_workflow_handle(f"ticket-{ticket_id}")

    async def post(action: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await api.post(
            f"/api/tickets/{ticket_id}/{action}", json=body, headers=auth(AGENT_ANA)
        )
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    async def customer_replies(n: int, at: datetime) -> None:
        reply = CustomerReply(received_at=at, reference=f"<{ticket_id}-{n}@acme.example>")
        await handle.signal("customer_reply", reply)

    def of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {t["metric"]: t for t in status["targets"]}

    def instant(value: str) -> datetime:
        return datetime.fromisoformat(value)

    await post("reply", {})  # the first response
    # Next reply 1, due 4 h later. A whole second: a reply counts at the instant it says,
    # never after the workflow's clock (milliseconds).
    replied = datetime.now(UTC).replace(microsecond=0)
    await customer_replies(1, replied)
    status = await until(api, ticket_id, lambda s: "next_reply" in of(s))
    targets = of(status)
    assert list(targets) == ["first_response", "resolution", "next_reply"]
    for metric, target in targets.items():
        assert {"metric", "due_at", "met_at", "breached", "paused", "paused_since"} <= set(
            target
        ), metric
    first, resolution, next_reply = targets.values()
    assert (first["due_at"], first["met_at"], first["breached"]) == (
        status["response_due_at"],
        status["acknowledged_at"],
        False,
    )
    assert instant(resolution["started_at"]) == instant(status["opened_at"])
    assert instant(resolution["due_at"]) == instant(status["opened_at"]) + timedelta(days=1)
    assert instant(next_reply["started_at"]) == replied
    assert instant(next_reply["due_at"]) == replied + timedelta(hours=4)
    for target in (resolution, next_reply):
        assert (target["met_at"], target["breached"], target["pausable"]) == (None, False, True)
        assert (target["paused"], target["paused_since"]) == ("PT0S", None)

    waiting = await post("wait", {"reason": "logs?"})
    paused = of(waiting)
    assert paused["first_response"]["paused_since"] is None, "the first response never pauses"
    assert (
        paused["resolution"]["paused_since"]
        == paused["next_reply"]["paused_since"]
        == waiting["awaiting_customer_since"]
    )

    def moved(s: dict[str, Any]) -> bool:
        return all(
            of(s)[m]["paused"] != "PT0S" and of(s)[m]["due_at"] != targets[m]["due_at"]
            for m in ("resolution", "next_reply")
        )

    await customer_replies(2, datetime.now(UTC))  # the wait ends; both deadlines move by it
    status = await until(api, ticket_id, moved)
    resumed = of(status)
    wait = TypeAdapter(timedelta).validate_python(resumed["resolution"]["paused"])
    assert timedelta(0) < wait < timedelta(minutes=1)
    for metric in ("resolution", "next_reply"):
        after = resumed[metric]
        assert (after["paused"], after["paused_since"]) == (resumed["resolution"]["paused"], None)
        assert instant(after["due_at"]) == instant(targets[metric]["due_at"]) + wait
        assert (after["met_at"], after["breached"]) == (None, False)
    assert status["awaiting_customer_since"] is None

    answered = of(await post("reply", {}))["next_reply"]
    assert answered["met_at"] is not None and answered["breached"] is False


# --- a flood of newer tickets cannot hide an older open one (issue 15, part 2) -----------

FLOOD = 15  # newer Community tickets: three times the limit asked below
SHOWN = 5


@dataclass
class Flooded:
    http: httpx.AsyncClient
    sev1: str  # example-bank's open sev1, older than the flood
    flood: list[str]  # newer open Community tickets of customers without a contract


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def flooded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Flooded]:
    """The API on a dev server of its own (the time-skipping server's visibility does not
    count or filter on instants), whose visibility answers more than 10 requests a second
    (a windowed read takes a few counts): an open sev1 for example-bank (its contract's
    tier), then ``FLOOD`` newer Community tickets. Opened through the intake core, which
    sets every search attribute at start, on a task queue no worker polls: the listing
    reads visibility only."""
    async with busy_visibility_server(tmp_path_factory.mktemp("flood")) as server:
        client = await connect(server.address)
        idle = f"tq-flood-{uuid.uuid4()}"

        async def opened(ticket_id: str, **data: str) -> str:
            data = {"ticket_id": ticket_id, "subject": "flood", **data}
            await intake.core.intake(client, data, intake.core.CLI, queue=idle)
            return ticket_id

        sev1 = await opened("OLD-SEV1", customer_id="example-bank", severity="sev1")
        flood = []
        for number in range(FLOOD):  # one at a time: each newer than the last
            flood.append(await opened(f"NEW-{number:02d}", customer_id="crowd", severity="sev4"))

        async def listed() -> bool:
            return (await client.count_workflows(visibility.board_base())).count == FLOOD + 1

        await eventually("the flood in visibility", listed, 30, every=0.1)
        app = create_app(client=client, settings=settings(), queue=idle)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield Flooded(http, sev1, flood)


async def listing(flooded: Flooded, token: str, **params: Any) -> dict[str, Any]:
    response = await flooded.http.get("/api/tickets", params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [t["ticket_id"] for t in body["tickets"]]


@pytest.mark.parametrize("windows", [False, True], ids=["read-whole", "read-by-windows"])
async def test_a_flood_of_newer_tickets_does_not_push_an_older_open_sev1_out_of_the_list(
    flooded: Flooded, monkeypatch: pytest.MonkeyPatch, windows: bool
) -> None:
    """The attack: more newer Community tickets than ``limit`` after an open sev1. Asked
    for open tickets, the API ranks every one of them (as the board reads them), so the
    sev1 comes first, for an agent and for an integration whose scope holds it, and the
    rest is paged; the answer says it is cut. The default listing (every state, the newest
    ``limit``) still shows only the flood, and now says so. With ``windows`` the board's
    windowed read is forced (as past 1000 tickets)."""
    if windows:
        monkeypatch.setattr(visibility, "BOARD_READ_WHOLE", 0)
    total = FLOOD + 1
    first = await listing(flooded, AGENT_ANA, state="open", limit=SHOWN)
    assert ids(first) == [flooded.sev1, *flooded.flood[: SHOWN - 1]]
    assert {k: first[k] for k in ("ranked", "total", "page", "pages", "truncated")} == {
        "ranked": True,
        "total": total,
        "page": 1,
        "pages": 4,
        "truncated": True,
    }
    assert first["notice"] == (
        f"showing 1 to {SHOWN} of {total} open tickets, most urgent first; the next ones: page=2"
    )
    # Every ticket once across the pages; past the last page: the last.
    pages = [await listing(flooded, AGENT_ANA, state="open", limit=SHOWN, page=n) for n in (2, 3)]
    last = await listing(flooded, AGENT_ANA, state="open", limit=SHOWN, page=9)
    assert (last["page"], ids(last)) == (4, flooded.flood[-1:])
    assert ids(first) + ids(pages[0]) + ids(pages[1]) + ids(last) == [flooded.sev1, *flooded.flood]

    # An integration serving example-bank and every customer without a contract sees the
    # same first page; one serving neither sees none of it.
    bank = await listing(flooded, BANK, state="open", limit=SHOWN)
    assert ids(bank) == ids(first) and bank["total"] == total
    acme = await listing(flooded, INTAKE, state="open", limit=SHOWN)
    assert (ids(acme), acme["total"], acme["truncated"], acme["notice"]) == ([], 0, False, None)
    # Filters narrow the ranked read.
    sev1 = await listing(flooded, AGENT_ANA, state="open", severity="sev1", tier="mission_critical")
    assert (ids(sev1), sev1["truncated"], sev1["notice"]) == ([flooded.sev1], False, None)
    crowd = await listing(flooded, AGENT_ANA, state="open", customer="crowd", limit=SHOWN, page=2)
    assert ids(crowd) == flooded.flood[SHOWN : 2 * SHOWN] and crowd["total"] == FLOOD

    # Before: the newest ``limit`` tickets of any state, then sorted. Still the default,
    # but no longer silently.
    newest = await listing(flooded, AGENT_ANA, limit=SHOWN)
    assert flooded.sev1 not in ids(newest) and len(ids(newest)) == SHOWN
    assert (newest["ranked"], newest["total"], newest["truncated"]) == (False, total, True)
    assert newest["notice"] == (
        f"showing the newest {SHOWN} of {total} matching tickets, then sorted: older ones are"
        " left out (state=open ranks every open ticket)"
    )
    # Pages are for the ranked listing only.
    refused = await flooded.http.get("/api/tickets", params={"page": 2}, headers=auth(AGENT_ANA))
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "page"
