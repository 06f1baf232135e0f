"""The statement-of-work mail reaches a ticket's ``reporter_email`` only when that address
is known to be the requester's (issue 15): a typed or forged address on the public form or
the mailbox is told nothing, so the system cannot be used to mail a third party the
subject an attacker wrote."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contract.models import ChannelKind, TicketInput, TicketPlan
from policy.load import default_policy_path, load_policy
from policy.plan import reporter_verified, resolve_plan
from policy.schema import Policy

T0 = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
SPAM = "CHEAP PILLS at http://spam.example/buy"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(default_policy_path())


def out_of_scope(customer: str, channel: str, address: str = "victim@elsewhere.example"):
    return TicketInput(
        ticket_id="W-1",
        customer_id=customer,
        category="consulting",
        subject=SPAM,
        reporter_email=address,
        intake_channel=channel,
    )


def mailed(plan: TicketPlan) -> list[str]:
    return [
        address
        for r in plan.sow.recipients
        for c in r.channels
        if c.type is ChannelKind.EMAIL
        for address in c.to
    ]


@pytest.mark.parametrize("channel", ["web_form", "email"])
def test_a_typed_or_forged_address_gets_no_statement_of_work_mail(
    policy: Policy, channel: str
) -> None:
    ticket = out_of_scope("community", channel)
    assert not reporter_verified(policy, ticket)
    plan = resolve_plan(policy, ticket, None, T0)
    assert plan.out_of_scope_reason is not None
    assert [r.name for r in plan.sow.recipients] == ["advisory-services", "account-team"]
    assert mailed(plan) == []


@pytest.mark.parametrize(
    ("customer", "channel"),
    [
        ("example-bank", "email"),  # a trusted DMARC pass, or a confirmed mail requester
        ("example-bank", "web_form"),  # a confirmed form requester
        ("community", "api"),  # an integration's token vouches for its requesters
        ("community", "named_contact"),
    ],
)
def test_a_verified_requester_gets_the_statement_of_work_mail(
    policy: Policy, customer: str, channel: str
) -> None:
    ticket = out_of_scope(customer, channel, "dana@bank.example")
    assert reporter_verified(policy, ticket)
    plan = resolve_plan(policy, ticket, None, T0)
    assert [r.name for r in plan.sow.recipients][-1] == "reporter"
    assert mailed(plan) == ["dana@bank.example"]
