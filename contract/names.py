"""The names a client uses on the wire: workflow types, signals, updates, queries and the
SLA metrics a ticket emits. A client in another language uses the same strings
(docs/contract.md)."""

from __future__ import annotations

# Workflow types and their task queue's default.
TICKET_WORKFLOW = "SupportTicket"
SOW_WORKFLOW = "StatementOfWork"

# Agent actions: each is both a signal and an update of this name, with the same payload.
ACKNOWLEDGE = "acknowledge"
CHANGE_SEVERITY = "change_severity"
MARK_OUT_OF_SCOPE = "mark_out_of_scope"
RESOLVE = "resolve"
ADOPT_POLICY = "adopt_policy"
# A public answer to the customer (meets the first response if still open, and the
# pending next reply), and "the ticket waits on the customer" (pausable clocks stop).
AGENT_REPLY = "agent_reply"
AWAIT_CUSTOMER = "await_customer"
ACTIONS = (
    ACKNOWLEDGE,
    CHANGE_SEVERITY,
    MARK_OUT_OF_SCOPE,
    RESOLVE,
    ADOPT_POLICY,
    AGENT_REPLY,
    AWAIT_CUSTOMER,
)
# Intake's own action (a signal and an update of this name, never an agent's): the
# requester of an unverified Community ticket confirmed their address, so the ticket takes
# the contract of its address's domain, its clock from the submission.
VERIFY_REQUESTER = "verify_requester"
# A signal only: the customer answered (mailbox, API).
CUSTOMER_REPLY = "customer_reply"
# The statement-of-work child's decision signal.
SOW_DECISION = "sow_decision"
# Queries.
STATUS = "status"

# Activities (registered by these names; workflows call them through typed references).
DELIVER_STEP = "deliver_step"
UPDATE_PAGES = "update_pages"
RECORD_SLA_EVENTS = "record_sla_events"
RESOLVE_TICKET_PLAN = "resolve_ticket_plan"

# SLA metrics (Prometheus names; docs/operations.md): buckets of the time-to-acknowledge
# histogram, in seconds.
TIME_TO_ACK_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)
