"""Data residency through the real engine: a pinned workflow's steps call models and connectors in its regions,
and never one elsewhere (the step fails with ResidencyDenied, saying why, and the system sees no request)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from api import create_api_key, create_app
from api.fast_submit import SubmitFastPath
from crds.policy import Policy
from engine import Engine, StaticConnectorResolver, StaticModelResolver, Task, WorkerConfig
from engine.errors import PolicyDeniedError
from policies.effective import Target
from policies.residency import DENIED, Residency, pinned_regions, violation
from policies.sources import PolicySet
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually

with warnings.catch_warnings():
    # As in tests/api/conftest: Starlette would rather its test client ran on httpx2; httpx works.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

NO_RETRY = {"maxAttempts": 1}


def _policy(name: str, regions: list[str], labels: dict[str, str] | None = None, namespace: str = "claims") -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": labels or {}}, "residency": {"regions": regions}},
        }
    )


def test_pins_come_from_the_policies_selecting_the_workflow() -> None:
    eu = _policy("eu", ["eu-west", "eu-central"], {"data": "pii"})
    west = _policy("west", ["eu-west", "us-east"])
    elsewhere = _policy("other-namespace", ["ap-south"], namespace="retail")
    assert pinned_regions([eu, west, elsewhere], "claims", {"data": "pii"}) == frozenset({"eu-west"})  # intersection
    assert pinned_regions([eu, elsewhere], "claims", {"data": "public"}) is None
    assert pinned_regions([eu, _policy("us", ["us-east"])], "claims", {"data": "pii"}) == frozenset()


def test_the_refusal_says_why() -> None:
    assert violation(None, "model", "m", "us-east", workflow="w") is None
    assert violation(frozenset({"eu-west"}), "model", "m", "eu-west", workflow="w") is None
    why = violation(frozenset({"eu-west"}), "model", "triage", "us-east", workflow="claims")
    assert why is not None
    assert "'claims' keeps its data in eu-west" in why
    assert "model 'triage' is in 'us-east'" in why
    unknown = violation(frozenset({"eu-west"}), "connector", "crm", None, workflow="claims")
    assert unknown is not None
    assert "declares no region" in unknown
    nowhere = violation(frozenset(), "model", "m", "eu-west", workflow="w")
    assert nowhere is not None
    assert "do not overlap" in nowhere


@pytest.fixture
def engine(tmp_path: Path, downstream: Downstream) -> Iterator[Engine]:
    def http(path: str, region: str | None) -> dict[str, Any]:
        return {
            "type": "http",
            "http": {"url": downstream.url(path), "allowPrivateNetworks": True},
            **({"region": region} if region else {}),
        }

    workflows = {"claims-eu": ("claims", {"data": "pii"}), "open": ("claims", {"data": "public"})}
    residency = Residency.from_manifests(
        [_policy("eu-only", ["eu-west"], {"data": "pii"})],
        workflows,
        {"triage-eu": "eu-west", "triage-us": "us-east", "triage-anywhere": None},
    )
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {
                name: [{"version": "v1", "url": downstream.url(f"/models/{name}"), "weight": 100}]
                for name in ("triage-eu", "triage-us", "triage-anywhere")
            }
        ),
        connector_resolver=StaticConnectorResolver(
            {"crm-eu": http("/crm-eu", "eu-west"), "crm-us": http("/crm-us", "us-east"), "crm-x": http("/crm-x", None)}
        ),
        sqlite_synchronous="NORMAL",
        residency=residency,
    )
    yield engine
    engine.close()


def _register(engine: Engine, name: str, step: dict[str, Any]) -> None:
    engine.register_workflow(name, {"steps": [{"name": "call", "retry": NO_RETRY, **step}]})


def _model(name: str) -> dict[str, Any]:
    return {"type": "model", "model": {"name": name}}


def _connector(name: str) -> dict[str, Any]:
    return {"type": "connector", "connector": {"name": name, "input": {"x": "1"}}}


def _run(engine: Engine, workflow: str) -> Task:
    task = engine.submit("acme", workflow, {"claimId": "c-1"})

    def finished() -> Task:
        current = engine.get("acme", task.id)
        assert current.done, current.state
        return current

    with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
        result: Task = assert_eventually(finished, timeout=30, interval=0.02)
    return result


@pytest.mark.parametrize(
    ("step", "path"),
    [
        (_model("triage-us"), "/models/triage-us/predict"),
        (_model("triage-anywhere"), "/models/triage-anywhere/predict"),
        (_connector("crm-us"), "/crm-us"),
        (_connector("crm-x"), "/crm-x"),
    ],
)
def test_a_pinned_task_never_calls_out_of_its_region(
    engine: Engine, downstream: Downstream, step: dict[str, Any], path: str
) -> None:
    _register(engine, "claims-eu", step)
    # The check at call time, for tasks that were submitted before the pin came (intake refuses them otherwise).
    engine.intake.admission = None
    task = _run(engine, "claims-eu")
    assert task.state in {"failed", "dead_lettered"}, task.state
    assert task.error is not None
    assert task.error["kind"] == DENIED, task.error
    assert "keeps its data in eu-west" in task.error["message"]
    assert downstream.count(path) == 0


@pytest.mark.parametrize(
    ("workflow", "step", "path"),
    [
        ("claims-eu", _model("triage-eu"), "/models/triage-eu/predict"),
        ("claims-eu", _connector("crm-eu"), "/crm-eu"),
        ("open", _model("triage-us"), "/models/triage-us/predict"),  # not pinned: anything goes
        ("open", _connector("crm-x"), "/crm-x"),
    ],
)
def test_calls_within_the_region_or_unpinned_go_ahead(
    engine: Engine, downstream: Downstream, workflow: str, step: dict[str, Any], path: str
) -> None:
    _register(engine, workflow, step)
    task = _run(engine, workflow)
    assert task.state == "succeeded", task.error
    assert downstream.count(path) == 1


def test_the_gateway_refuses_such_a_submission_with_a_problem(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow("claims-eu", {"steps": [{"name": "call", **_model("triage-us")}]})
    engine.register_workflow("open", {"steps": [{"name": "call", **_model("triage-us")}]})
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    body = {"workflow": {"name": "claims-eu"}, "input": {"claimId": "c-1"}}
    answers = []
    for app in (create_app(engine), _routed(engine)):  # the submission fast path and the FastAPI route
        with TestClient(app) as client:
            response = client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 403, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["type"] == "https://aiplane.io/problems/residency-denied"
            assert "step 'call': workflow 'claims-eu' keeps its data in eu-west" in problem["detail"]
            assert problem["allowedRegions"] == "eu-west"
            answers.append(problem)
            unpinned = {**body, "workflow": {"name": "open"}}
            assert (
                client.post("/v1/tasks", json=unpinned, headers={"Authorization": f"Bearer {key}"}).status_code == 202
            )
    assert answers[0] == answers[1]
    assert [t.workflow for t in engine.list("acme").items] == ["open", "open"]  # the refused ones were not written


def test_intake_refuses_a_submission_in_code_as_the_gateway_does(engine: Engine, downstream: Downstream) -> None:
    _register(engine, "claims-eu", _model("triage-us"))
    with pytest.raises(PolicyDeniedError) as refused:
        engine.submit("acme", "claims-eu", {"claimId": "c-1"})
    assert refused.value.type == "residency-denied"
    assert refused.value.http_status == 403
    assert "step 'call': workflow 'claims-eu' keeps its data in eu-west" in refused.value.detail
    assert engine.list("acme").items == []


def _routed(engine: Engine) -> Any:
    app = create_app(engine)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not SubmitFastPath]  # type: ignore[comparison-overlap]
    return app


def test_pins_follow_a_policy_set_as_it_changes() -> None:
    policies = PolicySet([_policy("eu-only", ["eu-west"], {"data": "pii"})])
    residency = Residency.from_policy_set(
        policies,
        {"claims-eu": Target("Workflow", "claims-eu", "claims", {"data": "pii"})},
        {"triage-us": "us-east"},
    )
    assert residency.check("acme", "claims-eu", "model", "triage-us") is not None
    assert residency.check("acme", "unknown-workflow", "model", "triage-us") is None
    policies.replace([_policy("us-too", ["eu-west", "us-east"], {"data": "pii"})])
    assert residency.check("acme", "claims-eu", "model", "triage-us") is None
