"""A cluster Policy edited, and the gateway's next call decides differently within seconds: the gateway is the app
``aiplane gateway --from-cluster`` serves (``aiplane.components.gateway_app`` over ``aiplane.incluster``'s
watches of a real apiserver), with OIDC tokens verified against a real JWKS HTTP server. And a Policy version this
process cannot parse leaves its last good version in force, and says so."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from fastapi.testclient import TestClient

from aiplane.components import gateway_app
from aiplane.incluster import ClusterSources, cluster_sources
from api import create_api_key
from crds import checks
from crds.policy import Policy
from crds.workflow import WorkflowSpec
from engine import Engine
from policies.effective import Target
from policies.sources_kube import GROUP, PLURAL, VERSION, KubePolicyWatch, parse
from tests.api.conftest import FAST_WORKER, assert_problem, auth, in_state, wait_task
from tests.fixtures.cluster import Cluster
from tests.fixtures.oidc import AUDIENCE, ISSUER, JwksServer, Signer
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import crds_installed

__all__ = ["crds_installed"]

NOW = "2026-01-01T00:00:00Z"
NOWHERE = "01JZZZZZZZZZZZZZZZZZZZZZZZ"  # a well-formed approval id no approval has
WORKFLOWS: dict[str, dict[str, Any]] = {
    "gated": {"steps": [{"name": "review", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}}}]},
    "note": {"steps": [{"name": "note", "type": "rules", "rules": {"set": {"seen": "true"}}}]},
}


def _apply_workflows(cluster: Cluster, namespace: str) -> None:
    for name, spec in WORKFLOWS.items():
        manifest = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workflow",
            "metadata": {"name": name, "labels": {"team": "claims"}},
            "spec": spec,
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
        # Valid, as the Workflow operator (not running here) would say: what the gateway registers.
        status = {
            "status": {
                "version": checks.version_of(WorkflowSpec.model_validate(spec)),
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Valid", "status": "True", "reason": "Valid", "message": "ok", "lastTransitionTime": NOW}
                ],
            }
        }
        cluster.kubectl(
            "patch", "-n", namespace, "aiw", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )


def _policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"team": "claims"}}, **spec},
    }


class Served:
    """The in-cluster gateway, its engine (with a worker) and the namespace's custom objects API."""

    def __init__(self, client: TestClient, engine: Engine, api: kubernetes.client.CustomObjectsApi, ns: str) -> None:
        self.client = client
        self.engine = engine
        self.api = api
        self.namespace = ns
        self.key = create_api_key(engine, "acme", "alice", ["submitter"])

    def create(self, body: dict[str, Any]) -> None:
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def submit(self, workflow: str) -> Any:
        return self.client.post("/v1/tasks", json={"workflow": {"name": workflow}, "input": {}}, headers=auth(self.key))


