"""A worker killed mid-step: its lease runs out, another worker finishes the task, completed steps ran once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine import Engine, StaticConnectorResolver, StepState, TaskState
from engine.executors.base import StepOutcome
from engine.store.schema import attempts
from tests.engine.conftest import Downstream, EngineFactory, fast_worker, kill_worker_mid_call, wait_done

REPO = Path(__file__).resolve().parents[2]


def crash_workflow() -> dict[str, object]:
    # No CEL in these steps: the worker subprocess then never builds the CEL parser, and starts faster.
    return {"steps": [{"name": s, "type": "connector", "connector": {"name": f"c{s}"}} for s in ("a", "b", "c")]}


def resolvers(downstream: Downstream) -> dict[str, Any]:
    return {
        f"c{s}": {"type": "http", "http": {"url": downstream.url(f"/crash/{s}"), "allowPrivateNetworks": True}}
        for s in ("a", "b", "c")
    }


def test_killed_worker_step_is_retried_elsewhere_and_completed_steps_run_once(
    make_engine: EngineFactory, db_url: str, downstream: Downstream, tmp_path: Path
) -> None:
    engine = make_engine(db_url, connector_resolver=StaticConnectorResolver(resolvers(downstream)))
    engine.register_workflow("crash", crash_workflow())
    task = engine.submit("acme", "crash", {"claim": 1})
    # Step b's first call is held open until its worker is dead.
    kill_worker_mid_call(
        db_url, tmp_path, {"connectors": resolvers(downstream)}, downstream=downstream, path="/crash/b"
    )
    [running] = [s for s in engine.steps("acme", task.id) if s.name == "b"]
    assert (running.state, running.lease_owner) == (StepState.RUNNING, "doomed")

    with fast_worker(engine, worker_id="survivor"):
        done = wait_done(engine, "acme", task.id)

    assert done.state == TaskState.SUCCEEDED
    assert (downstream.count("/crash/a"), downstream.count("/crash/b"), downstream.count("/crash/c")) == (1, 2, 1)
    first, second = downstream.calls["/crash/b"]
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    with engine.db.read() as conn:
        history = conn.execute(
            sa.select(attempts.c.worker, attempts.c.outcome)
            .where(attempts.c.task_id == task.id)
            .order_by(attempts.c.started_at, attempts.c.number)
        ).all()
    assert [tuple(row) for row in history] == [
        ("doomed", "succeeded"),
        ("doomed", "lost"),
        ("survivor", "succeeded"),
        ("survivor", "succeeded"),
    ]


def test_a_worker_that_lost_its_lease_cannot_complete(engine: Engine) -> None:
    """Fencing: once a lease expired and the step was claimed again, the first worker's result is refused."""
    engine.register_workflow("wf", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]})
    task = engine.submit("acme", "wf", {})
    now = engine.clock()
    with engine.db.write() as conn:
        [stale] = engine.machine.claim(conn, worker="slow", limit=1, lease=timedelta(seconds=1), now=now)
    later = now + timedelta(seconds=2)
    with engine.db.write() as conn:
        [fresh] = engine.machine.claim(conn, worker="fast", limit=1, lease=timedelta(seconds=30), now=later)
    assert fresh.attempt == stale.attempt + 1
    with engine.db.write() as conn:
        assert engine.machine.complete(conn, stale, StepOutcome(output="stale"), later) is None
        assert engine.machine.heartbeat(conn, stale, lease=timedelta(seconds=30), now=later) is False
    with engine.db.write() as conn:
        assert engine.machine.complete(conn, fresh, StepOutcome(output="fresh"), later) is not None
    done = engine.get("acme", task.id)
    assert (done.state, done.result) == (TaskState.SUCCEEDED, "fresh")
    with engine.db.write() as conn:  # a completed step is never claimable again
        assert (
            engine.machine.claim(
                conn, worker="any", limit=5, lease=timedelta(seconds=1), now=later + timedelta(hours=1)
            )
            == []
        )
