"""The policy archive: every policy version's text, by version, insert-only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.schema import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
    )
    # Tickets are pinned to these rules: the database itself refuses to change or delete
    # an archived version (a new version is a new row).
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION policy_versions_insert_only() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'policy_versions is insert-only (% refused)', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER policy_versions_insert_only BEFORE UPDATE OR DELETE"
            " ON policy_versions FOR EACH ROW EXECUTE FUNCTION policy_versions_insert_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER policy_versions_no_{action.lower()} BEFORE {action}"
                " ON policy_versions BEGIN SELECT RAISE(ABORT, 'policy_versions is insert-only');"
                " END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS policy_versions_insert_only ON policy_versions")
        op.execute("DROP FUNCTION IF EXISTS policy_versions_insert_only()")
    op.drop_table("policy_versions")