@pytest.fixture
def served(
    crds_installed: Cluster, k8s_namespace: str, jwks: JwksServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    _apply_workflows(crds_installed, k8s_namespace)
    monkeypatch.setenv("KUBECONFIG", str(crds_installed.kubeconfig))
    oidc = {"AIPLANE_OIDC_ISSUER": ISSUER, "AIPLANE_OIDC_AUDIENCE": AUDIENCE, "AIPLANE_OIDC_JWKS_URL": jwks.url}
    client = crds_installed.api_client()
    api = kubernetes.client.CustomObjectsApi(client)
    sources: ClusterSources | None
    with cluster_sources(k8s_namespace) as sources:
        assert sources is not None
        # What serve_gateway does, without uvicorn.
        engine = Engine(f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data", **sources.engine_options())
        try:
            with (
                sources.registering(engine),
                engine.worker(FAST_WORKER),
                TestClient(gateway_app(engine, sources=sources, environ=oidc)) as test_client,
            ):
                gateway = Served(test_client, engine, api, k8s_namespace)

                def registered() -> None:
                    for workflow in WORKFLOWS:
                        response = gateway.submit(workflow)
                        assert response.status_code == 202, response.text

                assert_eventually(registered, timeout=60, message="the namespace's Workflows registered")
                yield gateway
        finally:
            engine.close()
            close: Callable[[], None] = client.close  # untyped upstream
            close()


def _pending(served: Served) -> str:
    response = served.submit("gated")
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    wait_task(served.client, served.key, task_id, in_state("waiting"))
    [approval] = served.client.get(f"/v1/approvals?taskId={task_id}", headers=auth(served.key)).json()["items"]
    approval_id: str = approval["id"]
    return approval_id


def test_a_cluster_policy_binding_a_group_to_approver_applies_to_the_next_call(served: Served, rsa_key: Signer) -> None:
    lead = rsa_key.token(sub="lee@acme.example", roles=[], groups=["claims-leads"])

    def approve(approval_id: str, status: int) -> None:
        response = served.client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(lead))
        assert response.status_code == status, response.text

    first = _pending(served)
    approve(first, 403)

    served.create(
        _policy("leads", access={"tenants": ["acme"], "roles": [{"role": "approver", "subjects": ["claims-leads"]}]})
    )
    # Polled where deciding changes nothing: without the role 403, with it 404 (no such approval).
    assert_eventually(lambda: approve(NOWHERE, 404), timeout=10, interval=0.05)
    approve(first, 200)

    second = _pending(served)
    served.patch(
        "leads", {"access": {"tenants": ["acme"], "roles": [{"role": "auditor", "subjects": ["claims-leads"]}]}}
    )
    assert_eventually(lambda: approve(NOWHERE, 403), timeout=10, interval=0.05)
    approve(second, 403)
    assert served.client.get(f"/v1/approvals/{second}", headers=auth(lead)).status_code == 200  # an auditor reads

    served.delete("leads")

    def no_role_left() -> None:
        assert served.client.get(f"/v1/approvals/{second}", headers=auth(lead)).status_code == 403

    assert_eventually(no_role_left, timeout=10, interval=0.05)
    assert served.client.get(f"/v1/approvals/{second}", headers=auth(served.key)).json()["state"] == "pending"


def test_an_edited_cluster_policy_changes_the_gateways_next_decision_within_seconds(served: Served) -> None:
    # A tenant list that leaves acme out: its next submission is refused.
    served.create(_policy("who", access={"tenants": ["globex"]}))

    def refused() -> None:
        assert_problem(served.submit("note"), 403, "tenant-denied")

    assert_eventually(refused, timeout=10, interval=0.05)

    served.patch("who", {"access": {"tenants": ["globex", "acme"]}})

    def admitted() -> None:
        response = served.submit("note")
        assert response.status_code == 202, response.text

    assert_eventually(admitted, timeout=10, interval=0.05)

    # A rate limit added to it: a burst of one and next to no refill.
    served.patch("who", {"rateLimits": [{"requestsPerSecond": 0.001, "burst": 1}]})

    def limited() -> None:
        response = served.submit("note")
        assert_problem(response, 429, "rate-limited")
        assert response.headers["retry-after"]

    assert_eventually(limited, timeout=10, interval=0.05)
    served.patch("who", {"rateLimits": None})
    assert_eventually(admitted, timeout=10, interval=0.05)


def _older(body: dict[str, Any]) -> Policy:
    """The Policy schema of a process older than the cluster's CRD: it knows no ``rateLimits`` (and refuses unknown
    fields, as every aiplane model does)."""
    spec = dict(body.get("spec") or {})
    if "rateLimits" in spec:
        spec["rateLimitsOfANewerVersion"] = spec.pop("rateLimits")
    return parse({**body, "spec": spec})


def test_a_policy_version_that_does_not_parse_keeps_the_last_good_one_in_force(
    crds_installed: Cluster, k8s_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = crds_installed.api_client()
    api = kubernetes.client.CustomObjectsApi(client)
    target = Target("Workflow", "claims", k8s_namespace, {"team": "claims"})
    api.create_namespaced_custom_object(
        GROUP, VERSION, k8s_namespace, PLURAL, _policy("eu", residency={"regions": ["eu-west"]})
    )
    # A short watch timeout: the watch lists again every second, which must keep the last good version too.
    watch = KubePolicyWatch(client, namespace=k8s_namespace, watch_timeout_s=1, parse=_older).start()
    try:
        policies = watch.policies
        assert policies.effective(target).regions == frozenset({"eu-west"})
        with caplog.at_level(logging.WARNING, logger="policies.sources_kube"):
            spec = {"residency": {"regions": ["us-east"]}, "rateLimits": [{"requestsPerSecond": 5, "burst": 5}]}
            api.patch_namespaced_custom_object(GROUP, VERSION, k8s_namespace, PLURAL, "eu", {"spec": spec})

            def said_so_twice() -> None:  # on the watch's event, then on a listing after it
                warnings = [r.getMessage() for r in caplog.records if "does not parse" in r.getMessage()]
                assert len(warnings) >= 2, warnings

            assert_eventually(said_so_twice, timeout=15, interval=0.05)
        warning = next(r for r in caplog.records if "does not parse" in r.getMessage())
        assert warning.getMessage() == (
            f"policy {k8s_namespace}/eu (generation 2) does not parse; its last good version (generation 1) stays in "
            "force"
        )
        assert "rateLimitsOfANewerVersion" in warning.__dict__["error"]
        result = policies.effective(target)
        assert result.regions == frozenset({"eu-west"})
        assert [(s.name, s.generation) for s in result.sources] == [("eu", 1)]

        # Fixed (a version this process reads): it applies.
        api.patch_namespaced_custom_object(GROUP, VERSION, k8s_namespace, PLURAL, "eu", {"spec": {"rateLimits": None}})

        def fixed() -> None:
            assert policies.effective(target).regions == frozenset({"us-east"})

        assert_eventually(fixed, timeout=10, interval=0.05)
    finally:
        watch.stop()
        close: Callable[[], None] = client.close  # untyped upstream
        close()
