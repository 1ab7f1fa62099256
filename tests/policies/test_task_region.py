"""A task's own region, through the real gateway and engine with a real HTTP server that counts calls: it narrows
its workflow's residency pin and never widens it (a region outside the pin is a 422 naming the allowed regions), a
task pinned to a region never calls a model or connector in another one (refused at submission with a problem
saying why, or failing the step at call time), and the task and its lineage show the region."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from api import create_api_key, create_app
from api.fast_submit import SubmitFastPath
from crds.policy import Policy
from engine import Engine, StaticConnectorResolver, StaticModelResolver, WorkerConfig
from policies.residency import DENIED, Residency
from tests.engine.conftest import wait_done
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

EU = Policy.model_validate(
    {
        "metadata": {"name": "eu", "namespace": "claims", "generation": 2},
        "spec": {"selector": {"matchLabels": {"data": "pii"}}, "residency": {"regions": ["eu-west", "eu-central"]}},
    }
)
MODELS = {"triage-west": "eu-west", "triage-central": "eu-central", "triage-anywhere": None}


@pytest.fixture
def engine(tmp_path: Path, downstream: Downstream) -> Iterator[Engine]:
    def http(path: str, region: str) -> dict[str, Any]:
        return {"type": "http", "http": {"url": downstream.url(path), "allowPrivateNetworks": True}, "region": region}

    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {name: [{"version": "v1", "url": downstream.url(f"/m/{name}"), "weight": 100}] for name in MODELS}
        ),
        connector_resolver=StaticConnectorResolver({"crm-west": http("/crm-west", "eu-west")}),
        sqlite_synchronous="NORMAL",
        residency=Residency.from_manifests(
            [EU], {"pinned": ("claims", {"data": "pii"}), "open": ("claims", {"data": "public"})}, MODELS
        ),
    )
    yield engine
    engine.close()


def _register(engine: Engine, workflow: str, step: dict[str, Any]) -> None:
    engine.register_workflow(workflow, {"steps": [{"name": "call", "retry": {"maxAttempts": 3}, **step}]})


def _model(name: str) -> dict[str, Any]:
    return {"type": "model", "model": {"name": name}}


def _apps(engine: Engine) -> list[FastAPI]:
    """The gateway with the submission fast path, and without it (the FastAPI route)."""
    routed = create_app(engine)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not SubmitFastPath]  # type: ignore[comparison-overlap]
    return [create_app(engine), routed]


def _headers(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(engine, 'acme', 'alice', ['submitter'])}"}


def _body(workflow: str, region: str | None) -> dict[str, Any]:
    return {"workflow": {"name": workflow}, "input": {"claimId": "c-1"}, **({"region": region} if region else {})}


def test_a_task_region_outside_its_workflows_regions_is_refused(engine: Engine) -> None:
    _register(engine, "pinned", _model("triage-west"))
    headers = _headers(engine)
    answers = []
    for app in _apps(engine):
        with TestClient(app) as client:
            response = client.post("/v1/tasks", json=_body("pinned", "us-east"), headers=headers)
            assert response.status_code == 422, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert "region 'us-east' is outside the regions workflow 'pinned' keeps its data in" in problem["detail"]
            assert problem["allowedRegions"] == "eu-central, eu-west"
            answers.append(problem)
            # Not a region at all: the schema's own 422.
            malformed = client.post("/v1/tasks", json=_body("pinned", "EU West"), headers=headers)
            assert malformed.status_code == 422, malformed.text
    assert answers[0] == answers[1]
    assert engine.list("acme").items == []


@pytest.mark.parametrize(
    ("workflow", "region", "model"),
    [
        ("pinned", "eu-central", "triage-west"),  # narrower than the workflow's regions: west is left out
        ("open", "eu-west", "triage-central"),  # an unpinned workflow's task pinned by its submitter
        ("open", "eu-west", "triage-anywhere"),  # a model that declares no region cannot be shown to stay there
    ],
)
def test_a_submission_whose_steps_would_leave_the_tasks_region_is_refused(
    engine: Engine, downstream: Downstream, workflow: str, region: str, model: str
) -> None:
    _register(engine, workflow, _model(model))
    with TestClient(create_app(engine)) as client:
        response = client.post("/v1/tasks", json=_body(workflow, region), headers=_headers(engine))
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["type"] == "https://aiplane.io/problems/residency-denied"
    assert f"step 'call': this task's data stays in {region!r} (the task's region)" in problem["detail"]
    assert engine.list("acme").items == []
    # Without the region the same workflow's task is admitted (the workflow alone allows the model).
    if workflow == "pinned":
        assert engine.submit("acme", workflow, {"claimId": "c-2"}).region is None


def _run(engine: Engine, headers: dict[str, str], body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit through the gateway, run on a worker; the task and its lineage as the gateway shows them."""
    with TestClient(create_app(engine)) as client, engine.worker(WorkerConfig(poll_interval=0.02)):
        submitted = client.post("/v1/tasks", json=body, headers=headers)
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["region"] == body.get("region")

        def finished() -> dict[str, Any]:
            task: dict[str, Any] = client.get(f"/v1/tasks/{submitted.json()['id']}", headers=headers).json()
            assert task["state"] in {"succeeded", "failed", "dead_lettered"}, task["state"]
            return task

        task: dict[str, Any] = assert_eventually(finished, timeout=30, interval=0.05)
        lineage = client.get(f"/v1/tasks/{task['id']}/lineage", headers=headers)
        assert lineage.status_code == 200, lineage.text
        return task, lineage.json()


