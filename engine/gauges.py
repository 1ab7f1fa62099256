"""The store gauges (queue length per priority, pending approvals, DLQ size), read from the store.

Workers refresh them as they poll; a process with no worker (a gateway on its own) refreshes them when scraped,
so its /metrics never shows numbers from its start-up.
"""

from __future__ import annotations

import sqlalchemy as sa

from engine import metrics
from engine.models import ApprovalState, Priority, StepState
from engine.store.database import Database
from engine.store.schema import approvals, dead_letters, step_runs


def refresh(db: Database) -> None:
    with db.read() as conn:
        queued: dict[str, int] = dict(
            conn.execute(
                sa.select(step_runs.c.priority, sa.func.count())
                .where(step_runs.c.state == StepState.RUNNABLE)
                .group_by(step_runs.c.priority)
            ).all()
        )
        pending = conn.execute(
            sa.select(sa.func.count()).select_from(approvals).where(approvals.c.state == ApprovalState.PENDING)
        ).scalar_one()
        dlq = conn.execute(
            sa.select(sa.func.count()).select_from(dead_letters).where(dead_letters.c.replayed_at.is_(None))
        ).scalar_one()
    for priority in Priority:
        metrics.QUEUE_LENGTH.labels(priority.value).set(queued.get(priority.value, 0))
    metrics.PENDING_APPROVALS.set(pending)
    metrics.DLQ_SIZE.set(dlq)
