"""Payload logs in the store: sampled step and prediction payloads, purged by retention and removed by erasure.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payload_logs",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("tenant", sa.String(253), nullable=False),
        sa.Column("workflow", sa.String(63), nullable=True),
        sa.Column("model", sa.String(63), nullable=True),
        sa.Column("task_id", sa.String(26), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payload_logs")),
    )
    op.create_index(op.f("ix_payload_logs_task_id"), "payload_logs", ["task_id"], unique=False)
    op.create_index(
        op.f("ix_payload_logs_workflow_created_at"), "payload_logs", ["workflow", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_payload_logs_workflow_created_at"), table_name="payload_logs")
    op.drop_index(op.f("ix_payload_logs_task_id"), table_name="payload_logs")
    op.drop_table("payload_logs")
