"""Tasks carry when their own retention (the submitter's ``policy.retention``) lets their data go, set when they
finish, so the purge finds the due ones by an index instead of reading every finished task's annotations. Tasks
that finished before this revision get theirs here, from their annotations.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from engine.durations import parse_duration
from engine.store.types import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_tasks_purge_after",
        "tasks",
        ["purge_after"],
        unique=False,
        sqlite_where=sa.text("purge_after IS NOT NULL"),
        postgresql_where=sa.text("purge_after IS NOT NULL"),
    )
    _backfill()


def _backfill() -> None:
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.String),
        sa.column("annotations", sa.Text),
        sa.column("finished_at", UTCDateTime()),
        sa.column("purge_after", UTCDateTime()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(tasks.c.id, tasks.c.annotations, tasks.c.finished_at).where(
            tasks.c.finished_at.is_not(None), tasks.c.annotations.like('%"retention":%')
        )
    ).all()
    for row in rows:
        text = json.loads(row.annotations).get("retention")
        try:
            period = parse_duration(text) if isinstance(text, str) else None
        except ValueError:
            continue  # left to the Policies' periods, as the engine does with it
        if period is not None:
            conn.execute(sa.update(tasks).where(tasks.c.id == row.id).values(purge_after=row.finished_at + period))


def downgrade() -> None:
    op.drop_index(
        "ix_tasks_purge_after",
        table_name="tasks",
        sqlite_where=sa.text("purge_after IS NOT NULL"),
        postgresql_where=sa.text("purge_after IS NOT NULL"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("purge_after")
