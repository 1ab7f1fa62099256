"""What a step attempt sees of its task: the input, the outputs of completed steps, and ``vars``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from engine.models import StepState
from engine.payloads import PayloadCodec
from engine.store.schema import step_runs, tasks


@dataclass(frozen=True)
class TaskData:
    input: Any
    steps: dict[str, Any]
    vars: dict[str, Any]


def load_task_data(conn: sa.Connection, codec: PayloadCodec, task_id: str) -> TaskData:
    task = conn.execute(sa.select(tasks.c.input, tasks.c.input_ref, tasks.c.vars).where(tasks.c.id == task_id)).one()
    runs = conn.execute(
        sa.select(step_runs.c.name, step_runs.c.output, step_runs.c.output_ref)
        .where(step_runs.c.task_id == task_id, step_runs.c.state == StepState.SUCCEEDED)
        .order_by(step_runs.c.seq)
    )
    # Later runs of a revisited step overwrite earlier ones: ``steps.x.output`` is the latest.
    steps = {run.name: codec.decode(run.output, run.output_ref) for run in runs}
    return TaskData(input=codec.decode(task.input, task.input_ref), steps=steps, vars=dict(task.vars))
