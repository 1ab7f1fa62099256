"""Policies that select a Model govern ``POST /v1/models/{name}/predict`` and the engine's calls to it, through the
real gateway app (fast path and route) with a real HTTP upstream: tenant access (403, audited with the Policy
versions), residency refusals audited, PII masked in the gateway's span and payload logs (the caller gets the
model's own answer), and payload logging sampled per Model."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiplane import manifests
from aiplane.dev import DevStack
from aiplane.kubemodels import KubeModelResolver
from api import create_api_key, create_app
from api.auth import follow_policies
from api.routers.models import PredictFastPath
from crds.policy import Policy
from engine import Engine, StaticModelResolver, WorkerConfig
from policies.effective import Target
from policies.model_calls import ModelPolicies, default_target
from policies.payloads import LOGGER, PayloadLog
from policies.residency import Residency
from policies.sources import PolicySet
from tests.fixtures.downstream import Downstream, Reply
from tests.fixtures.polling import assert_eventually

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

EMAIL = "jane.doe@example.com"
# triage is labelled for the claims Policy; open is selected by no Policy; triage-us is in another region.
TARGETS = {
    "triage": Target("Model", "triage", "claims", {"team": "claims"}),
    "triage-us": Target("Model", "triage-us", "claims", {"team": "claims"}),
    # Pinned by a residency Policy: one in its region, one that declares none.
    "eu-ok": Target("Model", "eu-ok", "claims", {"zone": "eu"}),
    "eu-nowhere": Target("Model", "eu-nowhere", "claims", {"zone": "eu"}),
}
EU_ONLY = Policy.model_validate(
    {
        "metadata": {"name": "eu-only", "namespace": "claims", "generation": 5},
        "spec": {
            "selector": {"kinds": ["Model"], "matchLabels": {"zone": "eu"}},
            "residency": {"regions": ["eu-west"]},
        },
    }
)


def _target(model: str) -> Target:
    return TARGETS.get(model) or default_target(model)


def _policy(generation: int = 2, tenants: list[str] | None = None) -> Policy:
    spec: dict[str, Any] = {
        "selector": {"kinds": ["Model"], "matchLabels": {"team": "claims"}},
        "pii": {"entities": ["EMAIL_ADDRESS"], "action": "redact"},
        "payloadLogging": {"sampleRate": 1.0},
    }
    if tenants is not None:
        spec["access"] = {"tenants": tenants}
    return Policy.model_validate(
        {"metadata": {"name": "claims-models", "namespace": "claims", "generation": generation}, "spec": spec}
    )


@pytest.fixture
def upstream() -> Iterator[Downstream]:
    server = Downstream()
    yield server
    server.close()


@pytest.fixture
def policies() -> PolicySet:
    return PolicySet([_policy(tenants=["acme"]), EU_ONLY])


@pytest.fixture
def engine(tmp_path: Path, upstream: Downstream, policies: PolicySet) -> Iterator[Engine]:
    model_policies = ModelPolicies(policies, _target)
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {
                name: [{"version": "v1", "url": upstream.url(f"/models/{name}"), "weight": 100}]
                for name in ("triage", "open", "triage-us", "eu-ok", "eu-nowhere")
            }
        ),
        sqlite_synchronous="NORMAL",
        residency=Residency(model_regions={"triage-us": "us-east", "eu-ok": "eu-west"}, home="eu-west"),
        payloads=PayloadLog(
            lambda workflow: None, model_rate_for=model_policies.sample_rate, model_masking=model_policies.masking
        ),
    )
    yield engine
    engine.close()


def _apps(engine: Engine, policies: PolicySet) -> list[FastAPI]:
    """The gateway with the predict fast path, and without it (the FastAPI route), both following ``policies``."""
    fast, routed = create_app(engine), create_app(engine)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not PredictFastPath]  # type: ignore[comparison-overlap]
    for app in (fast, routed):
        follow_policies(app.state.gateway, policies, {}, models=_target)
    return [fast, routed]


def _denials(engine: Engine) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(r.subject, r.tenant, json.loads(r.details)) for r in engine.audit.records() if r.decision == "deny"]


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the processor stays on the provider; a shut exporter takes nothing more


def test_a_tenant_the_models_policies_leave_out_is_refused_and_audited(
    engine: Engine, policies: PolicySet, upstream: Downstream
) -> None:
    acme = create_api_key(engine, "acme", "alice", ["submitter"])
    globex = create_api_key(engine, "globex", "gina", ["submitter"])
    for app in _apps(engine, policies):
        with TestClient(app) as client:
            refused = client.post(
                "/v1/models/triage/predict", json={"x": 1}, headers={"Authorization": f"Bearer {globex}"}
            )
            assert refused.status_code == 403, refused.text
            problem = refused.json()
            assert problem["type"] == "https://aiplane.io/problems/tenant-denied"
            assert "tenant 'globex' may not call model 'triage'" in problem["detail"]
            assert "claims-models" not in refused.text  # the caller is not told how the Policies are named
            # The model no Policy selects, and the allowed tenant, go ahead.
            ok = client.post("/v1/models/open/predict", json={"x": 1}, headers={"Authorization": f"Bearer {globex}"})
            assert ok.status_code == 200, ok.text
            ok = client.post("/v1/models/triage/predict", json={"x": 1}, headers={"Authorization": f"Bearer {acme}"})
            assert ok.status_code == 200, ok.text
    assert upstream.count("/models/triage/predict") == 2  # acme's, once per app; never globex's
    denials = _denials(engine)
    assert len(denials) == 2
    for subject, tenant, details in denials:
        assert (subject, tenant) == ("model/triage/predict", "globex")
        assert details["reason"] == "tenant-denied"
        assert details["by"] == "gina"
        assert details["policies"] == ["claims/claims-models@2"]
    assert engine.audit.verify().ok


def test_a_policy_change_applies_to_the_next_call(engine: Engine, policies: PolicySet) -> None:
    globex = create_api_key(engine, "globex", "gina", ["submitter"])
    (app, _) = _apps(engine, policies)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {globex}"}
        assert client.post("/v1/models/triage/predict", json={}, headers=headers).status_code == 403
        policies.put(_policy(generation=3, tenants=["acme", "globex"]))
        assert client.post("/v1/models/triage/predict", json={}, headers=headers).status_code == 200
        policies.put(_policy(generation=4, tenants=["acme"]))
        assert client.post("/v1/models/triage/predict", json={}, headers=headers).status_code == 403
    assert [d["policies"] for _, _, d in _denials(engine)] == [["claims/claims-models@2"], ["claims/claims-models@4"]]


def test_a_residency_refusal_of_a_prediction_is_audited(
    engine: Engine, policies: PolicySet, upstream: Downstream
) -> None:
    acme = create_api_key(engine, "acme", "alice", ["submitter"])
    for app in _apps(engine, policies):
        with TestClient(app) as client:
            refused = client.post("/v1/models/triage-us/predict", json={}, headers={"Authorization": f"Bearer {acme}"})
            assert refused.status_code == 403, refused.text
            assert refused.json()["type"] == "https://aiplane.io/problems/residency-denied"
    assert upstream.count("/models/triage-us/predict") == 0
    denials = _denials(engine)
    assert len(denials) == 2
    for subject, tenant, details in denials:
        assert (subject, tenant) == ("model/triage-us/predict", "acme")
        assert details["reason"] == "residency-denied"
        assert details["region"] == "eu-west"
        assert "model 'triage-us' is in 'us-east'" in details["detail"]
        assert details["policies"] == []  # the install's region decided; the Model's Policies have no residency part


def test_a_model_outside_its_residency_policies_regions_is_not_called(
    engine: Engine, policies: PolicySet, upstream: Downstream
) -> None:
    acme = create_api_key(engine, "acme", "alice", ["submitter"])
    headers = {"Authorization": f"Bearer {acme}"}
    for app in _apps(engine, policies):
        with TestClient(app) as client:
            refused = client.post("/v1/models/eu-nowhere/predict", json={}, headers=headers)
            assert refused.status_code == 403, refused.text
            problem = refused.json()
            assert problem["type"] == "https://aiplane.io/problems/residency-denied"
            assert "model 'eu-nowhere' keeps its data in eu-west by its Policies" in problem["detail"]
            assert "declares no region" in problem["detail"]
            assert client.post("/v1/models/eu-ok/predict", json={}, headers=headers).status_code == 200
    assert (upstream.count("/models/eu-nowhere/predict"), upstream.count("/models/eu-ok/predict")) == (0, 2)
    denials = _denials(engine)
    assert [(s, d["reason"], d["policies"]) for s, _, d in denials] == [
        ("model/eu-nowhere/predict", "residency-denied", ["claims/eu-only@5"])
    ] * 2


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.getMessage() == message]


def test_predictions_of_a_governed_model_are_logged_and_traced_masked(
    engine: Engine,
    policies: PolicySet,
    upstream: Downstream,
    caplog: pytest.LogCaptureFixture,
    exported: InMemorySpanExporter,
) -> None:
    acme = create_api_key(engine, "acme", "alice", ["submitter"])
    headers = {"Authorization": f"Bearer {acme}"}
    caplog.set_level(logging.INFO, logger=LOGGER)
    for app in _apps(engine, policies):
        with TestClient(app) as client:
            # The caller gets the model's own answer (the upstream echoes the request).
            answer = client.post("/v1/models/triage/predict", json={"email": EMAIL}, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["received"] == {"email": EMAIL}
            # A model refusal quoting the request: the caller's problem quotes it, the gateway's span does not.
            upstream.script("/models/triage/predict", Reply(status=400, body={"error": f"unknown user {EMAIL}"}))
            refused = client.post("/v1/models/triage/predict", json={"email": EMAIL}, headers=headers)
            upstream.script("/models/triage/predict", Reply())
            assert refused.status_code == 400, refused.text
            assert EMAIL in refused.json()["detail"]
            # A Model no Policy selects is not logged.
            assert client.post("/v1/models/open/predict", json={"email": EMAIL}, headers=headers).status_code == 200
    logged = _logged(caplog, "prediction payload")
    assert len(logged) == 2  # one success per app, sample rate 1
    for record in logged:  # the payloads are kept in the store, not in the log line
        assert (record.model, record.tenant, record.sample_rate) == ("triage", "acme", 1.0)  # type: ignore[attr-defined]
        assert record.kept is True  # type: ignore[attr-defined]
    kept = engine.payload_logs.records(tenant="acme")
    assert len(kept) == 2
    for entry in kept:
        assert (entry["model"], entry["tenant"], entry["sample_rate"]) == ("triage", "acme", 1.0)
        assert entry["input"] == {"email": "<EMAIL_ADDRESS>"}
        assert entry["output"]["received"] == {"email": "<EMAIL_ADDRESS>"}
    assert EMAIL not in caplog.text
    assert EMAIL not in json.dumps(kept)
    spans: list[ReadableSpan] = [s for s in exported.get_finished_spans() if s.name == "aiplane.gateway.predict"]
    failed = [s for s in spans if s.status.description]
    assert len(failed) == 2
    for span in failed:
        assert "unknown user <EMAIL_ADDRESS>" in (span.status.description or "")
        assert [e.attributes["exception.message"] for e in span.events if e.attributes] != []
    for span in spans:
        text = json.dumps([span.status.description, [dict(e.attributes or {}) for e in span.events]])
        if span.attributes and span.attributes.get("aiplane.model.name") == "triage":
            assert EMAIL not in text


def test_the_engines_model_calls_are_logged_by_the_models_rate_and_masked(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    for name in ("triage", "open"):
        engine.register_workflow(
            f"call-{name}", {"steps": [{"name": "call", "type": "model", "model": {"name": name}}]}
        )
    ids = [engine.submit("acme", f"call-{name}", {"email": EMAIL}).id for name in ("triage", "open")]

    def finished() -> None:
        for task_id in ids:
            assert engine.get("acme", task_id).state == "succeeded"

    with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
        assert_eventually(finished, timeout=30, interval=0.02)
    logged = _logged(caplog, "step payload")
    assert [(r.workflow, r.model) for r in logged] == [("call-triage", "triage")]  # type: ignore[attr-defined]
    (kept,) = engine.payload_logs.records(task_id=ids[0])
    assert kept["output"]["received"] == {"email": "<EMAIL_ADDRESS>"}
    assert kept["input"] == {"email": "<EMAIL_ADDRESS>"}
    assert engine.payload_logs.records(task_id=ids[1]) == []
    assert EMAIL not in caplog.text


def test_a_cluster_models_labels_are_what_policies_select_it_by() -> None:
    resolver = KubeModelResolver(kubernetes.client.ApiClient(), "claims")
    resolver._changed("ADDED", {"metadata": {"name": "triage", "labels": {"team": "claims"}}, "spec": {}})
    assert resolver.target("triage") == TARGETS["triage"]
    resolver._changed("DELETED", {"metadata": {"name": "triage"}})
    assert resolver.target("triage") == Target("Model", "triage", "claims", {})


def test_aiplane_dev_selects_models_by_their_manifests_labels(tmp_path: Path) -> None:
    examples = Path(__file__).parents[2] / "examples" / "claims-triage"
    stack = DevStack(manifests_dir=examples, data_dir=tmp_path, resources=manifests.load([examples]))
    target = stack.model_target("claims-extractor")
    assert (target.namespace, target.labels["app.kubernetes.io/part-of"]) == ("default", "claims-triage")
    assert stack.model_target("claims-extractor") is target  # made once
    assert stack.model_target("unknown") == default_target("unknown")
    # The example's Policy selects its Model: predictions are sampled for the payload log as it says.
    policies = PolicySet([r for r in stack.resources if isinstance(r, Policy)])
    assert ModelPolicies(policies, stack.model_target).call("claims-extractor", "dev").sample_rate == 0.01
