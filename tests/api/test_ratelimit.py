"""Rate limits per tenant and priority class: token buckets, 429 with Retry-After and a problem body, the same from
the submission fast path as from the route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import create_app
from api.auth import follow_policies
from api.fast_submit import SubmitFastPath
from crds.policy import Policy, RateLimit
from engine import Engine
from policies.effective import Target
from policies.ratelimit import RateLimiter, limits_from_policies, strictest
from policies.sources import PolicySet
from tests.api.conftest import SETTINGS, Keys, Upstream, app_without, assert_problem, auth
from tests.fixtures.clocks import SettableClock

# ---------------------------------------------------------------- the buckets


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = SettableClock(1000.0)
    limiter = RateLimiter([RateLimit(requests_per_second=2, burst=3)], clock=clock)
    assert [limiter.take("acme", "normal") for _ in range(3)] == [None, None, None]
    refusal = limiter.take("acme", "normal")
    assert refusal is not None
    assert (refusal.tenant, refusal.priority, refusal.rate, refusal.burst) == ("acme", "*", 2, 3)
    assert refusal.retry_after == pytest.approx(0.5)
    assert refusal.retry_after_header == "1"  # whole seconds, rounded up, never 0
    clock.now += 0.5
    assert limiter.take("acme", "normal") is None
    assert limiter.take("acme", "normal") is not None
    clock.now += 60  # the bucket fills up to its burst, no further
    assert [limiter.take("acme", None) for _ in range(4)][-1] is not None


def test_tenants_have_buckets_of_their_own() -> None:
    limiter = RateLimiter([RateLimit(requests_per_second=1, burst=1)], clock=SettableClock(1000.0))
    assert limiter.take("acme") is None
    assert limiter.take("acme") is not None
    assert limiter.take("globex") is None


def test_a_priority_class_limit_counts_that_class_only() -> None:
    limiter = RateLimiter(
        [RateLimit(requests_per_second=1, burst=5), RateLimit(priority="low", requests_per_second=1, burst=1)],
        clock=SettableClock(1000.0),
    )
    assert limiter.take("acme", "low") is None
    refusal = limiter.take("acme", "low")
    assert refusal is not None
    assert refusal.priority == "low"
    assert "low-priority submissions" in refusal.describe()
    # The refused low request took no tenant-wide token: 4 are left of 5 for the other classes.
    assert [limiter.take("acme", p) for p in ("high", "normal", None, "high")] == [None] * 4
    refusal = limiter.take("acme", "high")
    assert refusal is not None
    assert refusal.priority == "*"
    assert "all its requests" in refusal.describe()


def test_without_limits_everything_passes() -> None:
    limiter = RateLimiter()
    assert not limiter.enabled
    assert all(limiter.take("acme", "high") is None for _ in range(1000))


def test_the_strictest_limit_wins_per_class() -> None:
    combined = strictest(
        [
            RateLimit(requests_per_second=10, burst=5),
            RateLimit(requests_per_second=3, burst=50),
            RateLimit(priority="low", requests_per_second=1, burst=2),
        ]
    )
    assert combined["*"] == RateLimit(requests_per_second=3, burst=5)
    assert combined["low"] == RateLimit(priority="low", requests_per_second=1, burst=2)


def _policy(name: str, spec: dict[str, object]) -> Policy:
    return Policy.model_validate({"metadata": {"name": name, "namespace": "claims"}, "spec": spec})


def test_limits_come_from_the_policies_that_apply_to_a_tenant() -> None:
    everyone, named = limits_from_policies(
        [
            _policy("all", {"rateLimits": [{"requestsPerSecond": 100, "burst": 100}]}),
            _policy(
                "acme",
                {"access": {"tenants": ["acme"]}, "rateLimits": [{"requestsPerSecond": 1, "burst": 2}]},
            ),
            _policy("none", {"pii": {}}),
        ]
    )
    limiter = RateLimiter(everyone, named, clock=SettableClock(1000.0))
    assert [limiter.take("acme") is None for _ in range(3)] == [True, True, False]
    assert all(limiter.take("globex") is None for _ in range(100))
    assert limiter.take("globex") is not None


# ---------------------------------------------------------------- through the gateway


LIMITS = [RateLimit(requests_per_second=0.25, burst=2), RateLimit(priority="low", requests_per_second=0.5, burst=1)]
BODY = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}


def limited_app(engine: Engine, clock: SettableClock[float], *, fast: bool = True) -> FastAPI:
    limiter = RateLimiter(LIMITS, clock=clock)
    if fast:
        return create_app(engine, SETTINGS, rate_limiter=limiter)
    app = app_without(engine, SubmitFastPath)
    app.state.gateway.limiter = limiter
    return app


@pytest.fixture
def limited(engine: Engine) -> Iterator[TestClient]:
    with TestClient(limited_app(engine, SettableClock(1000.0))) as client:
        yield client


def test_over_the_limit_is_429_with_retry_after_and_a_problem(limited: TestClient, keys: Keys) -> None:
    for _ in range(2):
        assert limited.post("/v1/tasks", json=BODY, headers=auth(keys.alice)).status_code == 202
    response = limited.post("/v1/tasks", json=BODY, headers=auth(keys.alice))
    problem = assert_problem(response, 429, "rate-limited")
    assert response.headers["retry-after"] == "4"  # one token at 0.25/s
    assert problem["tenant"] == "acme"
    assert problem["priority"] == "*"
    assert "0.25 per second" in problem["detail"]
    # Another tenant has its own buckets; a model call counts against the tenant-wide one.
    assert limited.post("/v1/tasks", json=BODY, headers=auth(keys.globex)).status_code == 202
    assert_problem(limited.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice)), 429, "rate-limited")
    # The refused requests wrote nothing: acme has its two tasks.
    assert len(limited.get("/v1/tasks", headers=auth(keys.alice)).json()["items"]) == 2


def test_a_priority_class_has_its_own_limit(limited: TestClient, keys: Keys) -> None:
    low = {**BODY, "priority": "low"}
    assert limited.post("/v1/tasks", json=low, headers=auth(keys.alice)).status_code == 202
    response = limited.post("/v1/tasks", json=low, headers=auth(keys.alice))
    assert_problem(response, 429, "rate-limited")
    assert response.headers["retry-after"] == "2"
    assert limited.post("/v1/tasks", json={**BODY, "priority": "high"}, headers=auth(keys.alice)).status_code == 202


def test_unauthenticated_requests_spend_no_tokens(limited: TestClient, keys: Keys) -> None:
    for _ in range(5):
        assert_problem(limited.post("/v1/tasks", json=BODY, headers=auth("aip_nope")), 401)
        assert_problem(limited.post("/v1/tasks", json=BODY, headers=auth(keys.carol)), 403)  # an auditor
    assert limited.post("/v1/tasks", json=BODY, headers=auth(keys.alice)).status_code == 202


def test_the_fast_path_and_the_route_limit_alike(engine: Engine, keys: Keys, upstream: Upstream) -> None:
    clock = SettableClock(1000.0)
    with (
        TestClient(limited_app(engine, clock)) as fast,
        TestClient(limited_app(engine, clock, fast=False)) as routed,
    ):
        answers: dict[str, list[tuple[int, str | None]]] = {"fast": [], "route": []}
        problems: dict[str, list[object]] = {}
        for name, client in (("fast", fast), ("route", routed)):
            for priority in ("low", "low", "normal", "normal", "high"):
                response = client.post(
                    "/v1/tasks?mode=async",
                    json={**BODY, "priority": priority},
                    headers=auth(keys.alice, **{"Idempotency-Key": f"{name}-{priority}-{len(answers[name])}"}),
                )
                answers[name].append((response.status_code, response.headers.get("retry-after")))
                if response.status_code == 429:
                    problems.setdefault(name, []).append(response.json())
        assert answers["fast"] == answers["route"] == [(202, None), (429, "2"), (202, None), (429, "4"), (429, "4")]
        assert problems["fast"] == problems["route"]


def test_limits_follow_the_policies_as_they_change(engine: Engine, keys: Keys, upstream: Upstream) -> None:
    def limits(rate: float, burst: int) -> Policy:
        return _policy("limits", {"rateLimits": [{"requestsPerSecond": rate, "burst": burst}]})

    policies = PolicySet([limits(0.001, 1)])
    app = create_app(engine, SETTINGS)
    follow_policies(app.state.gateway, policies, {"echo": Target("Workflow", "echo")})
    with TestClient(app) as client:
        assert client.post("/v1/tasks", json=BODY, headers=auth(keys.alice)).status_code == 202
        assert_problem(client.post("/v1/tasks", json=BODY, headers=auth(keys.alice)), 429, "rate-limited")
        policies.replace([limits(1000, 1000)])  # applies to the next call
        assert client.post("/v1/tasks", json=BODY, headers=auth(keys.alice)).status_code == 202
        policies.replace([])
        assert all(client.post("/v1/tasks", json=BODY, headers=auth(keys.alice)).status_code == 202 for _ in range(3))
