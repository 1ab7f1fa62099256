"""Both planners under a real ``bentoml serve``: ``/plan`` over HTTP with the camelCase contract, problem+json for
configs it cannot use, BentoML's 400 for a body that is not a PlanRequest, and ``/readyz``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiplane.modelserver import ModelServer
from crds.planner import PlanRequest
from tests.planners.requests import request

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = {
    "rules": [
        {
            "when": "!('request-document' in succeeded)",
            "action": "request-document",
            "arguments": {"claimId": "state.claimId", "documentType": "state.missingDocuments[0]"},
            "confidence": 0.9,
        }
    ]
}


def _serve(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(name)
    server = ModelServer(
        name=name,
        bento=f"planners.service:{name}",
        working_dir=REPO_ROOT,
        log_path=workdir / "bentoml-serve.log",
        env={"BENTOML_HOME": str(workdir / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"},
    )
    server.start(ready_timeout=120)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scripted_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve("ScriptedPlanner", tmp_path_factory)


@pytest.fixture(scope="module")
def retrieval_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve("RetrievalPlanner", tmp_path_factory)


def _post(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/plan", json=body, timeout=30.0, headers={"Idempotency-Key": "task-1/agent/1"})


def _body(plan_request: PlanRequest) -> dict[str, Any]:
    return plan_request.model_dump(mode="json", by_alias=True)


@pytest.mark.integration
def test_scripted_planner_over_http(scripted_url: str) -> None:
    assert httpx.get(f"{scripted_url}/readyz", timeout=5.0).status_code == 200
    response = _post(scripted_url, _body(request(config=RULES)))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "action": "request-document",
        "arguments": {"claimId": "C-1", "documentType": "police_report"},
        "done": False,
        "result": None,
        "escalate": False,
        "confidence": 0.9,
        "reasoning": "rule 0 matched: !('request-document' in succeeded)",
    }

    bad = _post(scripted_url, _body(request(config={"rules": [{"when": "state.(", "done": True}]})))
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/problem+json")
    problem = bad.json()
    assert problem["type"] == "https://aiplane.io/problems/invalid-planner-config"
    assert problem["errors"][0]["field"] == "config.rules[0].when"

    failing = _post(scripted_url, _body(request(config={"rules": [{"when": "state.nope", "done": True}]})))
    assert failing.status_code == 422
    assert failing.json()["errors"] == [{"field": "config.rules[0].when", "message": "no such key or variable 'nope'"}]

    not_a_request = _post(scripted_url, {"goal": "x"})
    assert not_a_request.status_code == 400
    assert "actions" in not_a_request.text
    assert "budget" in not_a_request.text


@pytest.mark.integration
def test_retrieval_planner_over_http(retrieval_url: str) -> None:
    assert httpx.get(f"{retrieval_url}/readyz", timeout=5.0).status_code == 200
    response = _post(retrieval_url, _body(request()))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["action"], answer["arguments"]) == ("request-document", {"claimId": "C-1"})
    assert answer["confidence"] >= 0.5
    assert set(answer) == {"action", "arguments", "done", "result", "escalate", "confidence", "reasoning"}

    bad = _post(retrieval_url, _body(request(config={"minSimilarity": 2})))
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "config.minSimilarity"
