"""429s are on the audit log, coalesced: through the real gateway app, a flood past a rate limit or a quota writes
one policy/deny record per tenant and bucket per second, each counting the refusals it stands for, with the
Policy versions behind the limit; admitted requests write none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import create_api_key, create_app
from api.auth import follow_policies
from crds.policy import Policy
from engine import Engine, StaticModelResolver
from policies.coalesce import Coalescer
from policies.quota import Quotas
from policies.sources import PolicySet
from tests.api.conftest import SETTINGS, Upstream, assert_problem, auth, workflows
from tests.fixtures.clocks import SettableClock


def _policy(name: str, spec: dict[str, Any]) -> Policy:
    return Policy.model_validate({"metadata": {"name": name, "namespace": "claims", "generation": 1}, "spec": spec})


POLICIES = [
    # Nearly no refill: the burst is all a tenant gets in a test.
    _policy("slow", {"rateLimits": [{"requestsPerSecond": 0.001, "burst": 2}]}),
    _policy("small", {"quota": {"maxTasksInFlight": 1}, "access": {"tenants": ["globex"]}}),
    _policy("unrelated", {"rateLimits": [{"priority": "low", "requestsPerSecond": 5, "burst": 5}]}),
]


@pytest.fixture
def engine(tmp_path: Path, upstream: Upstream) -> Iterator[Engine]:
    policies = PolicySet(POLICIES)
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        model_resolver=StaticModelResolver(
            {"echo": [{"version": "v1", "url": upstream.url("/models/echo"), "weight": 100}]}
        ),
        quota=Quotas(policies).max_in_flight,
        sqlite_synchronous="NORMAL",
    )
    engine.register_workflow("echo", workflows()["echo"])
    yield engine
    engine.close()


@pytest.fixture
def gateway(engine: Engine) -> Iterator[tuple[TestClient, SettableClock[float]]]:
    app = create_app(engine, SETTINGS)
    follow_policies(app.state.gateway, PolicySet(POLICIES), {})
    clock = SettableClock(100.0)
    app.state.gateway.refusals = Coalescer(clock=clock)
    with TestClient(app) as client:
        yield client, clock


def _denials(engine: Engine) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(r.subject, r.tenant, json.loads(r.details)) for r in engine.audit.records() if r.decision == "deny"]


def test_a_rate_limit_flood_is_audited_once_a_second_with_its_count(
    engine: Engine, gateway: tuple[TestClient, SettableClock[float]]
) -> None:
    client, clock = gateway
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    # The burst passes (a prediction and a submission count alike) and leaves no record.
    assert client.post("/v1/models/echo/predict", json={}, headers=auth(key)).status_code == 200
    body = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}
    assert client.post("/v1/tasks", json=body, headers=auth(key)).status_code == 202
    assert _denials(engine) == []
    # A flood within one second: the first refusal is recorded, the next four only counted.
    for _ in range(5):
        assert_problem(client.post("/v1/models/echo/predict", json={}, headers=auth(key)), 429, "rate-limited")
    [(subject, tenant, details)] = _denials(engine)
    assert (subject, tenant) == ("tenant/acme/rate-limited/*", "acme")
    assert details["count"] == 1
    assert (details["reason"], details["bucket"], details["limit"], details["burst"]) == ("rate-limited", "*", 0.001, 2)
    assert details["policies"] == ["claims/slow@1"]  # not the limit of another priority class
    assert "over its rate limit" in details["detail"]
    # A second later the next refusal writes a record that stands for the four coalesced ones too.
    clock.now += 1.0
    assert_problem(client.post("/v1/tasks", json=body, headers=auth(key)), 429, "rate-limited")
    assert [d["count"] for _, _, d in _denials(engine)] == [1, 5]
    assert engine.audit.verify().ok


def test_a_quota_refusal_is_audited_coalesced(engine: Engine, gateway: tuple[TestClient, SettableClock[float]]) -> None:
    client, _ = gateway
    key = create_api_key(engine, "globex", "gina", ["submitter"])
    body = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}
    assert client.post("/v1/tasks", json=body, headers=auth(key)).status_code == 202  # no worker: stays in flight
    refused = client.post("/v1/tasks", json=body, headers=auth(key))  # the fast path
    assert_problem(refused, 429, "quota-exceeded")
    [(subject, tenant, details)] = _denials(engine)
    assert (subject, tenant) == ("tenant/globex/quota-exceeded/tasks-in-flight", "globex")
    assert (details["count"], details["limit"]) == (1, 1)
    assert details["policies"] == ["claims/small@1"]
    assert "maxTasksInFlight 1" in details["detail"]


def test_a_gateway_that_stops_records_the_refusals_it_coalesced(engine: Engine) -> None:
    app = create_app(engine, SETTINGS)
    follow_policies(app.state.gateway, PolicySet(POLICIES), {})
    app.state.gateway.refusals = Coalescer(
        clock=SettableClock(100.0)
    )  # the clock never moves: one record, then coalesced
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    with TestClient(app) as client:
        answers = [client.post("/v1/models/echo/predict", json={}, headers=auth(key)).status_code for _ in range(6)]
        assert answers == [200, 200, 429, 429, 429, 429]
        assert [d["count"] for _, _, d in _denials(engine)] == [1]
    # The app's shutdown wrote the three refusals no record stood for yet, with the last one's facts.
    [first, last] = _denials(engine)
    assert (last[0], last[2]["count"], last[2]["burst"]) == ("tenant/acme/rate-limited/*", 3, 2)
    assert last[2]["policies"] == first[2]["policies"] == ["claims/slow@1"]
    assert "over its rate limit" in last[2]["detail"]
    assert engine.audit.verify().ok
