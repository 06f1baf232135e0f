"""The ``SupportTicket`` workflow, read top-down:

- ``workflow``: the class (messages, ``run`` and its loop, the query, each command);
- ``planning`` and ``outbox``: its base classes (plan resolution; history, ledger, search
  attributes and deliveries, through one ``emit``);
- ``ladder`` (pending steps, next wake, send or supersede) and ``transitions`` (each change
  of the status and the events that record it): pure, unit-tested without a server;
- ``events`` (what ``emit`` writes), ``metrics`` (the SLA metrics a ticket emits),
  ``patches`` (the ids of its command changes)."""

from workflows.ticket.patches import (
    ACK_SUPERSEDES_DELIVERIES,
    BATCHED_LEDGER_WRITES,
    REPLY_NOTIFIES,
    RETRIAGE_NOTIFIES,
)
from workflows.ticket.workflow import SupportTicket

__all__ = [
    "ACK_SUPERSEDES_DELIVERIES",
    "BATCHED_LEDGER_WRITES",
    "REPLY_NOTIFIES",
    "RETRIAGE_NOTIFIES",
    "SupportTicket",
]
