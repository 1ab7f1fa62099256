"""The explainability hook against the real claims service: the example's claims-triage Workflow runs in the engine,
its model step calls the claims extractor under ``bentoml serve``, and the task's decision record (the engine's
lineage and ``GET /v1/tasks/{id}/lineage``) holds the scores and the explanation the service answered, as
docs/models.md's service contract says."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from claims_model import CLAIM_TYPES
from claims_model.train import default_model_dir

from aiplane import manifests
from api import create_api_key, create_app
from crds import Connector, Model, Workflow
from engine import Engine, InMemorySink, StaticConnectorResolver, StaticModelResolver, TaskState, WorkerConfig
from tests.examples.test_claims_model import serve_claims_model

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"
# Small and confidently an auto claim: the workflow approves it by rule and publishes it, no person involved.
DOCUMENT = (
    "Subject: Car accident claim\n\nHello,\nI was rear-ended at a red light on March 5, 2024 and the bumper "
    "of my car is crushed. My deductible is $500. I am claiming $1,250.00 in total. Policy no. PL 1234 5678."
)


@pytest.fixture(scope="module")
def claims_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The versioned weights cache `aiplane dev` uses (trained at start-up when missing).
    with serve_claims_model(default_model_dir(), tmp_path_factory.mktemp("serve")) as base:
        yield base


@pytest.mark.integration
def test_the_decision_record_holds_the_claims_model_scores_and_explanation(claims_service: str, tmp_path: Path) -> None:
    resources = manifests.load([EXAMPLES])
    [workflow] = [r for r in resources if isinstance(r, Workflow) and r.metadata["name"] == "claims-triage"]
    [model] = [r for r in resources if isinstance(r, Model) and r.metadata["name"] == "claims-extractor"]
    connectors = {c.metadata["name"]: c.spec for c in resources if isinstance(c, Connector)}
    version = model.spec.version
    sink = InMemorySink()
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        sqlite_synchronous="NORMAL",
        model_resolver=StaticModelResolver(
            {"claims-extractor": [{"version": version, "url": claims_service, "weight": 100}]}
        ),
        connector_resolver=StaticConnectorResolver(connectors),
        sink=sink,
    ) as engine:
        engine.register_workflow("claims-triage", workflow.spec)
        with engine.worker(WorkerConfig(poll_interval=0.02)):
            task = engine.submit("acme", "claims-triage", {"claimId": "CLM-3001", "document": DOCUMENT})
            done = engine.wait("acme", task.id, 60, poll_interval=0.05)
        assert done.state == TaskState.SUCCEEDED, done.error
        [extract] = [s for s in engine.steps("acme", task.id) if s.name == "extract"]
        answer = extract.output
        assert isinstance(answer, dict)

        lineage = engine.lineage("acme", task.id)
        key = create_api_key(engine, "acme", "auditor", ["auditor"])
        with TestClient(create_app(engine)) as client:
            response = client.get(f"/v1/tasks/{task.id}/lineage", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text

    steps = {step["name"]: step for step in lineage["steps"]}
    assert [step["name"] for step in lineage["steps"]] == ["extract", "decide", "publish"]
    decision = steps["extract"]["decision"]
    assert (decision["model"], decision["version"], decision["endpoint"]) == (
        "claims-extractor",
        version,
        f"{claims_service}/extract",
    )
    # The scores: every claim type's probability, summing to one, the predicted type the likeliest.
    scores = decision["scores"]
    assert set(scores) == set(CLAIM_TYPES)
    assert math.isclose(sum(scores.values()), 1.0, abs_tol=1e-4)
    assert max(scores, key=scores.__getitem__) == answer["claim_type"] == "auto"
    assert scores["auto"] == answer["confidence"]
    # The explanation: the words that pushed towards it, strongest first, as the service answered them.
    explanation = decision["explanation"]
    assert explanation == answer["explanation"]
    assert 1 <= len(explanation) <= 5
    assert all(set(item) == {"token", "weight"} and item["weight"] > 0 for item in explanation)
    weights = [item["weight"] for item in explanation]
    assert weights == sorted(weights, reverse=True)
    # Only those two keys of the answer: the rest of the output is the step's, not the decision record's.
    assert set(decision) == {"model", "version", "endpoint", "scores", "explanation"}
    # The rule that fired and the publication.
    assert steps["decide"]["decision"]["next"] == "publish"
    assert steps["decide"]["decision"]["vars"]["autoApprove"] is True
    assert steps["publish"]["decision"] == {"connector": "claims-decisions"}
    [record] = sink.records("claims-out")
    assert record.key == "CLM-3001"

    # The gateway's route shows the same decision record.
    served = response.json()
    assert served["steps"][0]["decision"] == decision
