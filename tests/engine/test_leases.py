"""Leases through real workers: heartbeats keep a slow step's lease, a lost lease with no attempts left
dead-letters, and on PostgreSQL a claim skips the rows another transaction holds instead of waiting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import timedelta

import sqlalchemy as sa

from engine import Engine, StepState, TaskState
from engine.store.schema import attempts, step_runs
from tests.engine.conftest import Downstream, EngineFactory, Reply, connector_step, fast_worker, wait_done, wait_state


def outcomes(engine: Engine, task_id: str) -> list[str]:
    with engine.db.read() as conn:
        return list(
            conn.scalars(sa.select(attempts.c.outcome).where(attempts.c.task_id == task_id).order_by(attempts.c.number))
        )


def test_heartbeats_keep_the_lease_of_a_step_that_outlasts_it(engine: Engine, downstream: Downstream) -> None:
    # The call takes more than three leases: only heartbeats (every lease / 3) keep the other worker off it.
    engine.register_workflow("slow", {"steps": [connector_step("slow")]})
    downstream.script("/c/slow", Reply(delay=3.5))
    lease = {"lease": timedelta(seconds=1)}
    with ExitStack() as stack:
        for name in ("w1", "w2"):
            stack.enter_context(fast_worker(engine, worker_id=name, **lease))
        done = wait_done(engine, "acme", engine.submit("acme", "slow", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert downstream.count("/c/slow") == 1
    [step] = engine.steps("acme", done.id)
    assert step.attempts == 1
    assert outcomes(engine, done.id) == ["succeeded"]
    assert "step.retrying" not in [e.type for e in engine.events(done.id)]


def test_a_lost_lease_with_no_attempts_left_dead_letters(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow("once", {"steps": [connector_step("once", retry={"maxAttempts": 1})]})
    task = engine.submit("acme", "once", {})
    # A worker that claims the step and is never heard of again (no heartbeat, no result).
    with engine.db.write() as conn:
        [claimed] = engine.machine.claim(
            conn, worker="doomed", limit=1, lease=timedelta(milliseconds=200), now=engine.clock()
        )
    assert claimed.attempt == 1
    with fast_worker(engine, worker_id="survivor"):
        dead = wait_state(engine, "acme", task.id, TaskState.DEAD_LETTERED)
    assert downstream.count("/c/once") == 0  # its only attempt was the lost one: nobody calls it again
    assert dead.error is not None
    assert (dead.error["kind"], dead.error["step"], dead.error["reason"]) == (
        "LeaseExpired",
        "once",
        "RetriesExhausted",
    )
    assert "no attempts are left" in dead.error["message"]
    [letter] = engine.dead_letters("acme").items
    assert (letter.task_id, letter.step, letter.reason) == (task.id, "once", "RetriesExhausted")
    assert letter.last_error is not None
    assert letter.last_error["kind"] == "LeaseExpired"
    [step] = engine.steps("acme", task.id)
    assert (step.state, step.attempts) == (StepState.FAILED, 1)
    assert outcomes(engine, task.id) == ["lost"]


def test_a_claim_skips_rows_locked_elsewhere_without_waiting(make_engine: EngineFactory, pg_url: str) -> None:
    engine = make_engine(pg_url)
    engine.register_workflow("wf", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]})
    held_task = engine.submit("acme", "wf", {})
    free_task = engine.submit("acme", "wf", {})
    other = sa.create_engine(pg_url)
    pool = ThreadPoolExecutor(1)

    def claim() -> list[str]:
        with engine.db.write() as conn:
            found = engine.machine.claim(conn, worker="w", limit=2, lease=timedelta(seconds=30), now=engine.clock())
        return [c.task_id for c in found]

    try:
        with other.connect() as locker:
            # Another transaction holds the first task's runnable step row, as a concurrent claim would.
            locker.execute(sa.select(step_runs.c.id).where(step_runs.c.task_id == held_task.id).with_for_update()).one()
            future = pool.submit(claim)
            try:
                # Generous: the lock is held until this returns, so a claim that waited for it would time out.
                claimed = future.result(timeout=30)
            finally:
                locker.rollback()  # lets a claim that did wait finish, so the test ends either way
        assert claimed == [free_task.id]
        # With the lock gone the skipped row is claimable as usual.
        assert claim() == [held_task.id]
    finally:
        pool.shutdown()
        other.dispose()
