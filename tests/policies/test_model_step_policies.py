"""Policies that select a Model govern a workflow's model steps as they govern predictions: through the real gateway
and engine with a real HTTP server that counts calls, a tenant the Model's Policies leave out and a Model outside
their regions fail the step without retries (the task dead-lettered, the error naming the Policy and why, a
policy/deny record naming its version), and the model is never called; an allowed call goes ahead."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from aiplane.incluster import ClusterSources
from api import create_api_key, create_app
from crds.policy import Policy
from engine import Engine, StaticModelResolver, WorkerConfig
from policies.effective import Target
from policies.model_calls import TENANT_DENIED, ModelPolicies, default_target
from policies.residency import DENIED, Residency
from policies.sources import PolicySet
from tests.engine.conftest import wait_done
from tests.fixtures.devstack import dev_stack
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

MODELS = {
    "triage": Target("Model", "triage", "claims", {"team": "claims"}),
    "eu-ok": Target("Model", "eu-ok", "claims", {"zone": "eu"}),
    "eu-us": Target("Model", "eu-us", "claims", {"zone": "eu"}),
    "eu-nowhere": Target("Model", "eu-nowhere", "claims", {"zone": "eu"}),
}
REGIONS = {"triage": "us-east", "eu-ok": "eu-west", "eu-us": "us-east"}


def _policy(name: str, generation: int, selector: dict[str, Any], **parts: Any) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "claims", "generation": generation},
            "spec": {"selector": {"kinds": ["Model"], **selector}, **parts},
        }
    )


@pytest.fixture
def engine(tmp_path: Path, downstream: Downstream) -> Iterator[Engine]:
    policies = PolicySet(
        [
            _policy("claims-models", 3, {"matchLabels": {"team": "claims"}}, access={"tenants": ["acme"]}),
            _policy("eu-only", 5, {"matchLabels": {"zone": "eu"}}, residency={"regions": ["eu-west"]}),
        ]
    )
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {name: [{"version": "v1", "url": downstream.url(f"/m/{name}"), "weight": 100}] for name in MODELS}
        ),
        sqlite_synchronous="NORMAL",
        residency=Residency(model_regions=REGIONS),
        model_policies=ModelPolicies(policies, lambda name: MODELS.get(name) or default_target(name)),
    )
    for name in MODELS:
        # Retries allowed: a refusal must not use them (the answer does not change by trying again).
        engine.register_workflow(
            f"call-{name}",
            {"steps": [{"name": "score", "type": "model", "model": {"name": name}, "retry": {"maxAttempts": 3}}]},
        )
    yield engine
    engine.close()


def _run(engine: Engine, tenant: str, model: str) -> dict[str, Any]:
    """Submit through the gateway as ``tenant``, run the task on a worker, and read it back through the gateway."""
    key = create_api_key(engine, tenant, "alice", ["submitter"])
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(engine)) as client, engine.worker(WorkerConfig(poll_interval=0.02)):
        body = {"workflow": {"name": f"call-{model}"}, "input": {"claimId": "c-1"}}
        submitted = client.post("/v1/tasks", json=body, headers=headers)
        assert submitted.status_code == 202, submitted.text

        def finished() -> dict[str, Any]:
            task: dict[str, Any] = client.get(f"/v1/tasks/{submitted.json()['id']}", headers=headers).json()
            assert task["state"] in {"succeeded", "failed", "dead_lettered"}, task["state"]
            return task

        result: dict[str, Any] = assert_eventually(finished, timeout=30, interval=0.05)
        return result


def _denials(engine: Engine) -> list[dict[str, Any]]:
    return [json.loads(r.details) for r in engine.audit.records() if r.decision == "deny"]


def test_a_tenant_the_models_policies_leave_out_never_calls_it(engine: Engine, downstream: Downstream) -> None:
    task = _run(engine, "globex", "triage")
    assert task["state"] in {"failed", "dead_lettered"}, task
    assert task["error"]["kind"] == TENANT_DENIED
    assert task["error"]["retryable"] is False
    assert "tenant 'globex' may not call model 'triage'" in task["error"]["message"]
    assert "claims/claims-models@3" in task["error"]["message"]
    assert downstream.count("/m/triage/predict") == 0
    [denial] = _denials(engine)
    assert denial["reason"] == "tenant-denied"
    assert denial["policies"] == ["claims/claims-models@3"]
    assert denial["step"] == "score"
    assert engine.steps("globex", task["id"])[0].attempts == 1  # not retried


@pytest.mark.parametrize("model", ["eu-us", "eu-nowhere"])
def test_a_model_outside_its_policies_regions_is_never_called(
    engine: Engine, downstream: Downstream, model: str
) -> None:
    task = _run(engine, "acme", model)
    assert task["state"] in {"failed", "dead_lettered"}, task
    assert task["error"]["kind"] == DENIED
    assert f"model {model!r} keeps its data in eu-west" in task["error"]["message"]
    assert "claims/eu-only@5" in task["error"]["message"]
    assert downstream.count(f"/m/{model}/predict") == 0
    [denial] = _denials(engine)
    assert (denial["reason"], denial["policies"]) == ("residency-denied", ["claims/eu-only@5"])


@pytest.mark.parametrize("model", ["triage", "eu-ok"])
def test_calls_the_models_policies_allow_go_ahead(engine: Engine, downstream: Downstream, model: str) -> None:
    task = _run(engine, "acme", model)
    assert task["state"] == "succeeded", task
    assert downstream.count(f"/m/{model}/predict") == 1
    assert _denials(engine) == []


def test_an_agents_planner_is_a_model_call_its_policies_govern(engine: Engine, downstream: Downstream) -> None:
    agent = {
        "goal": "Triage claim {{ input.claimId }}",
        "planner": {"model": "triage"},
        "actions": [{"name": "score", "description": "Score the claim.", "model": {"name": "eu-ok"}}],
    }
    engine.register_workflow("agentic", {"steps": [{"name": "agent", "type": "agent", "agent": agent}]})
    key = create_api_key(engine, "globex", "alice", ["submitter"])
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(engine)) as client, engine.worker(WorkerConfig(poll_interval=0.02)):
        body = {"workflow": {"name": "agentic"}, "input": {"claimId": "c-1"}}
        submitted = client.post("/v1/tasks", json=body, headers=headers)
        assert submitted.status_code == 202, submitted.text

        def finished() -> dict[str, Any]:
            task: dict[str, Any] = client.get(f"/v1/tasks/{submitted.json()['id']}", headers=headers).json()
            assert task["state"] in {"failed", "dead_lettered"}, task["state"]
            return task

        task = assert_eventually(finished, timeout=30, interval=0.05)
    assert task["error"]["kind"] == TENANT_DENIED
    assert "claims/claims-models@3" in task["error"]["message"]
    assert not [path for path in downstream.calls if path.startswith("/m/")]  # the planner never saw the task
    [denial] = _denials(engine)
    assert (denial["reason"], denial["step"]) == ("tenant-denied", "agent")


def test_aiplane_dev_and_the_cluster_workers_wire_the_models_policies(tmp_path: Path) -> None:
    workflow = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "score"},
        "spec": {"steps": [{"name": "score", "type": "model", "model": {"name": "ghost"}}]},
    }
    policy = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": "models"},
        "spec": {"selector": {"kinds": ["Model"]}, "access": {"tenants": ["acme"]}},
    }
    with dev_stack(tmp_path, {"workflow.yaml": workflow, "policy.yaml": policy}) as (_, engine):
        task = engine.submit("globex", "score", {})
        with engine.worker(WorkerConfig(poll_interval=0.02)):
            done = wait_done(engine, "globex", task.id, timeout=30)
        assert done.error is not None
        assert done.error["kind"] == TENANT_DENIED
        assert re.search(r"default/models@[0-9a-f]{12}", done.error["message"])  # a file Policy's version

    sources = ClusterSources(
        namespace="claims",
        client=cast(Any, None),
        models=cast(Any, SimpleNamespace(regions={}, target=lambda name: MODELS.get(name) or default_target(name))),
        connectors=cast(Any, SimpleNamespace(connector=lambda name: None)),
        secrets=cast(Any, None),
        policies=PolicySet(
            [_policy("claims-models", 3, {"matchLabels": {"team": "claims"}}, access={"tenants": ["acme"]})]
        ),
    )
    model_policies = sources.engine_options()["model_policies"]
    assert model_policies.call("triage", "globex").refusal("us-east").policies == ("claims/claims-models@3",)
    assert model_policies.call("triage", "acme").refusal("us-east") is None
