"""SLA deadlines (breach events, the counter, escalation) and priority classes with aging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from engine import ApprovalState, Engine, Priority, PriorityPolicy, TaskState
from tests.engine.conftest import Downstream, EngineFactory, connector_step, fast_worker, wait_done
from tests.fixtures.polling import assert_eventually


def breaches(workflow: str) -> float:
    return REGISTRY.get_sample_value("aiplane_engine_sla_breaches_total", {"workflow": workflow}) or 0.0


def test_sla_breach_is_recorded_and_escalates(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow(
        "urgent",
        {
            "steps": [
                {"name": "review", "type": "approval", "approval": {"expiry": "72h"}},
                connector_step("done", end=True),
                connector_step("escalate"),
            ],
            "sla": {"deadline": "300ms", "escalateTo": "escalate"},
        },
    )
    before = breaches("urgent")
    with fast_worker(engine):
        task = engine.submit("acme", "urgent", {})
        assert task.deadline is not None
        assert task.deadline - task.created_at == timedelta(milliseconds=300)
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert done.sla_breached_at is not None
    assert (downstream.count("/c/escalate"), downstream.count("/c/done")) == (1, 0)
    breached = [e for e in engine.events(task.id) if e.type == "sla.breached"]
    assert len(breached) == 1
    assert breached[0].payload["escalateTo"] == "escalate"
    assert breaches("urgent") - before == 1
    # The approval the task was waiting on no longer waits.
    assert engine.approvals("acme", state=None).items[0].state == ApprovalState.CANCELLED


def test_sla_breach_without_escalation_only_records(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("slow", {"steps": [{"name": "review", "type": "approval", "approval": {}}]})
    with fast_worker(engine):
        task = engine.submit("acme", "slow", {}, deadline=timedelta(milliseconds=100))

        def breached() -> None:
            current = engine.get("acme", task.id)
            assert current.sla_breached_at is not None
            assert current.state == TaskState.WAITING

        assert_eventually(breached, timeout=10, interval=0.02)
    assert [e.type for e in engine.events(task.id)].count("sla.breached") == 1


def test_higher_priorities_run_first(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow(
        "prio", {"steps": [connector_step("p", connector={"name": "c", "input": {"step": "'p'", "who": "input.who"}})]}
    )
    submitted = [("low-1", "low"), ("normal-1", "normal"), ("high-1", "high"), ("low-2", "low"), ("high-2", "high")]
    ids = [engine.submit("acme", "prio", {"who": who}, priority=level).id for who, level in submitted]
    with fast_worker(engine, concurrency=1):
        for task_id in ids:
            wait_done(engine, "acme", task_id)
    order = [call.body["who"] for call in downstream.calls["/c/p"]]
    assert order == ["high-1", "high-2", "normal-1", "low-1", "low-2"]


class SteppingClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_waiting_lower_priorities_age_past_newer_higher_ones(make_engine: EngineFactory, sqlite_url: str) -> None:
    clock = SteppingClock()
    policy = PriorityPolicy(
        {Priority.HIGH: timedelta(0), Priority.NORMAL: timedelta(seconds=5), Priority.LOW: timedelta(seconds=20)}
    )
    engine = make_engine(sqlite_url, clock=clock, priorities=policy)
    engine.register_workflow("wf", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]})
    old_low = engine.submit("acme", "wf", {}, priority="low")
    clock.now += timedelta(seconds=21)  # the low task has waited longer than the low/high gap
    new_high = engine.submit("acme", "wf", {}, priority="high")
    newer_high = engine.submit("acme", "wf", {}, priority="high")
    clock.now += timedelta(seconds=1)
    with engine.db.write() as conn:
        claimed = engine.machine.claim(conn, worker="w", limit=3, lease=timedelta(seconds=30), now=clock.now)
    assert [c.task_id for c in claimed] == [old_low.id, new_high.id, newer_high.id]
