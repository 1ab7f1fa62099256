"""A Policy denial at intake names, on its audit record, the Policy versions that decided it (namespace, name and
generation, as masking records and lineage name them); the caller's problem document does not."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import create_api_key, create_app
from crds.policy import Policy
from engine import Engine, StaticModelResolver, TaskState
from engine.errors import PolicyDeniedError
from policies.effective import Target, applicable
from policies.residency import Residency
from policies.sources import PolicySet
from tests.engine.conftest import fast_worker, wait_done

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient


NO_RETRY = {"maxAttempts": 1}


def _policy(name: str, generation: int, spec: dict[str, Any]) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "claims", "generation": generation, "resourceVersion": "41"},
            "spec": spec,
        }
    )


POLICIES = PolicySet(
    [
        _policy("partners", 3, {"access": {"tenants": ["acme", "globex"]}}),  # allows acme
        _policy("globex-only", 7, {"access": {"tenants": ["globex"]}, "selector": {"matchLabels": {"t": "g"}}}),
        _policy("eu", 2, {"residency": {"regions": ["eu-west"]}, "selector": {"matchLabels": {"data": "pii"}}}),
        _policy("masking", 5, {"pii": {}}),  # governs every workflow, decides no denial
    ]
)
TARGETS = {
    "globex-flow": Target("Workflow", "globex-flow", "claims", {"t": "g"}),
    "eu-flow": Target("Workflow", "eu-flow", "claims", {"data": "pii"}),
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    def tenants(workflow: str) -> frozenset[str] | None:
        return POLICIES.effective(TARGETS[workflow]).tenants

    def governing(workflow: str) -> list[Policy]:
        return applicable(POLICIES.policies(), TARGETS[workflow])

    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver({"triage-us": [{"version": "v1", "url": "http://x.invalid", "weight": 1}]}),
        sqlite_synchronous="NORMAL",
        tenants=tenants,
        residency=Residency.from_policy_set(POLICIES, TARGETS, {"triage-us": "us-east"}),
        governing=governing,
    )
    for name in TARGETS:
        engine.register_workflow(name, {"steps": [{"name": "call", "type": "model", "model": {"name": "triage-us"}}]})
    yield engine
    engine.close()


def _denials(engine: Engine) -> list[dict[str, Any]]:
    return [json.loads(r.details) for r in engine.audit.records() if r.decision == "deny"]


def test_a_tenant_denial_names_the_policy_that_left_the_tenant_out(engine: Engine) -> None:
    with pytest.raises(PolicyDeniedError) as refused:
        engine.submit("acme", "globex-flow", {"claimId": "c-1"})
    assert refused.value.type == "tenant-denied"
    [denial] = _denials(engine)
    # Not "partners" (it names acme) nor "masking" (no access part): the one Policy whose deny won.
    assert denial["policies"] == ["claims/globex-only@7"]
    assert denial["reason"] == "tenant-denied"
    assert engine.audit.verify().ok


def test_a_residency_denial_names_the_residency_policies(engine: Engine) -> None:
    with pytest.raises(PolicyDeniedError) as refused:
        engine.submit("acme", "eu-flow", {"claimId": "c-1"})
    assert refused.value.type == "residency-denied"
    [denial] = _denials(engine)
    assert denial["policies"] == ["claims/eu@2"]


def test_the_gateway_audits_the_versions_but_does_not_tell_the_caller(engine: Engine) -> None:
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    with TestClient(create_app(engine)) as client:
        response = client.post(
            "/v1/tasks",
            json={"workflow": {"name": "globex-flow"}, "input": {}},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 403, response.text
    assert "globex-only" not in response.text
    [denial] = _denials(engine)
    assert (denial["policies"], denial["by"]) == (["claims/globex-only@7"], "alice")


def test_without_a_policy_source_a_denial_names_none(tmp_path: Path) -> None:
    engine = Engine(f"sqlite:///{tmp_path / 'e.db'}", tenants=lambda workflow: frozenset({"globex"}))
    try:
        engine.register_workflow("w", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]})
        with pytest.raises(PolicyDeniedError):
            engine.submit("acme", "w", {})
        assert _denials(engine)[0]["policies"] == []
    finally:
        engine.close()


def test_a_call_refused_for_residency_at_run_time_is_audited_with_its_policies(tmp_path: Path) -> None:
    # The workflow is not pinned when the task is accepted; a residency Policy applied before a worker runs it
    # refuses the model call (the engine checks again before every call), and that refusal is a decision too.
    policies = PolicySet([_policy("masking", 5, {"pii": {}})])
    targets = {"flow": Target("Workflow", "flow", "claims", {"data": "pii"})}
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver({"triage-us": [{"version": "v1", "url": "http://x.invalid", "weight": 1}]}),
        sqlite_synchronous="NORMAL",
        residency=Residency.from_policy_set(policies, targets, {"triage-us": "us-east"}),
        governing=lambda workflow: applicable(policies.policies(), targets[workflow]),
    )
    try:
        engine.register_workflow(
            "flow", {"steps": [{"name": "call", "type": "model", "model": {"name": "triage-us"}, "retry": NO_RETRY}]}
        )
        task = engine.submit("acme", "flow", {"claimId": "c-1"})
        policies.replace([*policies.policies(), _policy("eu", 2, {"residency": {"regions": ["eu-west"]}})])
        with fast_worker(engine):
            done = wait_done(engine, "acme", task.id)
        assert done.state == TaskState.DEAD_LETTERED
        [denial] = [r for r in engine.audit.records() if r.decision == "deny"]
        details = json.loads(denial.details)
        assert (denial.kind, denial.subject, denial.tenant, denial.actor) == (
            "policy",
            f"task/{task.id}",
            "acme",
            "engine",
        )
        assert (details["reason"], details["step"], details["policies"]) == (
            "residency-denied",
            "call",
            ["claims/eu@2"],
        )
        assert "keeps its data in eu-west" in details["detail"]
        assert engine.audit.verify().ok
    finally:
        engine.close()
