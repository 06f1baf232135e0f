"""What each recipient of a step is told (``activities.channels.Notification``): a customer's
contact gets the customer's text and, by mail, a reply token; the vendor's people get the
step's own text (docs/notifications.md, docs/mailbox.md#replies-need-proof)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from activities.channels import Notification
from contract.models import Channel, ChannelKind, Recipient
from runtime.links import LINK_SECRET_ENV, ReplyTokens
from tests.unit.tickets import delivery

SECRET = "k1:" + "3f9c1a7e5b2d4c6a8e0f1b3d5c7a9e2f4b6d8c0a"
REQUEST = delivery(
    workflow_id="sow-T-9",
    ticket_id="T-9",
    severity="sev3",
    step="opened",
    kind="sow",
    due_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
    response_due_at=None,
    subject="Build us a connector",
    message="Record the decision with: temporal workflow signal --name sow_decision",
    customer_message="Your request is outside the scope of Premium support.",
)
EMAIL = [Channel(type=ChannelKind.EMAIL, to=["x@acme.example"])]
REPORTER = Recipient(name="reporter", role="customer", channels=EMAIL)
ADVISORY = Recipient(name="advisory-services", channels=EMAIL)


def test_a_customer_is_told_the_customer_text_and_the_vendor_its_own() -> None:
    customer = Notification.of(REQUEST, REPORTER, "k/opened/reporter")
    vendor = Notification.of(REQUEST, ADVISORY, "k/opened/advisory-services")
    assert "outside the scope" in customer.text() and "temporal" not in customer.text()
    assert "sow_decision" in vendor.text() and "outside the scope" not in vendor.text()
    body = customer.email("support@vendor.example", ["x@acme.example"]).get_content()
    assert "outside the scope" in body and "temporal" not in body


def test_a_step_without_a_customer_text_tells_everyone_the_same() -> None:
    plain = REQUEST.model_copy(update={"customer_message": None})
    assert "sow_decision" in Notification.of(plain, REPORTER, "k").text()


def test_mail_to_a_customer_carries_the_tickets_reply_token_and_to_the_vendor_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LINK_SECRET_ENV, SECRET)
    customer = Notification.of(REQUEST, REPORTER, "k/opened/reporter")
    references = customer.email("s@vendor.example", ["x@acme.example"])["References"]
    token = ReplyTokens.from_env()
    assert token is not None
    assert token.reference("T-9") in references.split()
    assert "<sow-T-9@support-sla>" in references.split()
    vendor = Notification.of(REQUEST, ADVISORY, "k/opened/advisory-services")
    assert "reply-" not in vendor.email("s@vendor.example", ["a@v.example"])["References"]


def test_without_a_link_secret_mail_to_a_customer_has_no_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(LINK_SECRET_ENV, raising=False)
    customer = Notification.of(REQUEST, REPORTER, "k/opened/reporter")
    assert (
        customer.email("s@v.example", ["x@acme.example"])["References"] == "<sow-T-9@support-sla>"
    )
