"""A regional install (the chart's ``region``, ``AIPLANE_REGION``) keeps its tasks' data in its region, through the
real gateway and engine: its store is the region's, so a workflow pinned elsewhere is refused at intake (problem
403 residency-denied, nothing stored), and no task calls a model or connector that declares another region."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aiplane.incluster import region_of_install
from api import create_api_key, create_app
from api.routers.models import PredictFastPath
from crds.policy import Policy
from engine import Engine, StaticConnectorResolver, StaticModelResolver, Task, WorkerConfig
from policies.residency import DENIED, Residency
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

HOME = "eu-west"
MODELS = {"triage-eu": "eu-west", "triage-us": "us-east", "triage-anywhere": None}


def _policy(name: str, regions: list[str], labels: dict[str, str]) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "claims"},
            "spec": {"selector": {"matchLabels": labels}, "residency": {"regions": regions}},
        }
    )


@pytest.fixture
def engine(tmp_path: Path, downstream: Downstream) -> Iterator[Engine]:
    workflows = {
        "claims-us": ("claims", {"data": "us"}),  # pinned to another region
        "claims-atlantic": ("claims", {"data": "atlantic"}),  # pinned to this one and another
        "open": ("claims", {"data": "public"}),  # not pinned
    }
    policies = [
        _policy("us-only", ["us-east"], {"data": "us"}),
        _policy("atl", ["eu-west", "us-east"], {"data": "atlantic"}),
    ]
    connector = {"type": "http", "http": {"url": downstream.url("/crm-us"), "allowPrivateNetworks": True}}
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {name: [{"version": "v1", "url": downstream.url(f"/models/{name}"), "weight": 100}] for name in MODELS}
        ),
        connector_resolver=StaticConnectorResolver({"crm-us": {**connector, "region": "us-east"}}),
        sqlite_synchronous="NORMAL",
        residency=Residency.from_manifests(policies, workflows, MODELS, home=HOME),
    )
    yield engine
    engine.close()


def _workflow(engine: Engine, name: str, step: dict[str, Any]) -> None:
    engine.register_workflow(name, {"steps": [{"name": "call", "retry": {"maxAttempts": 1}, **step}]})


def _model(name: str) -> dict[str, Any]:
    return {"type": "model", "model": {"name": name}}


def _submit(engine: Engine, workflow: str) -> Any:
    key = create_api_key(engine, "acme", f"alice-{workflow}", ["submitter"])
    with TestClient(create_app(engine)) as client:
        body = {"workflow": {"name": workflow}, "input": {"claimId": "c-1"}}
        return client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {key}"})


def _run(engine: Engine, task_id: str) -> Task:
    def finished() -> Task:
        current = engine.get("acme", task_id)
        assert current.done, current.state
        return current

    with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
        result: Task = assert_eventually(finished, timeout=30, interval=0.02)
    return result


def test_a_workflow_pinned_to_another_region_is_refused_before_its_input_is_stored(engine: Engine) -> None:
    # Rules only: no call leaves the install, yet storing the input here would already move the data.
    engine.register_workflow("claims-us", {"steps": [{"name": "set", "type": "rules", "rules": {"set": {"a": "1"}}}]})
    response = _submit(engine, "claims-us")
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "https://aiplane.io/problems/residency-denied"
    assert "workflow 'claims-us' keeps its data in us-east; this aiplane serves region 'eu-west'" in problem["detail"]
    assert (problem["allowedRegions"], problem["region"]) == ("us-east", HOME)
    assert engine.list("acme").items == []


@pytest.mark.parametrize("workflow", ["open", "claims-atlantic"])
def test_no_task_calls_a_model_of_another_region(engine: Engine, downstream: Downstream, workflow: str) -> None:
    _workflow(engine, workflow, _model("triage-us"))
    response = _submit(engine, workflow)
    assert response.status_code == 403, response.text
    assert "model 'triage-us' is in 'us-east'" in response.json()["detail"]
    assert engine.list("acme").items == []
    # At call time too, for a task taken before the model moved (intake refuses such a plan otherwise).
    engine.intake.admission = None
    task = _run(engine, _submit(engine, workflow).json()["id"])
    assert task.state in {"failed", "dead_lettered"}, task.state
    assert task.error is not None
    assert task.error["kind"] == DENIED
    assert "this aiplane serves region 'eu-west'" in task.error["message"]
    assert downstream.count("/models/triage-us/predict") == 0


def test_a_connector_of_another_region_is_not_called(engine: Engine, downstream: Downstream) -> None:
    _workflow(engine, "open", {"type": "connector", "connector": {"name": "crm-us", "input": {"x": "1"}}})
    engine.intake.admission = None
    task = _run(engine, _submit(engine, "open").json()["id"])
    assert task.error is not None
    assert "connector 'crm-us' is in 'us-east'" in task.error["message"]
    assert downstream.count("/crm-us") == 0


@pytest.mark.parametrize(
    ("workflow", "model"), [("open", "triage-eu"), ("open", "triage-anywhere"), ("claims-atlantic", "triage-eu")]
)
def test_calls_in_the_region_go_ahead(engine: Engine, downstream: Downstream, workflow: str, model: str) -> None:
    _workflow(engine, workflow, _model(model))
    response = _submit(engine, workflow)
    assert response.status_code == 202, response.text
    task = _run(engine, response.json()["id"])
    assert task.state == "succeeded", task.error
    assert downstream.count(f"/models/{model}/predict") == 1


def test_the_gateway_does_not_pass_a_prediction_to_a_model_of_another_region(
    engine: Engine, downstream: Downstream
) -> None:
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    routed = create_app(engine)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not PredictFastPath]  # type: ignore[comparison-overlap]
    for app in (create_app(engine), routed):  # the predict fast path and the FastAPI route
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {key}"}
            refused = client.post("/v1/models/triage-us/predict", json={"claimId": "c-1"}, headers=headers)
            assert refused.status_code == 403, refused.text
            problem = refused.json()
            assert problem["type"] == "https://aiplane.io/problems/residency-denied"
            assert "model 'triage-us' is in 'us-east'" in problem["detail"]
            assert (problem["model"], problem["region"]) == ("triage-us", HOME)
            for model in ("triage-eu", "triage-anywhere"):
                answer = client.post(f"/v1/models/{model}/predict", json={"claimId": "c-1"}, headers=headers)
                assert answer.status_code == 200, answer.text
    assert downstream.count("/models/triage-us/predict") == 0
    assert downstream.count("/models/triage-eu/predict") == 2


def test_a_pod_of_a_regional_release_takes_its_region_from_the_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart sets AIPLANE_REGION from `region`; the in-cluster sources make it the Residency's home."""
    monkeypatch.setenv("AIPLANE_REGION", "eu-west-1")
    assert region_of_install() == "eu-west-1"
    monkeypatch.setenv("AIPLANE_REGION", "")  # region: "" (the default): not a regional install
    assert region_of_install() is None
