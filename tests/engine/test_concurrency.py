"""Several workers on one store: every step runs exactly once; the store gauges and step metrics."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

from prometheus_client import REGISTRY

from engine import Engine, TaskState
from tests.engine.conftest import Downstream, EngineFactory, connector_step, fast_worker, wait_done


def test_competing_workers_run_each_step_exactly_once(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow(
        "pair",
        {
            "steps": [
                connector_step("first", connector={"name": "c", "input": {"step": "'first'", "n": "input.n"}}),
                connector_step("second", connector={"name": "c", "input": {"step": "'second'", "n": "input.n"}}),
            ]
        },
    )
    tasks = [engine.submit("acme", "pair", {"n": n}) for n in range(20)]
    with ExitStack() as stack:
        for name in ("w1", "w2", "w3"):
            stack.enter_context(fast_worker(engine, worker_id=name, concurrency=2))
        for task in tasks:
            assert wait_done(engine, "acme", task.id, timeout=60).state == TaskState.SUCCEEDED
    for path in ("/c/first", "/c/second"):
        per_task = Counter(call.body["n"] for call in downstream.calls[path])
        assert per_task == Counter(range(20)), f"{path} ran some tasks more or less than once"
    keys = [call.headers["Idempotency-Key"] for calls in downstream.calls.values() for call in calls]
    assert len(set(keys)) == 40
    workers = {s.lease_owner for t in tasks for s in engine.steps("acme", t.id)}
    assert workers == {None}  # leases released on completion


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_gauges_and_step_metrics(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("gated", {"steps": [{"name": "gate", "type": "approval", "approval": {}}]})
    engine.register_workflow("quick", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]})
    engine.submit("acme", "gated", {})
    for priority in ("high", "low", "low"):
        engine.submit("acme", "quick", {}, priority=priority)
    worker = fast_worker(engine)
    worker.refresh_gauges(force=True)
    assert value("aiplane_engine_queue_length_steps", {"priority": "high"}) == 1
    assert value("aiplane_engine_queue_length_steps", {"priority": "low"}) == 2
    assert value("aiplane_engine_pending_approvals_count") == 1
    assert value("aiplane_engine_dlq_size_tasks") == 0
    labels = {"workflow": "quick", "step": "r", "type": "rules", "outcome": "succeeded"}
    before = value("aiplane_engine_step_duration_seconds_count", labels)
    with worker:
        for task in engine.list("acme", workflow="quick").items:
            wait_done(engine, "acme", task.id)
    assert value("aiplane_engine_step_duration_seconds_count", labels) - before == 3
