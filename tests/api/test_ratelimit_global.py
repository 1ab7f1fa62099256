"""Rate limits that hold across gateway replicas: the global token buckets in the store (engine.store.ratelimit),
leased in chunks by each replica (policies.ratelimit), and two real gateways on one PostgreSQL admitting together
no more than one limit allows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import create_api_key, create_app
from api.auth import follow_policies
from crds.policy import Policy, RateLimit
from engine import Engine, RateBudgetStore
from engine.store.database import Database
from policies.effective import Target
from policies.ratelimit import LEASE_TTL, Lease, RateLimiter, Refusal
from policies.sources import PolicySet
from tests.api.conftest import SETTINGS, Upstream, assert_problem, auth, workflows
from tests.fixtures.clocks import SettableClock

# ---------------------------------------------------------------- the store's buckets


def test_a_store_bucket_grants_its_burst_then_refills_at_its_rate(db: Database) -> None:
    clock = SettableClock(1_000_000.0)
    budget = RateBudgetStore(db, clock=clock)
    first = budget.lease("acme", "*", rate=2, burst=3, want=2, returned=0)
    assert first.granted == 2  # a new bucket starts full
    second = budget.lease("acme", "*", rate=2, burst=3, want=2, returned=0)
    assert second.granted == 1  # what is left, a whole token
    empty = budget.lease("acme", "*", rate=2, burst=3, want=2, returned=0)
    assert empty.granted == 0
    assert empty.retry_after == pytest.approx(0.5)
    clock.now += 0.25  # half a token: still nothing, and half the wait
    half = budget.lease("acme", "*", rate=2, burst=3, want=2, returned=0)
    assert half.granted == 0
    assert half.retry_after == pytest.approx(0.25)
    # Returned tokens count again; refills stop at the burst.
    assert budget.lease("acme", "*", rate=2, burst=3, want=5, returned=0.5).granted == 1
    clock.now += 3600
    assert budget.lease("acme", "*", rate=2, burst=3, want=5, returned=0).granted == 3
    # Other tenants and classes are other rows.
    assert budget.lease("globex", "*", rate=2, burst=3, want=1, returned=0).granted == 1
    assert budget.lease("acme", "low", rate=2, burst=3, want=1, returned=0).granted == 1


def test_replicas_leasing_from_one_budget_share_one_limit(db: Database) -> None:
    clock = SettableClock(1_000_000.0)
    budget = RateBudgetStore(db, clock=clock)
    limits = [RateLimit(requests_per_second=10, burst=5)]
    one = RateLimiter(limits, clock=clock, budget=budget)
    two = RateLimiter(limits, clock=clock, budget=budget)
    taken = [replica.take("acme") for _ in range(4) for replica in (one, two)]
    assert sum(answer is None for answer in taken) == 5  # the burst, once, not once per replica
    refusal = taken[-1]
    assert isinstance(refusal, Refusal)
    assert refusal.retry_after_header == "1"
    # Refused locally until the store has a token again: no lease per refused request.
    assert one.take_local("acme") == one.take("acme")
    clock.now += 0.15  # a token and a half at 10/s: one request more, on either replica
    answers = [one.take("acme"), two.take("acme")]
    assert answers.count(None) == 1


def test_tokens_a_replica_holds_go_stale_and_back_to_the_store(db: Database) -> None:
    clock = SettableClock(1_000_000.0)
    budget = RateBudgetStore(db, clock=clock)
    limits = [RateLimit(requests_per_second=100, burst=20)]  # chunks of 10 tokens
    busy = RateLimiter(limits, clock=clock, budget=budget)
    assert busy.take("acme") is None  # leased 10, holds 9
    clock.now += LEASE_TTL + 0.001
    # The bucket refilled to its burst meanwhile, and another replica drains it.
    other = RateLimiter(limits, clock=clock, budget=budget)
    assert sum(other.take("acme") is None for _ in range(30)) == 20
    # The 9 tokens busy held are stale: it cannot spend them as they are, they go back with its next lease, and
    # that lease gets them (nothing is lost: the sustained rate stays exact). So a burst can go over by at most
    # the one chunk a replica holds: 20 + 10 here.
    assert sum(busy.take("acme") is None for _ in range(30)) == 9


# ---------------------------------------------------------------- two gateways on one PostgreSQL


@pytest.fixture
def gateways(pg_url: str, tmp_path: Path, upstream: Upstream) -> Iterator[tuple[TestClient, TestClient, str]]:
    engines = [Engine(pg_url, data_dir=tmp_path / f"data-{n}") for n in (1, 2)]
    for name, spec in workflows().items():
        engines[0].register_workflow(name, spec)
    key = create_api_key(engines[0], "acme", "alice", ["submitter"])
    policies = PolicySet(
        [
            Policy.model_validate(
                {
                    "metadata": {"name": "limits", "namespace": "claims"},
                    "spec": {
                        "rateLimits": [
                            {"requestsPerSecond": 0.001, "burst": 6},
                            {"priority": "low", "requestsPerSecond": 0.001, "burst": 2},
                        ]
                    },
                }
            )
        ]
    )
    apps = [create_app(engine, SETTINGS) for engine in engines]
    for app in apps:
        follow_policies(app.state.gateway, policies, {"echo": Target("Workflow", "echo")})
    try:
        with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
            yield one, two, key
    finally:
        for engine in engines:
            engine.close()


def test_two_gateways_admit_one_limit_between_them(gateways: tuple[TestClient, TestClient, str]) -> None:
    one, two, key = gateways
    body = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}
    low = {**body, "priority": "low"}
    # Low-priority submissions alternate between the gateways: 2 in all, not 2 each.
    answers = [client.post("/v1/tasks", json=low, headers=auth(key)) for _ in range(2) for client in (one, two)]
    assert [answer.status_code for answer in answers] == [202, 202, 429, 429]
    problem = assert_problem(answers[-1], 429, "rate-limited")
    assert problem["priority"] == "low"
    assert int(answers[-1].headers["retry-after"]) >= 1
    # The tenant-wide bucket (burst 6, 2 spent): 4 more between both gateways, then 429 with Retry-After on each.
    statuses = [
        client.post("/v1/tasks", json=body, headers=auth(key)).status_code for _ in range(4) for client in (one, two)
    ]
    assert statuses.count(202) == 4
    assert statuses[-2:] == [429, 429]
    for client in (one, two):
        refused = client.post("/v1/tasks", json=body, headers=auth(key))
        assert_problem(refused, 429, "rate-limited")
        assert int(refused.headers["retry-after"]) >= 1
    # What was admitted is what the store holds: 6 tasks.
    assert len(one.get("/v1/tasks?limit=100", headers=auth(key)).json()["items"]) == 6


def test_a_replica_over_its_limit_leases_once_a_chunk_and_loses_no_tokens(db: Database) -> None:
    clock = SettableClock(1_000_000.0)
    store = RateBudgetStore(db, clock=clock)
    leases: list[float] = []

    class Counting:
        def lease(self, tenant: str, bucket: str, *, rate: float, burst: int, want: float, returned: float) -> Lease:
            answer = store.lease(tenant, bucket, rate=rate, burst=burst, want=want, returned=returned)
            leases.append(answer.granted)
            return answer

    limiter = RateLimiter(
        [RateLimit(requests_per_second=100, burst=20)], clock=clock, budget=Counting()
    )  # chunks of 10
    assert sum(limiter.take("acme") is None for _ in range(40)) == 20  # the burst
    leases.clear()
    admitted = 0
    for _ in range(100):  # a second of a flood, 4 requests every 10 ms: 4 times the rate
        clock.now += 0.01
        admitted += sum(limiter.take("acme") is None for _ in range(4))
    # Refused locally until a whole chunk is due: about two leases a tenth of a second (a chunk, then what came in
    # while it was spent), not one a token (100)...
    assert len(leases) <= 20
    # ...and the tokens waited in the store meanwhile: the second admits the rate, less at most a chunk in waiting.
    assert 90 <= admitted <= 100
