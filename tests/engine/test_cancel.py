"""Cancelling a task while a worker runs its step: the task stays cancelled and the worker's late result is
discarded (the cancel took its lease), so nothing after that step runs."""

from __future__ import annotations

import sqlalchemy as sa
from prometheus_client import REGISTRY

from engine import Engine, StepState, TaskState
from engine.store.schema import attempts
from tests.engine.conftest import Downstream, connector_step, fast_worker
from tests.fixtures.polling import assert_eventually


def test_cancel_while_a_step_runs_discards_its_late_result(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow("two", {"steps": [connector_step("a"), connector_step("b")]})
    discarded = {"workflow": "two", "step": "a", "type": "connector", "outcome": "lease_lost"}

    def late_results() -> float:
        return REGISTRY.get_sample_value("aiplane_engine_step_duration_seconds_count", discarded) or 0.0

    before = late_results()
    gate = downstream.hold("/c/a")
    with fast_worker(engine):
        task = engine.submit("acme", "two", {})
        assert_eventually(lambda: downstream.count("/c/a") == 1, timeout=20, interval=0.02)
        cancelled = engine.cancel("acme", task.id, "customer withdrew the claim")
        assert cancelled.state == TaskState.CANCELLED
        gate.set()
        # The worker hears back from the downstream and reports, and its result is refused.
        assert_eventually(lambda: late_results() - before == 1, timeout=20, interval=0.02)

    done = engine.get("acme", task.id)
    assert done.state == TaskState.CANCELLED
    assert done.result is None
    assert done.error is not None
    assert (done.error["kind"], done.error["message"]) == ("Cancelled", "customer withdrew the claim")
    assert downstream.count("/c/b") == 0
    [step] = engine.steps("acme", task.id)
    assert (step.name, step.state, step.output, step.lease_owner) == ("a", StepState.CANCELLED, None, None)
    with engine.db.read() as conn:
        outcomes = list(conn.scalars(sa.select(attempts.c.outcome).where(attempts.c.task_id == task.id)))
    assert outcomes == ["abandoned"]
    types = [e.type for e in engine.events(task.id)]
    assert "step.completed" not in types
    assert types[-1] == "task.cancelled"