@pytest.mark.parametrize(
    ("step", "path", "why"),
    [
        (_model("triage-west"), "/m/triage-west/predict", "this task's data stays in 'eu-central' (the task's region)"),
        (
            {"type": "connector", "connector": {"name": "crm-west", "input": {"x": "1"}}},
            "/crm-west",
            "this task's data stays in 'eu-central' (the task's region)",
        ),
        # The workflow's own pin refuses it first, with its own words.
        (_model("triage-anywhere"), "/m/triage-anywhere/predict", "model 'triage-anywhere' declares no region"),
    ],
)
def test_a_task_never_calls_out_of_its_region_at_call_time(
    engine: Engine, downstream: Downstream, step: dict[str, Any], path: str, why: str
) -> None:
    _register(engine, "pinned", step)
    headers = _headers(engine)
    # The Model moved after the task came in: intake's plan check passed, the call-time check refuses.
    admission = engine.intake.admission
    assert admission is not None
    assert admission.residency is not None
    engine.intake.admission = None
    task, lineage = _run(engine, headers, _body("pinned", "eu-central"))
    assert task["state"] in {"failed", "dead_lettered"}, task
    assert task["error"]["kind"] == DENIED
    assert why in task["error"]["message"]
    assert downstream.count(path) == 0
    assert engine.steps("acme", task["id"])[0].attempts == 1  # not retried
    assert lineage["region"] == "eu-central"
    [denial] = [json.loads(r.details) for r in engine.audit.records() if r.decision == "deny"]
    # The task's region decided it, not a Policy (this engine is given no Policies to name): the record says so.
    assert (denial["reason"], denial["region"], denial["step"]) == ("residency-denied", "eu-central", "call")


def test_calls_in_the_tasks_region_go_ahead(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow(
        "pinned",
        {
            "steps": [
                {"name": "score", **_model("triage-west")},
                {"name": "file", "type": "connector", "connector": {"name": "crm-west", "input": {"x": "1"}}},
            ]
        },
    )
    task, lineage = _run(engine, _headers(engine), _body("pinned", "eu-west"))
    assert task["state"] == "succeeded", task
    assert task["region"] == "eu-west"
    assert lineage["region"] == "eu-west"
    assert (downstream.count("/m/triage-west/predict"), downstream.count("/crm-west")) == (1, 1)
    assert engine.get("acme", task["id"]).region == "eu-west"


def test_a_regional_install_takes_only_tasks_of_its_own_region(tmp_path: Path) -> None:
    with Engine(f"sqlite:///{tmp_path / 'e.db'}", residency=Residency(home="eu-west")) as engine:
        _register(engine, "open", {"type": "rules", "rules": {"set": {"ok": "true"}}})
        with TestClient(create_app(engine)) as client:
            response = client.post("/v1/tasks", json=_body("open", "eu-central"), headers=_headers(engine))
            assert response.status_code == 422, response.text
            assert "this aiplane serves region 'eu-west'" in response.json()["detail"]
            assert response.json()["allowedRegions"] == "eu-west"
            home = client.post("/v1/tasks", json=_body("open", "eu-west"), headers=_headers(engine))
            assert home.status_code == 202, home.text


def test_without_residency_policies_a_task_region_still_holds(tmp_path: Path, downstream: Downstream) -> None:
    """An engine given no residency at all knows no model's region: a pinned task calls none."""
    resolver = StaticModelResolver({"m": [{"version": "v1", "url": downstream.url("/m/m"), "weight": 100}]})
    with Engine(f"sqlite:///{tmp_path / 'e.db'}", model_resolver=resolver) as engine:
        _register(engine, "open", _model("m"))
        task = engine.submit("acme", "open", {"claimId": "c-1"}, region="eu-west")
        with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
            done = wait_done(engine, "acme", task.id, timeout=30)
        assert done.error is not None
        assert done.error["kind"] == DENIED
        assert downstream.count("/m/m/predict") == 0
