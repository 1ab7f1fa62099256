"""Finished tasks, their durations and approval verdicts as Prometheus metrics, counted where the task ends."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from engine import Engine, TaskState
from engine.models import TERMINAL_TASK_STATES
from tests.engine.conftest import Downstream, EngineFactory, connector_step, fast_worker, wait_done, wait_state
from tests.engine.test_approvals import gated
from tests.fixtures.downstream import Reply


def _name(prefix: str) -> str:
    # The counters are per process: a workflow of its own keeps other tests' tasks out of the numbers.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _finished(workflow: str, outcome: str, path: str) -> float:
    labels = {"workflow": workflow, "outcome": outcome, "path": path}
    return REGISTRY.get_sample_value("aiplane_engine_tasks_finished_total", labels) or 0.0


def _durations(workflow: str, outcome: str) -> float:
    labels = {"workflow": workflow, "outcome": outcome}
    return REGISTRY.get_sample_value("aiplane_engine_task_duration_seconds_count", labels) or 0.0


def _verdicts(workflow: str, outcome: str) -> float:
    labels = {"workflow": workflow, "outcome": outcome}
    return REGISTRY.get_sample_value("aiplane_engine_approvals_decided_total", labels) or 0.0


def test_tasks_are_counted_by_outcome_and_path(engine: Engine, downstream: Downstream) -> None:
    plain, gate = _name("plain"), _name("gated")
    engine.register_workflow(plain, {"steps": [connector_step("one")]})
    engine.register_workflow(gate, gated())
    with fast_worker(engine):
        done = [wait_done(engine, "acme", engine.submit("acme", plain, {}).id) for _ in range(2)]
        approved = engine.submit("acme", gate, {})
        rejected = engine.submit("acme", gate, {})
        for task in (approved, rejected):
            wait_state(engine, "acme", task.id, TaskState.WAITING)
        by_task = {a.task_id: a.id for a in engine.approvals("acme").items}
        engine.approve(by_task[approved.id], "alice", "fine")
        engine.reject(by_task[rejected.id], "bob", "no")
        assert wait_done(engine, "acme", approved.id).state == TaskState.SUCCEEDED
        assert wait_done(engine, "acme", rejected.id).state == TaskState.REJECTED
        cancelled = engine.submit("acme", gate, {})
        wait_state(engine, "acme", cancelled.id, TaskState.WAITING)
        engine.cancel("acme", cancelled.id, "changed my mind")

    assert [task.state for task in done] == [TaskState.SUCCEEDED] * 2
    assert _finished(plain, "succeeded", "automated") == 2
    assert _durations(plain, "succeeded") == 2
    assert _finished(gate, "succeeded", "human") == 1
    assert _finished(gate, "rejected", "human") == 1
    # Cancelled while its approval was pending: nobody decided it.
    assert _finished(gate, "cancelled", "automated") == 1
    assert _durations(gate, "rejected") == 1
    assert (_verdicts(gate, "approved"), _verdicts(gate, "rejected")) == (1, 1)


def test_dead_letters_and_expired_approvals_are_counted(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine = make_engine(sqlite_url)
    failing, gate = _name("failing"), _name("expiring")
    downstream.script("/c/broken", Reply(400))
    engine.register_workflow(failing, {"steps": [connector_step("broken")]})
    engine.register_workflow(gate, gated(expiry="100ms"))
    with fast_worker(engine):
        assert wait_done(engine, "acme", engine.submit("acme", failing, {}).id).state == TaskState.DEAD_LETTERED
        assert wait_done(engine, "acme", engine.submit("acme", gate, {}).id).state == TaskState.FAILED
    assert _finished(failing, "dead_lettered", "automated") == 1
    assert _finished(gate, "failed", "automated") == 1
    assert _verdicts(gate, "expired") == 1


@contextmanager
def first_finishing_commit_fails(engine: Engine, task_id: str) -> Iterator[list[str]]:
    """Fail, with the OperationalError a lock timeout or dropped connection gives, the commit of the first
    transaction that ends ``task_id``: the store rolls it back and the worker retries the whole transaction. Yields
    the states the failed commit would have written (empty until it happened)."""
    failed: list[str] = []
    lock = threading.Lock()
    placeholder = "?" if engine.db.is_sqlite else "%s"

    def on_commit(conn: sa.Connection) -> None:
        # Before the DBAPI commit, on the transaction's own connection: it sees what the transaction wrote.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"SELECT state FROM tasks WHERE id = {placeholder}", (task_id,))
            row = cursor.fetchone()
        finally:
            cursor.close()
        with lock:
            if failed or row is None or row[0] not in {str(s) for s in TERMINAL_TASK_STATES}:
                return
            failed.append(row[0])
        raise sa.exc.OperationalError("COMMIT", {}, Exception("injected: the first commit that ends the task"))

    sa.event.listen(engine.db.engine, "commit", on_commit)
    try:
        yield failed
    finally:
        sa.event.remove(engine.db.engine, "commit", on_commit)


@pytest.mark.parametrize(
    ("path", "replies", "outcome"),
    [("fine", (), TaskState.SUCCEEDED), ("broken", (Reply(400),), TaskState.DEAD_LETTERED)],
    ids=["completed", "dead-lettered"],
)
def test_a_finish_whose_commit_is_retried_is_counted_once(
    engine: Engine, downstream: Downstream, path: str, replies: Any, outcome: TaskState
) -> None:
    workflow = _name("retried")
    downstream.script(f"/c/{path}", *replies)
    engine.register_workflow(workflow, {"steps": [connector_step(path)]})
    task = engine.submit("acme", workflow, {})
    with first_finishing_commit_fails(engine, task.id) as failed, fast_worker(engine):
        assert wait_done(engine, "acme", task.id).state == outcome
    # The store's first attempt to end the task was rolled back, the retried one committed: one finish, one count.
    assert failed == [outcome.value]
    assert downstream.count(f"/c/{path}") == 1
    assert _finished(workflow, outcome.value, "automated") == 1
    assert _durations(workflow, outcome.value) == 1
