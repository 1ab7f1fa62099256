"""Batched submission (``Engine.submit_many``): each submission's outcome is what it would be alone."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from crds.workflow import WorkflowSpec
from engine import (
    Accepted,
    Engine,
    IdempotencyConflictError,
    IdempotencyMismatchError,
    Replayed,
    RequestKey,
    Submission,
    TaskState,
    WorkflowNotFoundError,
)
from engine.store.schema import events, idempotency_keys, tasks
from tests.engine.conftest import fast_worker, wait_done

FLOW = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"double": "input.n * 2"}}}]}


class RefusedError(Exception):
    pass


def respond(task: Any, steps: list[Any]) -> dict[str, Any]:
    return {"status": 202, "task": task.id, "steps": [s.name for s in steps], "state": task.state.value}


def sub(n: int, **extra: Any) -> Submission:
    return Submission(tenant="acme", workflow="wf", input={"n": n}, **extra)


def count(engine: Engine, table: sa.Table) -> int:
    with engine.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_one_batch_gives_each_submission_its_own_outcome(engine: Engine) -> None:
    engine.register_workflow("wf", FLOW)

    def too_big(version: str, spec: WorkflowSpec) -> None:
        raise RefusedError(f"n too big for {version}")

    outcomes = engine.submit_many(
        [
            sub(1),
            sub(2, request=RequestKey(key="k1", fingerprint="f1", respond=respond)),
            sub(2, request=RequestKey(key="k1", fingerprint="f1", respond=respond)),  # same request again
            sub(3, request=RequestKey(key="k1", fingerprint="other", respond=respond)),  # same key, other body
            Submission(tenant="acme", workflow="missing", input={}),
            sub(4, validate=too_big),
            sub(5, request=RequestKey(key="k2", fingerprint="f2")),  # answered later (sync): in flight
            sub(5, request=RequestKey(key="k2", fingerprint="f2")),
            Submission(tenant="other", workflow="wf", input={"n": 6}, request=RequestKey(key="k1", fingerprint="f1")),
        ]
    )
    first, keyed, replay, mismatch, missing, refused, in_flight, conflict, other_tenant = outcomes
    assert isinstance(first, Accepted)
    assert isinstance(keyed, Accepted)
    assert isinstance(replay, Replayed)
    assert replay.response == respond(keyed.task, keyed.steps)
    assert isinstance(mismatch, IdempotencyMismatchError)
    assert isinstance(missing, WorkflowNotFoundError)
    assert isinstance(refused, RefusedError)
    assert isinstance(in_flight, Accepted)
    assert isinstance(conflict, IdempotencyConflictError)
    assert isinstance(other_tenant, Accepted)  # keys are scoped per tenant

    accepted = [o for o in outcomes if isinstance(o, Accepted)]
    assert count(engine, tasks) == len(accepted) == 4
    assert count(engine, events) == 4  # one task.submitted each; nothing for the refused ones
    with engine.db.read() as conn:
        rows = {(r.tenant, r.key): r for r in conn.execute(sa.select(idempotency_keys))}
    assert rows["acme", "k1"].state == "done"
    assert rows["acme", "k1"].response == respond(keyed.task, keyed.steps)
    assert rows["acme", "k2"].state == "in_flight"
    assert rows["acme", "k2"].response is None

    # What the batch answered is what the store holds, and the tasks run.
    for outcome in accepted:
        assert engine.get(outcome.task.tenant, outcome.task.id) == outcome.task
        assert engine.steps(outcome.task.tenant, outcome.task.id) == outcome.steps
    with fast_worker(engine):
        done = wait_done(engine, "acme", keyed.task.id)
    assert (done.state, done.vars) == (TaskState.SUCCEEDED, {"double": 4})


def test_the_descriptor_is_stored_with_the_task(engine: Engine) -> None:
    engine.register_workflow("wf", FLOW)
    [outcome] = engine.submit_many(
        [
            sub(
                1,
                annotations={"privacy": "pii", "retention": "P30D"},
                callback_url="https://claims.example/hook",
                submitted_by="intake-service",
                request=RequestKey(key="req-1", fingerprint="f"),
            )
        ]
    )
    assert isinstance(outcome, Accepted)
    task = engine.get("acme", outcome.task.id)
    assert task.annotations == {"privacy": "pii", "retention": "P30D"}
    assert task.callback_url == "https://claims.example/hook"
    assert task.submitted_by == "intake-service"
    assert task.request_key == "req-1"
    assert task.idempotency_key is None


def test_task_idempotency_keys_dedupe_within_and_across_batches(engine: Engine) -> None:
    engine.register_workflow("wf", FLOW)
    first = engine.submit("acme", "wf", {"n": 1}, idempotency_key="msg-1")
    again, new, mismatch = engine.submit_many(
        [sub(1, idempotency_key="msg-1"), sub(2, idempotency_key="msg-2"), sub(9, idempotency_key="msg-1")]
    )
    assert isinstance(again, Accepted)
    assert not again.created
    assert again.task.id == first.id
    assert isinstance(new, Accepted)
    assert new.created
    assert isinstance(mismatch, IdempotencyMismatchError)
    assert count(engine, tasks) == 2


def test_both_kinds_of_key_at_once_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        sub(1, idempotency_key="a", request=RequestKey(key="b", fingerprint="f"))
