"""A source's batch (``Engine.submit_batch``) meets its tenant's quotas of tasks in flight as a gateway submission
does, on SQLite and PostgreSQL: only as many of its inputs as the quotas leave room for become tasks, the first ones
in order, and each of the rest is answered ``QuotaExceededError`` with nothing written for it."""

from __future__ import annotations

from typing import Any

from crds.policy import Policy
from engine import Engine
from engine.errors import QuotaExceededError
from engine.runtime.bulk import Batch, Taken
from policies.quota import Quotas
from tests.engine.conftest import EngineFactory

RULES = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]}


def _quota(name: str, limit: int, priority: str | None = None) -> Policy:
    quota: dict[str, Any] = {"maxTasksInFlight": limit, **({"priority": priority} if priority else {})}
    return Policy.model_validate({"metadata": {"name": name}, "spec": {"quota": quota}})


def _batch(first: int, count: int, priority: str = "normal") -> Batch:
    return Batch(
        tenant="acme",
        workflow="wf",
        inputs=[{"n": n} for n in range(first, first + count)],
        keys=[f"k-{n}" for n in range(first, first + count)],
        trace_contexts=[None] * count,
        priority=priority,
    )


def _engine(make_engine: EngineFactory, db_url: str, *policies: Policy) -> Engine:
    engine = make_engine(db_url, quota=Quotas(policies).max_in_flight)
    engine.register_workflow("wf", RULES)
    return engine


def test_a_batch_takes_the_room_its_quota_leaves_and_refuses_the_rest(make_engine: EngineFactory, db_url: str) -> None:
    engine = _engine(make_engine, db_url, _quota("small", 3))
    outcomes = engine.submit_batch(_batch(0, 5))
    assert [isinstance(o, Taken) and o.created for o in outcomes] == [True, True, True, False, False]
    refused = outcomes[3]
    assert isinstance(refused, QuotaExceededError)
    assert refused.fields["limit"] == 3
    assert refused is outcomes[4]
    assert sorted(t.input["n"] for t in engine.list("acme", include_payloads=True).items) == [0, 1, 2]
    # Full: a next batch is refused as a whole, a repeated key included (it made no task the first time).
    assert all(isinstance(o, QuotaExceededError) for o in engine.submit_batch(_batch(3, 2)))
    # A finished task makes room for one more.
    engine.cancel("acme", outcomes[0].task_id)  # type: ignore[union-attr]
    again = engine.submit_batch(_batch(3, 2))
    assert [isinstance(o, Taken) for o in again] == [True, False]
    assert len(engine.list("acme").items) == 4


def test_a_priority_class_quota_bounds_the_batch_of_that_class(make_engine: EngineFactory, db_url: str) -> None:
    engine = _engine(make_engine, db_url, _quota("all", 10), _quota("low", 2, priority="low"))
    low = engine.submit_batch(_batch(0, 4, priority="low"))
    assert [isinstance(o, Taken) for o in low] == [True, True, False, False]
    assert isinstance(low[2], QuotaExceededError)
    assert low[2].fields["priority"] == "low"
    normal = engine.submit_batch(_batch(10, 9))  # 2 low + 9 normal > 10: the tenant-wide quota leaves 8
    assert [isinstance(o, Taken) for o in normal] == [True] * 8 + [False]
