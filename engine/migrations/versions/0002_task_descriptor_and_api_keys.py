"""Tasks keep their whole descriptor; the gateway's API keys join the migrated schema.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

- ``tasks.annotations`` (policy annotations as submitted), ``tasks.callback_url``, ``tasks.submitted_by`` and
  ``tasks.request_key`` (the Idempotency-Key of the gateway request that made the task, shown to readers;
  deduplication itself is the idempotency record's, which expires): written in the task's own INSERT, where the
  gateway used to keep them in a table of its own, in a second transaction.
- ``gateway_api_keys`` was created by the gateway with ``create_all`` outside the migrations; it is created here
  (or adopted, where a gateway already made it) so one migration history covers the whole database. The old
  ``gateway_task_annotations`` rows move into the task columns and the table goes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)
JSON_TEXT = sa.Text()

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("annotations", JSON_TEXT, nullable=True))
        batch_op.add_column(sa.Column("callback_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("submitted_by", sa.String(length=253), nullable=True))
        batch_op.add_column(sa.Column("request_key", sa.String(length=255), nullable=True))

    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "gateway_task_annotations" in existing:
        for column, source in (
            ("annotations", "policy"),
            ("callback_url", "callback_url"),
            ("submitted_by", "submitted_by"),
        ):
            op.execute(
                f"UPDATE tasks SET {column} = (SELECT a.{source} FROM gateway_task_annotations a "
                "WHERE a.task_id = tasks.id)"
            )
        op.drop_table("gateway_task_annotations")
    if "gateway_api_keys" not in existing:
        op.create_table(
            "gateway_api_keys",
            sa.Column("id", sa.String(length=26), nullable=False),
            sa.Column("key_hash", sa.String(length=64), nullable=False),
            sa.Column("prefix", sa.String(length=16), nullable=False),
            sa.Column("tenant", sa.String(length=253), nullable=False),
            sa.Column("principal", sa.String(length=253), nullable=False),
            sa.Column("roles", sa.String(length=128), nullable=False),
            sa.Column("created_at", TIMESTAMP, nullable=False),
            sa.Column("revoked_at", TIMESTAMP, nullable=True),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_api_keys")),
            sa.UniqueConstraint("key_hash", name=op.f("uq_gateway_api_keys_key_hash")),
        )


def downgrade() -> None:
    op.drop_table("gateway_api_keys")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("request_key")
        batch_op.drop_column("submitted_by")
        batch_op.drop_column("callback_url")
        batch_op.drop_column("annotations")
