"""Agents' board sessions, kept server-side so logout and token rotation end them.

A row per session: the SHA-256 of its id (the cookie carries the id, the database never
does), the agent, the fingerprint of the token it signed in with, and when it expires.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.schema import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_sessions",
        sa.Column("id_digest", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("token_fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_index("agent_sessions_agent", "agent_sessions", ["agent"])
    op.create_index("agent_sessions_expires_at", "agent_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("agent_sessions_expires_at", table_name="agent_sessions")
    op.drop_index("agent_sessions_agent", table_name="agent_sessions")
    op.drop_table("agent_sessions")
