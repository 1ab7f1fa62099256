"""``Task`` and ``StepRun`` values from store rows (or from the values about to be inserted, which read alike)."""

from __future__ import annotations

from typing import Any

from engine.models import Priority, StepRun, StepState, Task, TaskState
from engine.payloads import PayloadCodec


def task(codec: PayloadCodec, row: Any, *, payloads: bool) -> Task:
    """``row``: a ``tasks`` row, or anything with its columns as attributes. Without ``payloads`` the input and
    result stay unread (lists do not fetch blobs)."""
    return Task(
        id=row.id,
        tenant=row.tenant,
        workflow=row.workflow,
        workflow_version=row.workflow_version,
        state=TaskState(row.state),
        priority=Priority(row.priority),
        input=codec.decode(row.input, row.input_ref) if payloads else None,
        result=codec.decode(row.result, row.result_ref) if payloads else None,
        error=row.error,
        vars=row.vars,
        current_step=row.current_step,
        deadline=row.deadline,
        sla_breached_at=row.sla_breached_at,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        annotations=row.annotations,
        callback_url=row.callback_url,
        submitted_by=row.submitted_by,
        request_key=row.request_key,
        region=row.region,
    )


def step_run(codec: PayloadCodec, row: Any) -> StepRun:
    return StepRun(
        id=row.id,
        task_id=row.task_id,
        seq=row.seq,
        name=row.name,
        type=row.type,
        state=StepState(row.state),
        attempts=row.attempts,
        idempotency_key=row.idempotency_key,
        output=codec.decode(row.output, row.output_ref),
        error=row.error,
        next_run_at=row.next_run_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
