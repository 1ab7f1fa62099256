"""Tasks carry when their own retention (the submitter's ``policy.retention``) lets their data go, set when they
finish, so the purge finds the due ones by an index instead of reading every finished task's annotations.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_tasks_purge_after"), "tasks", ["purge_after"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_purge_after"), table_name="tasks")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("purge_after")
