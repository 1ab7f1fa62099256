"""Retries, timeouts, non-retryable errors, the dead-letter queue and replay, against a real HTTP downstream."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from prometheus_client import REGISTRY

from engine import Engine, TaskState
from engine.resilience import Resilience, ResilienceConfig
from engine.store.schema import attempts
from tests.engine.conftest import (
    QUICK_RETRY,
    Downstream,
    EngineFactory,
    Reply,
    connector_step,
    fast_worker,
    wait_done,
    wait_state,
)
from tests.fixtures.polling import assert_eventually


def three_steps(retry: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "steps": [
            connector_step("a"),
            connector_step("b", retry=retry or QUICK_RETRY),
            connector_step("c"),
        ]
    }


def counts(downstream: Downstream) -> tuple[int, int, int]:
    return downstream.count("/c/a"), downstream.count("/c/b"), downstream.count("/c/c")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_retries_with_backoff_then_success(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("flaky", three_steps())
    downstream.script("/c/b", Reply(503), Reply(502), Reply(200, {"ok": True}))
    before = sample("aiplane_engine_retries_total", workflow="flaky", step="b")
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "flaky", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert counts(downstream) == (1, 3, 1)
    # Every attempt of the step carried the same idempotency key.
    assert len({call.headers["Idempotency-Key"] for call in downstream.calls["/c/b"]}) == 1
    retrying = [e for e in engine.events(done.id) if e.type == "step.retrying"]
    assert [e.payload["error"]["kind"] for e in retrying] == ["ServiceUnavailable", "BadGateway"]
    assert all(0.01 <= e.payload["delaySeconds"] <= 0.05 for e in retrying)
    assert sample("aiplane_engine_retries_total", workflow="flaky", step="b") - before == 2


def test_step_timeout_is_retried(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow(
        "slow-model",
        {
            "steps": [
                {"name": "predict", "type": "model", "model": {"name": "m"}, "timeout": "200ms", "retry": QUICK_RETRY}
            ]
        },
    )
    downstream.script("/models/m/predict", Reply(delay=2.0), Reply(body={"ok": True}))
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "slow-model", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert done.result == {"ok": True}
    with engine.db.read() as conn:
        outcomes = conn.execute(sa.select(attempts.c.outcome, attempts.c.error).order_by(attempts.c.number)).all()
    assert [o.outcome for o in outcomes] == ["retrying", "succeeded"]
    assert outcomes[0].error["kind"] == "Timeout"


def test_connector_timeout_is_retried(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow(
        "slow-connector",
        {"steps": [{"name": "call", "type": "connector", "connector": {"name": "slow"}, "retry": QUICK_RETRY}]},
    )
    downstream.script("/slow", Reply(delay=2.0), Reply())
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "slow-connector", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert downstream.count("/slow") == 2


def test_non_retryable_error_dead_letters_and_replay_resumes_at_the_failed_step(
    engine: Engine, downstream: Downstream
) -> None:
    engine.register_workflow("payout", three_steps())
    downstream.script("/c/b", Reply(400, {"error": "bad iban"}), Reply(200))
    with fast_worker(engine):
        task = engine.submit("acme", "payout", {})
        dead = wait_state(engine, "acme", task.id, TaskState.DEAD_LETTERED)
        assert counts(downstream) == (1, 1, 0)  # 400 is not retried
        assert dead.error is not None
        assert (dead.error["kind"], dead.error["step"], dead.error["reason"]) == ("BadRequest", "b", "NonRetryable")
        [letter] = engine.dead_letters("acme").items
        assert (letter.task_id, letter.step, letter.reason) == (task.id, "b", "NonRetryable")
        assert letter.last_error is not None
        assert letter.last_error["status"] == 400

        replayed = engine.replay("acme", task.id)
        assert replayed.state == TaskState.RUNNING
        done = wait_done(engine, "acme", task.id)

    assert done.state == TaskState.SUCCEEDED
    # The completed step a did not run again; b ran once more, with the same idempotency key; then c.
    assert counts(downstream) == (1, 2, 1)
    keys = [call.headers["Idempotency-Key"] for call in downstream.calls["/c/b"]]
    assert keys[0] == keys[1]
    assert engine.dead_letters("acme").items == []
    assert engine.dead_letters("acme", include_replayed=True).items[0].replayed_at is not None
    types = [e.type for e in engine.events(task.id)]
    assert types.index("task.dead_lettered") < types.index("task.replayed") < types.index("task.completed")


def test_exhausted_retries_dead_letter(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("down", three_steps({**QUICK_RETRY, "maxAttempts": 2}))
    downstream.script("/c/b", Reply(500))
    with fast_worker(engine):
        dead = wait_state(engine, "acme", engine.submit("acme", "down", {}).id, TaskState.DEAD_LETTERED)
    assert counts(downstream) == (1, 2, 0)
    assert dead.error is not None
    assert dead.error["reason"] == "RetriesExhausted"


def test_non_retryable_kinds_from_the_spec(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("strict", three_steps({**QUICK_RETRY, "nonRetryable": ["ServiceUnavailable"]}))
    downstream.script("/c/b", Reply(503))
    with fast_worker(engine):
        dead = wait_state(engine, "acme", engine.submit("acme", "strict", {}).id, TaskState.DEAD_LETTERED)
    assert downstream.count("/c/b") == 1
    assert dead.error is not None
    assert dead.error["reason"] == "NonRetryable"


def test_cel_errors_dead_letter_with_the_step_and_expression(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow(
        "cel", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "input.customer.tier"}}}]}
    )
    with fast_worker(engine):
        dead = wait_state(engine, "acme", engine.submit("acme", "cel", {"customer": {}}).id, TaskState.DEAD_LETTERED)
    assert dead.error is not None
    assert dead.error["kind"] == "CelEvaluationError"
    assert "step 'r' rules.set.x" in dead.error["message"]
    assert "input.customer.tier" in dead.error["message"]
    assert [s.attempts for s in engine.steps("acme", dead.id)] == [1]


def test_open_circuit_defers_without_using_up_attempts(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    # The breaker opens on the first failure and stays open 300ms: retries due meanwhile are deferred.
    engine = make_engine(sqlite_url, resilience=Resilience(ResilienceConfig(failure_threshold=1, open_for=0.3)))
    engine.register_workflow("guarded", three_steps())
    downstream.script("/c/b", Reply(500), Reply(500), Reply(200))
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "guarded", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert counts(downstream) == (1, 3, 1)
    with engine.db.read() as conn:
        outcomes = [
            r.outcome for r in conn.execute(sa.select(attempts.c.outcome).where(attempts.c.outcome == "deferred"))
        ]
    assert outcomes, "expected retries held back by the open circuit"
    b = next(s for s in engine.steps("acme", done.id) if s.name == "b")
    assert b.attempts == 3  # deferrals gave their attempts back: three real calls fit maxAttempts=3


def test_spent_retry_budget_defers_retries_through_a_worker(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    # One retry token and no refill: after the first retry, every retry due is deferred, however many attempts the
    # step has left. The breaker never opens, so only the budget holds the calls back.
    engine = make_engine(
        db_url,
        resilience=Resilience(ResilienceConfig(retry_ratio=0, retry_burst=1, failure_threshold=1000, budget_wait=0.05)),
    )
    engine.register_workflow("storm", {"steps": [connector_step("b", retry={**QUICK_RETRY, "maxAttempts": 5})]})
    downstream.script("/c/b", Reply(500))
    task = engine.submit("acme", "storm", {})

    def deferred() -> list[dict[str, Any]]:
        with engine.db.read() as conn:
            rows = conn.execute(
                sa.select(attempts.c.error).where(attempts.c.task_id == task.id, attempts.c.outcome == "deferred")
            ).all()
        return [row.error for row in rows]

    def deferred_several_times() -> None:
        assert len(deferred()) >= 3

    with fast_worker(engine):
        assert_eventually(deferred_several_times, timeout=20, interval=0.02)
        # The first try and the one budgeted retry went out; the deferred retries never reached the downstream.
        assert downstream.count("/c/b") == 2
        [step] = engine.steps("acme", task.id)
        assert step.attempts <= 3  # deferrals gave their attempts back: the step is not dead-lettered
        assert engine.get("acme", task.id).state == TaskState.RUNNING
    assert all(error["message"] == "retry budget for connector/c spent" for error in deferred())


def test_the_dlq_size_gauge_counts_dead_letters_until_replayed(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make_engine(db_url)
    engine.register_workflow("payout", three_steps())
    downstream.script("/c/b", Reply(400, {"error": "bad iban"}), Reply(200))

    def dlq_size(expected: float) -> None:
        assert sample("aiplane_engine_dlq_size_tasks") == expected

    # The worker's maintenance rounds refresh the store gauges (every 50 ms here).
    with fast_worker(engine, gauges_interval=0.05):
        task = engine.submit("acme", "payout", {})
        wait_state(engine, "acme", task.id, TaskState.DEAD_LETTERED)
        assert_eventually(lambda: dlq_size(1), timeout=20, interval=0.02)
        engine.replay("acme", task.id)
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
        assert_eventually(lambda: dlq_size(0), timeout=20, interval=0.02)
