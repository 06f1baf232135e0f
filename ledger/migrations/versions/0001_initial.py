"""The SLA ledger: append-only events, one outcome row per ticket, the delivery log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.schema import Detail, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sla_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("key", sa.String(400), nullable=False, unique=True),
        sa.Column("ticket_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("detail", Detail, nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
    )
    op.create_index("sla_events_ticket_at", "sla_events", ["ticket_id", "at"])
    op.create_table(
        "tickets",
        sa.Column("ticket_id", sa.String(128), primary_key=True),
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("response_due_at", UtcDateTime()),
        sa.Column("acknowledged_at", UtcDateTime()),
        sa.Column("acknowledged_by", sa.String(128)),
        sa.Column("response_breached", sa.Boolean, nullable=False),
        sa.Column("overrun_seconds", sa.Float),
        sa.Column("escalations_fired", sa.Integer, nullable=False),
        sa.Column("out_of_scope", sa.Boolean, nullable=False),
        sa.Column("sow_outcome", sa.String(32)),
        sa.Column("resolved_at", UtcDateTime()),
        sa.Column("closed_at", UtcDateTime()),
        sa.Column("policy_version", sa.String(64)),
        sa.Column("outcome", Detail, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("tickets_opened_at", "tickets", ["opened_at"])
    op.create_index("tickets_customer_opened_at", "tickets", ["customer_id", "opened_at"])
    op.create_table(
        "deliveries",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("ticket_id", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("delivered_at", UtcDateTime(), nullable=False),
    )
    # The ledger is evidence: the database itself refuses to change or delete an event.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION sla_events_append_only() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'sla_events is append-only (% refused)', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER sla_events_append_only BEFORE UPDATE OR DELETE ON sla_events"
            " FOR EACH ROW EXECUTE FUNCTION sla_events_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER sla_events_no_{action.lower()} BEFORE {action} ON sla_events"
                " BEGIN SELECT RAISE(ABORT, 'sla_events is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS sla_events_append_only ON sla_events")
        op.execute("DROP FUNCTION IF EXISTS sla_events_append_only()")
    op.drop_table("deliveries")
    op.drop_table("tickets")
    op.drop_table("sla_events")
