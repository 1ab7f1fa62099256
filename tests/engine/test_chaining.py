"""Chained steps: a worker completing a step may take the task's next one in the same transaction.

Chaining saves a transaction and a trip through the claim loop per step; these tests pin down when it may
happen (the worker can run the step, nothing due is queued ahead of it, it is not an approval) and that a
chained step sees exactly what a freshly claimed one would.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from engine import Engine, TaskState
from engine.executors.base import StepOutcome
from engine.runtime.transitions import Chain
from tests.engine.conftest import fast_worker, wait_done

LEASE = timedelta(seconds=30)


def rules(name: str, expression: str) -> dict[str, Any]:
    return {"name": name, "type": "rules", "rules": {"set": {name: expression}}}


def chain(*types: str) -> Chain:
    return Chain("w1", LEASE, frozenset(types or ("rules",)))


def test_a_worker_runs_a_sequence_of_steps_back_to_back(engine: Engine) -> None:
    """Each later step starts in the transaction that completed the one before (same timestamp), and sees the
    earlier outputs and vars exactly as a read of the store would give them."""
    engine.register_workflow(
        "seq",
        {
            "steps": [
                rules("a", "input.n + 1"),
                rules("b", "vars.a * 10"),
                rules("c", "steps.b.output.vars.b + vars.a"),
            ]
        },
    )
    task = engine.submit("acme", "seq", {"n": 1})
    with fast_worker(engine):
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert done.vars == {"a": 2, "b": 20, "c": 22}
    events = engine.events(task.id)
    completed = {e.payload["step"]: e.created_at for e in events if e.type == "step.completed"}
    started = {e.payload["step"]: e.created_at for e in events if e.type == "step.started"}
    assert started["b"] == completed["a"]
    assert started["c"] == completed["b"]
    assert [s.attempts for s in engine.steps("acme", task.id)] == [1, 1, 1]


def test_without_chaining_every_step_goes_through_the_queue(engine: Engine) -> None:
    engine.register_workflow("seq", {"steps": [rules("a", "1"), rules("b", "2")]})
    task = engine.submit("acme", "seq", {})
    with fast_worker(engine, chain_steps=False):
        done = wait_done(engine, "acme", task.id)
    assert done.vars == {"a": 1, "b": 2}
    events = engine.events(task.id)
    completed = {e.payload["step"]: e.created_at for e in events if e.type == "step.completed"}
    started = {e.payload["step"]: e.created_at for e in events if e.type == "step.started"}
    assert started["b"] > completed["a"]


def _claim_first(engine: Engine, worker: str = "w1") -> Any:
    with engine.db.write() as conn:
        [claimed] = engine.machine.claim(conn, worker=worker, limit=1, lease=LEASE, now=engine.clock())
    return claimed


def test_a_step_queued_ahead_is_not_overtaken(engine: Engine) -> None:
    """Another task's due step with an earlier place in the queue goes first: no chaining past it."""
    engine.register_workflow("seq", {"steps": [rules("a", "1"), rules("b", "2")]})
    mine = engine.submit("acme", "seq", {}, priority="high")
    claimed = _claim_first(engine)
    other = engine.submit("acme", "seq", {}, priority="high")  # due now, queued before mine's next step
    with engine.db.write() as conn:
        completed = engine.machine.complete(conn, claimed, StepOutcome(output=1), engine.clock(), chain=chain())
    assert completed is not None
    assert completed.next is None
    [_, b] = engine.steps("acme", mine.id)
    assert (b.name, b.state, b.lease_owner) == ("b", "runnable", None)
    assert engine.get("acme", other.id).state == TaskState.QUEUED


def test_with_nothing_ahead_the_next_step_comes_leased(engine: Engine) -> None:
    engine.register_workflow("seq", {"steps": [rules("a", "1"), rules("b", "2")]})
    task = engine.submit("acme", "seq", {})
    claimed = _claim_first(engine)
    with engine.db.write() as conn:
        completed = engine.machine.complete(conn, claimed, StepOutcome(output=1), engine.clock(), chain=chain())
    assert completed is not None
    assert completed.next is not None
    nxt = completed.next
    assert (nxt.step, nxt.attempt, nxt.seq, nxt.task_id) == ("b", 1, 2, task.id)
    [_, b] = engine.steps("acme", task.id)
    assert (b.state, b.lease_owner, b.attempts) == ("running", "w1", 1)
    assert engine.get("acme", task.id).state == TaskState.RUNNING
    # The chained lease is a real one: another worker cannot take the step while it holds.
    with engine.db.write() as conn:
        assert engine.machine.claim(conn, worker="w2", limit=1, lease=LEASE, now=engine.clock()) == []


def test_approvals_and_steps_the_worker_cannot_run_are_not_chained(engine: Engine) -> None:
    approval = {"name": "ok", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}}}
    engine.register_workflow("gate", {"steps": [rules("a", "1"), approval]})
    engine.register_workflow("other", {"steps": [rules("a", "1"), rules("b", "2")]})
    gated = engine.submit("acme", "gate", {})
    claimed = _claim_first(engine)
    with engine.db.write() as conn:
        completed = engine.machine.complete(conn, claimed, StepOutcome(output=1), engine.clock(), chain=chain())
    assert completed is not None
    assert completed.next is None
    assert engine.get("acme", gated.id).state == TaskState.WAITING

    other = engine.submit("acme", "other", {})
    claimed = _claim_first(engine)
    assert claimed.task_id == other.id
    with engine.db.write() as conn:
        completed = engine.machine.complete(
            conn, claimed, StepOutcome(output=1), engine.clock(), chain=chain("model", "connector")
        )
    assert completed is not None
    assert completed.next is None
    assert engine.steps("acme", other.id)[1].state == "runnable"


def test_a_chained_step_whose_worker_died_is_retried_by_another(engine: Engine) -> None:
    """A chained lease expires like any other: the next worker counts the lost attempt and runs it again."""
    engine.register_workflow("seq", {"steps": [rules("a", "1"), rules("b", "2")]})
    task = engine.submit("acme", "seq", {})
    claimed = _claim_first(engine)
    short = Chain("doomed", timedelta(seconds=1), frozenset({"rules"}))
    with engine.db.write() as conn:
        completed = engine.machine.complete(conn, claimed, StepOutcome(output=1), engine.clock(), chain=short)
    assert completed is not None
    assert completed.next is not None
    later = engine.clock() + timedelta(seconds=2)
    with engine.db.write() as conn:
        [again] = engine.machine.claim(conn, worker="w2", limit=1, lease=LEASE, now=later)
    assert (again.step, again.attempt) == ("b", 2)
    with engine.db.write() as conn:
        assert engine.machine.complete(conn, completed.next, StepOutcome(output=2), later) is None
        assert engine.machine.complete(conn, again, StepOutcome(output=2), later) is not None
    assert engine.get("acme", task.id).state == TaskState.SUCCEEDED
