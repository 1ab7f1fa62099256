"""A canary whose promotion needs people, end to end: the operator on the test cluster holds it at its last step
and opens one approval in the engine's store; an operator killed and restarted while it waits opens no second
one; ``aiplane approve`` through the real gateway promotes it, and ``aiplane reject`` rolls the next one back.

No Prometheus here: without one the analysis passes on time alone (test_canary_cluster covers the analysis), so
the rollout reaches its last step within seconds and the test is about the approval."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiplane.promotions import WORKFLOW
from api import GatewaySettings, create_api_key, create_app
from engine import Engine
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import AIPLANE, Operator, wait_leading
from tests.operators.kube import apply, children, claims, condition, model_named
from tests.operators.serving import Served

MODEL = "claims-extractor"
# CPU only: other tests' GPU Models would leave a GPU canary shifting replicas (test_operator_cluster covers it).
CPU = {"cpu": "100m", "memory": "128Mi"}


@dataclass(frozen=True)
class Store:
    url: str
    engine: Engine
    gateway: str
    approver_key: str


@pytest.fixture
def store(k8s_namespace: str, tmp_path: Path) -> Iterator[Store]:
    """The engine's store the operator is given, and the gateway people decide through (tenant: the namespace)."""
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = Engine(url)
    key = create_api_key(engine, k8s_namespace, "alice", ["approver"])
    served = Served(create_app(engine, GatewaySettings()))
    try:
        yield Store(url, engine, served.url, key)
    finally:
        served.close()
        engine.close()


VERSION_3_POLICY = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "version-3-needs-approval"},
    "spec": {
        "selector": {"kinds": ["Model"]},
        "approvals": [{"name": "version-3", "when": "model.version.startsWith('3.')"}],
    },
}


def gated(version: str) -> dict[str, Any]:
    return {
        "version": version,
        "steps": [50, 100],
        "interval": "1s",
        "promotion": {"approval": {"roles": ["approver"]}},
    }


def awaiting(cluster: Cluster, ns: str, version: str) -> dict[str, Any]:
    """The approval the rollout of ``version`` waits for, once it waits."""

    def check() -> dict[str, Any]:
        model = model_named(cluster, ns, MODEL)
        progressing = condition(model, "Progressing")
        assert progressing["reason"] == "AwaitingApproval", progressing
        rollout = model["status"]["rollout"]
        assert rollout["version"] == version
        approval: dict[str, Any] | None = rollout.get("approval")
        assert approval, rollout
        assert f"aiplane approve {approval['id']}" in progressing["message"]
        assert f"1 approval from role approver in tenant {ns}" in progressing["message"]
        return approval

    found: dict[str, Any] = assert_eventually(check, timeout=120, message=f"{version} awaits approval")
    return found


def decide(store: Store, decision: str, approval_id: str, reason: str) -> None:
    subprocess.run(
        [
            str(AIPLANE),
            decision,
            approval_id,
            "--reason",
            reason,
            "--url",
            store.gateway,
            "--api-key",
            store.approver_key,
        ],
        check=True,
        capture_output=True,
    )


def versions(cluster: Cluster, ns: str) -> list[str]:
    return sorted(d["metadata"]["labels"]["aiplane.io/version"] for d in children(cluster, ns)["deployments"])


def test_a_canary_waits_for_approval_across_a_restart_is_promoted_on_approve_and_rolled_back_on_reject(
    crds_installed: Cluster, k8s_namespace: str, store: Store, start_operator: Any
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    operator: Operator = start_operator(AIPLANE_DATABASE_URL=store.url)
    wait_leading(operator)

    apply(cluster, ns, claims(canary=gated("2.0.0"), resources=CPU))
    first = awaiting(cluster, ns, "2.0.0")
    model = model_named(cluster, ns, MODEL)
    assert model["status"]["rollout"]["phase"] == "AwaitingApproval"
    assert model["status"]["canaryWeight"] == 100
    assert versions(cluster, ns) == ["1.0.0", "2.0.0"]

    # Killed while it waits: the restarted operator finds the approval in status and asks for no second one.
    operator.kill9()
    restarted: Operator = start_operator("restarted", AIPLANE_DATABASE_URL=store.url)
    wait_leading(restarted)
    assert awaiting(cluster, ns, "2.0.0")["id"] == first["id"]

    decide(store, "approve", first["id"], "canary metrics reviewed")

    def promoted() -> None:
        status = model_named(cluster, ns, MODEL)["status"]
        assert status["rollout"]["phase"] == "Promoted", status["rollout"]
        assert status["rollout"]["approval"]["decidedBy"] == ["alice"]
        assert status["stableVersion"] == "2.0.0"
        assert versions(cluster, ns) == ["2.0.0"]

    assert_eventually(promoted, timeout=120, message="2.0.0 promoted after approval")
    approvals = store.engine.approvals(ns, None).items
    assert [(a.id, a.state) for a in approvals] == [(first["id"], "approved")]
    assert store.engine.get(ns, approvals[0].task_id).workflow == WORKFLOW

    # Version 3 needs an approval because a Policy says so (the spec asks for none); it is
    # rejected: rolled back, and the stable version keeps all traffic.
    apply(cluster, ns, VERSION_3_POLICY)
    plain = {"version": "3.0.0", "steps": [50, 100], "interval": "1s"}
    apply(cluster, ns, claims(version="2.0.0", canary=plain, resources=CPU))
    second = awaiting(cluster, ns, "3.0.0")
    decide(store, "reject", second["id"], "not this quarter")

    def rejected() -> None:
        model = model_named(cluster, ns, MODEL)
        rolled = condition(model, "RolledBack")
        assert (rolled["status"], rolled["reason"]) == ("True", "PromotionRejected"), rolled
        assert "rejected by alice: not this quarter" in rolled["message"]
        assert [(e["version"], e["weight"]) for e in model["status"]["endpoints"]] == [("2.0.0", 100)]
        assert versions(cluster, ns) == ["2.0.0"]

    assert_eventually(rejected, timeout=120, message="3.0.0 rolled back on rejection")
    assert [a.state for a in store.engine.approvals(ns, None).items] == ["approved", "rejected"]
    decisions = [(r.kind, r.decision) for r in store.engine.audit.records()]
    assert ("approval", "approve") in decisions
    assert ("approval", "reject") in decisions
    models = [d for kind, d in decisions if kind == "model"]
    assert models == ["approval-required", "promote", "approval-required", "rollback"], decisions
    assert store.engine.audit.verify().ok
