"""Workflow definitions: what happens to a ticket (deterministic code only)."""

from workflows.statement_of_work import StatementOfWork
from workflows.ticket import SupportTicket

ALL_WORKFLOWS = (SupportTicket, StatementOfWork)

__all__ = ["ALL_WORKFLOWS", "StatementOfWork", "SupportTicket"]
