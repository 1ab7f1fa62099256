"""Initial schema: workflows, tasks, step runs, attempts, approvals, idempotency keys, outbox, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Plain column types on purpose: a migration must keep meaning the same thing after the application's types
change, so it never imports them. Timestamps are timezone-aware UTC, JSON is canonical text (see
engine.store.types).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)
JSON_TEXT = sa.Text()

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("task_id", sa.String(length=26), nullable=True),
        sa.Column("tenant", sa.String(length=253), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON_TEXT, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("id", name=op.f("uq_events_id")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_task_id_seq"), ["task_id", "seq"], unique=False)
        batch_op.create_index(
            "ix_events_unpublished",
            ["seq"],
            unique=False,
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )

    op.create_table(
        "idempotency_keys",
        sa.Column("tenant", sa.String(length=253), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("response", JSON_TEXT, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "workflow_heads",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workflow_heads")),
    )
    op.create_table(
        "workflows",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("spec", JSON_TEXT, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_workflows")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("tenant", sa.String(length=253), nullable=False),
        sa.Column("workflow", sa.String(length=63), nullable=False),
        sa.Column("workflow_version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("input", sa.Text(), nullable=True),
        sa.Column("input_ref", sa.String(length=80), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("result_ref", sa.String(length=80), nullable=True),
        sa.Column("vars", JSON_TEXT, nullable=False),
        sa.Column("error", JSON_TEXT, nullable=True),
        sa.Column("current_step", sa.String(length=63), nullable=True),
        sa.Column("step_seq", sa.Integer(), nullable=False),
        sa.Column("deadline", TIMESTAMP, nullable=True),
        sa.Column("sla_breached_at", TIMESTAMP, nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("trace_context", sa.String(length=128), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow", "workflow_version"],
            ["workflows.name", "workflows.version"],
            name=op.f("fk_tasks_workflow_workflows"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("tenant", "idempotency_key", name=op.f("uq_tasks_tenant_idempotency_key")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_state_deadline"), ["state", "deadline"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_tenant_id"), ["tenant", "id"], unique=False)

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("task_id", sa.String(length=26), nullable=False),
        sa.Column("tenant", sa.String(length=253), nullable=False),
        sa.Column("step_run_id", sa.String(length=26), nullable=False),
        sa.Column("step", sa.String(length=63), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("last_error", JSON_TEXT, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("replayed_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_dead_letters_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letters_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dead_letters_tenant_created_at"), ["tenant", "created_at"], unique=False)

    op.create_table(
        "step_runs",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("task_id", sa.String(length=26), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_base", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_token", sa.String(length=26), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("next_run_at", TIMESTAMP, nullable=True),
        sa.Column("sort_at", TIMESTAMP, nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("output_ref", sa.String(length=80), nullable=True),
        sa.Column("error", JSON_TEXT, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_step_runs_task_id_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_runs")),
        sa.UniqueConstraint("task_id", "seq", name=op.f("uq_step_runs_task_id_seq")),
    )
    with op.batch_alter_table("step_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_step_runs_state_lease_expires_at"), ["state", "lease_expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_step_runs_state_sort_at"), ["state", "sort_at"], unique=False)

    op.create_table(
        "approvals",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("task_id", sa.String(length=26), nullable=False),
        sa.Column("step_run_id", sa.String(length=26), nullable=False),
        sa.Column("tenant", sa.String(length=253), nullable=False),
        sa.Column("step", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("roles", JSON_TEXT, nullable=False),
        sa.Column("users", JSON_TEXT, nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("decisions", JSON_TEXT, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["step_run_id"], ["step_runs.id"], name=op.f("fk_approvals_step_run_id_step_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_approvals_task_id_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approvals_state_expires_at"), ["state", "expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_approvals_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_approvals_tenant_state"), ["tenant", "state"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("step_run_id", sa.String(length=26), nullable=False),
        sa.Column("task_id", sa.String(length=26), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", JSON_TEXT, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["step_run_id"], ["step_runs.id"], name=op.f("fk_attempts_step_run_id_step_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempts_step_run_id"), ["step_run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempts_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_task_id"))
        batch_op.drop_index(batch_op.f("ix_attempts_step_run_id"))

    op.drop_table("attempts")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approvals_tenant_state"))
        batch_op.drop_index(batch_op.f("ix_approvals_task_id"))
        batch_op.drop_index(batch_op.f("ix_approvals_state_expires_at"))

    op.drop_table("approvals")
    with op.batch_alter_table("step_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_step_runs_state_sort_at"))
        batch_op.drop_index(batch_op.f("ix_step_runs_state_lease_expires_at"))

    op.drop_table("step_runs")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letters_tenant_created_at"))
        batch_op.drop_index(batch_op.f("ix_dead_letters_task_id"))

    op.drop_table("dead_letters")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_tasks_state_deadline"))

    op.drop_table("tasks")
    op.drop_table("workflows")
    op.drop_table("workflow_heads")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_expires_at"))

    op.drop_table("idempotency_keys")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_events_unpublished",
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_events_task_id_seq"))

    op.drop_table("events")
