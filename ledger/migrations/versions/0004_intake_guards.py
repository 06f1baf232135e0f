"""Intake guards: rate-limit counters, the mailbox's reply log, requester confirmations and
the mail quarantine (intake/guards.py, docs/intake.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.schema import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "intake_counts",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(320), primary_key=True),
        sa.Column("window_start", UtcDateTime(), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "intake_replies",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("sent_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "requester_confirmations",
        sa.Column("token_digest", sa.String(64), primary_key=True),
        sa.Column("ticket_id", sa.String(128), nullable=False, unique=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("submitted_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("ticket", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("confirmed_at", UtcDateTime()),
        sa.Column("moved_to", sa.String(128)),
    )
    op.create_table(
        "mail_quarantine",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("envelope_sender", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in ("mail_quarantine", "requester_confirmations", "intake_replies", "intake_counts"):
        op.drop_table(table)
