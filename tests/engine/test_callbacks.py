"""Callbacks: a task's end is POSTed to its callback URL, at least once, with retries, never to private addresses
unless allowed; against a real HTTP server."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crds.workflow import Backoff
from engine import Accepted, Engine, Submission, TaskState
from engine.store.schema import callbacks
from tests.engine.conftest import Downstream, EngineFactory, Reply, fast_worker, wait_done
from tests.fixtures.polling import assert_eventually

QUICK = Backoff(initial="10ms", max="50ms", multiplier=2.0, jitter=0.0)
DECIDE = {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"large": "input.amount > 1000"}}}]}
FRAGILE = {
    "steps": [
        {
            "name": "post",
            "type": "connector",
            "connector": {"name": "c", "input": {"step": "'post'"}},
            "retry": {"maxAttempts": 1},
        }
    ]
}


def submit(engine: Engine, workflow: str, url: str, **input: Any) -> str:
    [outcome] = engine.submit_many(
        [Submission(tenant="acme", workflow=workflow, input=input, callback_url=url, request=None)]
    )
    assert isinstance(outcome, Accepted)
    return outcome.task.id


def callback_rows(engine: Engine) -> list[Any]:
    with engine.db.read() as conn:
        return list(conn.execute(sa.select(callbacks).order_by(callbacks.c.created_at)))


def test_a_finished_task_is_posted_to_its_callback_url(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make_engine(db_url, callbacks_to_private_networks=True)
    engine.register_workflow("decide", DECIDE)
    task_id = submit(engine, "decide", downstream.url("/hook"), amount=5000)
    with fast_worker(engine):
        assert wait_done(engine, "acme", task_id).state == TaskState.SUCCEEDED
        assert_eventually(lambda: downstream.count("/hook") == 1)
        assert_eventually(lambda: callback_rows(engine)[0].state == "delivered")
    [call] = downstream.calls["/hook"]
    assert call.method == "POST"
    [row] = callback_rows(engine)
    assert call.headers["idempotency-key"] == row.id
    assert call.body["type"] == "task.completed"
    assert call.body["id"] == row.id
    task = call.body["task"]
    assert (task["id"], task["workflow"], task["state"]) == (task_id, "decide", "succeeded")
    assert task["result"] == {"next": None, "vars": {"large": True}}
    assert row.attempts == 1


def test_a_failing_receiver_is_retried_until_it_takes_the_callback(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make_engine(db_url, callbacks_to_private_networks=True)
    engine.callback_sender.backoff = QUICK
    engine.register_workflow("decide", DECIDE)
    downstream.script("/hook", Reply(503), Reply(500), Reply(200))
    task_id = submit(engine, "decide", downstream.url("/hook"), amount=1)
    with fast_worker(engine):
        wait_done(engine, "acme", task_id)
        assert_eventually(lambda: callback_rows(engine)[0].state == "delivered")
    assert downstream.count("/hook") == 3
    keys = {call.headers["idempotency-key"] for call in downstream.calls["/hook"]}
    assert len(keys) == 1  # the same key on every attempt: the receiver can drop repeats
    assert callback_rows(engine)[0].attempts == 3


def test_a_refusing_receiver_fails_the_callback_at_once_and_the_end_of_a_dead_letter_is_sent_too(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make_engine(db_url, callbacks_to_private_networks=True)
    engine.register_workflow("fragile", FRAGILE)
    downstream.script("/c/post", Reply(400, {"error": "bad"}))
    downstream.script("/hook", Reply(410))
    task_id = submit(engine, "fragile", downstream.url("/hook"))
    with fast_worker(engine):
        assert wait_done(engine, "acme", task_id).state == TaskState.DEAD_LETTERED
        assert_eventually(lambda: callback_rows(engine)[0].state == "failed")
    [call] = downstream.calls["/hook"]
    assert call.body["type"] == "task.dead_lettered"
    assert call.body["task"]["state"] == "dead_lettered"
    assert call.body["task"]["error"]["reason"] == "NonRetryable"
    [row] = callback_rows(engine)
    assert (row.attempts, row.last_error["kind"]) == (1, "HTTP410")


def test_private_addresses_are_refused_unless_allowed(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make_engine(db_url)
    engine.register_workflow("decide", DECIDE)
    task_id = submit(engine, "decide", downstream.url("/hook"), amount=1)
    with fast_worker(engine):
        wait_done(engine, "acme", task_id)
        assert_eventually(lambda: callback_rows(engine)[0].state == "failed")
    assert downstream.count("/hook") == 0
    assert callback_rows(engine)[0].last_error["kind"] == "DestinationRefused"


def test_tasks_without_a_callback_url_write_none(engine: Engine) -> None:
    engine.register_workflow("decide", DECIDE)
    task = engine.submit("acme", "decide", {"amount": 1})
    with fast_worker(engine):
        wait_done(engine, "acme", task.id)
    assert callback_rows(engine) == []
