"""Tasks by tenant and state: a tenant's unfinished tasks are counted against its quota at intake.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_tasks_tenant_state"), "tasks", ["tenant", "state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_tenant_state"), table_name="tasks")
