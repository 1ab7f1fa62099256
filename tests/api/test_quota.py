"""Quotas of tasks in flight per tenant (policies.quota): counted at intake in the submission's transaction, so two
gateways on one PostgreSQL hold one quota between them; past it, 429 quota-exceeded with Retry-After."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import create_api_key, create_app
from api.auth import follow_policies
from crds.policy import Policy
from engine import Engine, Submission
from engine.errors import QuotaExceededError
from policies.quota import Quotas, quotas_from_policies
from policies.sources import PolicySet
from tests.api.conftest import SETTINGS, assert_problem, auth, workflows


def _quota(name: str, limit: int, tenants: list[str] | None = None, priority: str | None = None) -> Policy:
    spec: dict[str, object] = {"quota": {"maxTasksInFlight": limit, **({"priority": priority} if priority else {})}}
    if tenants:
        spec["access"] = {"tenants": tenants}
    return Policy.model_validate({"metadata": {"name": name, "namespace": "claims", "generation": 1}, "spec": spec})


def test_the_smallest_quota_that_applies_wins() -> None:
    everyone, named = quotas_from_policies(
        [_quota("all", 100), _quota("acme", 5, ["acme"]), _quota("acme-too", 7, ["acme", "globex"])]
    )
    assert (everyone, named) == (100, {"acme": 5, "globex": 7})
    quotas = Quotas([_quota("all", 3), _quota("big", 50, ["initech"])])
    assert (quotas.max_in_flight("acme"), quotas.max_in_flight("initech")) == (3, 3)  # bound by everyone's too
    assert Quotas([]).max_in_flight("acme") is None


def test_a_submission_past_the_quota_is_refused_in_code_too(tmp_path: Path) -> None:
    policies = PolicySet([_quota("small", 2)])
    with Engine(f"sqlite:///{tmp_path / 'e.db'}", quota=Quotas(policies).max_in_flight) as engine:
        engine.register_workflow("echo", workflows()["echo"])
        first = engine.submit("acme", "echo", {"claimId": "c-1"})
        engine.submit("acme", "echo", {"claimId": "c-2"})
        with pytest.raises(QuotaExceededError) as refused:
            engine.submit("acme", "echo", {"claimId": "c-3"})
        assert refused.value.http_status == 429
        assert "maxTasksInFlight 2" in refused.value.detail
        engine.cancel("acme", first.id, reason="done with it")  # a finished task frees its place
        engine.submit("acme", "echo", {"claimId": "c-3"})
        policies.replace([])  # no quota any more: the next call sees it
        engine.submit("acme", "echo", {"claimId": "c-4"})


def test_a_priority_class_has_a_quota_of_its_own() -> None:
    policies = [_quota("all", 10), _quota("low", 2, priority="low"), _quota("acme-low", 1, ["acme"], priority="low")]
    assert quotas_from_policies(policies) == (10, {})  # the quotas of all classes only
    assert quotas_from_policies(policies, "low") == (2, {"acme": 1})
    quotas = Quotas(policies)
    assert [quotas.max_in_flight("globex", p) for p in (None, "low", "high")] == [10, 2, None]
    assert quotas.max_in_flight("acme", "low") == 1


def test_a_submission_fits_the_quota_of_its_class_and_that_of_all(tmp_path: Path) -> None:
    """Low-priority work stops at its class's quota while high-priority submissions still get in, up to the
    tenant's quota of all classes; through the gateway the 429 names the class."""
    policies = PolicySet([_quota("all", 4), _quota("batch", 2, priority="low")])
    with Engine(f"sqlite:///{tmp_path / 'e.db'}", quota=Quotas(policies).max_in_flight) as engine:
        engine.register_workflow("echo", workflows()["echo"])
        # In one batch too: the intake counts the batch's own submissions per class.
        outcomes = engine.submit_many(
            [Submission(tenant="acme", workflow="echo", input={"n": n}, priority="low") for n in range(3)]
        )
        assert [type(o).__name__ for o in outcomes] == ["Accepted", "Accepted", "QuotaExceededError"]
        refused = outcomes[2]
        assert isinstance(refused, QuotaExceededError)
        assert "2 unfinished low-priority tasks" in refused.detail
        assert "maxTasksInFlight 2 for priority low" in refused.detail
        assert refused.fields["priority"] == "low"
        engine.submit("acme", "echo", {"n": 3}, priority="high")
        engine.submit("globex", "echo", {"n": 0}, priority="low")  # another tenant's class quota is its own
        key = create_api_key(engine, "acme", "alice", ["submitter"])
        app = create_app(engine, SETTINGS)
        follow_policies(app.state.gateway, policies, {})  # names the Policies of a 429 on the audit log
        with TestClient(app) as client:
            body = {"workflow": {"name": "echo"}, "input": {"claimId": "c-4"}, "priority": "low"}
            problem = assert_problem(client.post("/v1/tasks", json=body, headers=auth(key)), 429, "quota-exceeded")
            assert (problem["priority"], problem["limit"]) == ("low", 2)
            assert client.post("/v1/tasks", json={**body, "priority": "normal"}, headers=auth(key)).status_code == 202
            # Four in flight now: the quota of all classes refuses even a high-priority one.
            problem = assert_problem(
                client.post("/v1/tasks", json={**body, "priority": "high"}, headers=auth(key)), 429, "quota-exceeded"
            )
            assert problem["limit"] == 4
            assert "priority" not in problem
        # Each refusal on the audit log under its class's bucket, naming only the Policies of that class's quota.
        denials = [
            (r.subject, json.loads(r.details)["policies"]) for r in engine.audit.records() if r.decision == "deny"
        ]
        assert denials == [
            ("tenant/acme/quota-exceeded/tasks-in-flight/low", ["claims/batch@1"]),
            ("tenant/acme/quota-exceeded/tasks-in-flight", ["claims/all@1"]),
        ]


@pytest.fixture
def gateways(pg_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, Engine, dict[str, str]]]:
    policies = PolicySet([_quota("in-flight", 3)])
    engines = [Engine(pg_url, data_dir=tmp_path / f"data-{n}", quota=Quotas(policies).max_in_flight) for n in (1, 2)]
    for name, spec in workflows().items():
        engines[0].register_workflow(name, spec)
    keys = {tenant: create_api_key(engines[0], tenant, "alice", ["submitter"]) for tenant in ("acme", "globex")}
    try:
        with (
            TestClient(create_app(engines[0], SETTINGS)) as one,
            TestClient(create_app(engines[1], SETTINGS)) as two,
        ):
            yield one, two, engines[0], keys
    finally:
        for engine in engines:
            engine.close()


def test_two_gateways_hold_one_quota(gateways: tuple[TestClient, TestClient, Engine, dict[str, str]]) -> None:
    one, two, engine, keys = gateways
    body = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}
    # No worker runs: every accepted task stays queued, in flight. Submissions alternate between the gateways,
    # on the fast path (async) and the route (sync).
    answers = [
        client.post(f"/v1/tasks?mode={mode}&wait=0", json=body, headers=auth(keys["acme"]))
        for mode in ("async", "sync")
        for client in (one, two)
    ]
    assert [a.status_code for a in answers].count(429) == 1
    refused = next(a for a in answers if a.status_code == 429)
    problem = assert_problem(refused, 429, "quota-exceeded")
    assert refused.headers["retry-after"] == "5"
    assert problem["tenant"] == "acme"
    assert problem["limit"] == 3
    assert "maxTasksInFlight 3" in problem["detail"]
    assert_problem(one.post("/v1/tasks", json=body, headers=auth(keys["acme"])), 429, "quota-exceeded")
    # Another tenant has a quota of its own.
    assert two.post("/v1/tasks", json=body, headers=auth(keys["globex"])).status_code == 202
    # A task that ends frees its place, whichever gateway then takes the next one.
    queued = engine.list("acme").items
    assert len(queued) == 3
    engine.cancel("acme", queued[0].id, reason="withdrawn")
    assert two.post("/v1/tasks", json=body, headers=auth(keys["acme"])).status_code == 202
    assert_problem(one.post("/v1/tasks", json=body, headers=auth(keys["acme"])), 429, "quota-exceeded")


def test_concurrent_submissions_through_two_engines_never_pass_the_quota(pg_url: str, tmp_path: Path) -> None:
    quotas = Quotas([_quota("in-flight", 3)])
    engines = [Engine(pg_url, data_dir=tmp_path / f"d-{n}", quota=quotas.max_in_flight) for n in (1, 2)]
    try:
        engines[0].register_workflow("echo", workflows()["echo"])

        def submit(n: int) -> bool:
            try:
                engines[n % 2].submit("initech", "echo", {"claimId": f"c-{n}"})
            except QuotaExceededError:
                return False
            return True

        with ThreadPoolExecutor(max_workers=8) as pool:
            accepted = list(pool.map(submit, range(16)))
        assert accepted.count(True) == 3  # the advisory lock makes the replicas take turns counting
        assert len(engines[1].list("initech").items) == 3
    finally:
        for engine in engines:
            engine.close()
