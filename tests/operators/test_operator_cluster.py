"""The Model operator on the real test cluster (apiserver, controller-manager with its garbage collector,
scheduler, kwok's CPU and GPU nodes), run as ``aiplane operator`` subprocesses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aiplane.modelserver import free_port
from operators.model.reconciler import ENDPOINT_URLS_ANNOTATION
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import Operator, wait_leading
from tests.operators.kube import KINDS, apply, children, claims, condition, get, model_named


def ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        model = model_named(cluster, namespace, name)
        ready = condition(model, "Ready")
        assert ready["status"] == "True", ready
        assert model["status"]["observedGeneration"] == model["metadata"]["generation"]
        return model

    result: dict[str, Any] = assert_eventually(check, timeout=90, message=f"Model {name} Ready")
    return result


def test_claims_model_gets_owned_children_and_becomes_ready_on_a_gpu_node(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, claims())
    model = ready(cluster, k8s_namespace, "claims-extractor")
    uid = model["metadata"]["uid"]

    kids = children(cluster, k8s_namespace)
    assert {kind: len(items) for kind, items in kids.items()} == {kind: 1 for kind in KINDS}
    for items in kids.values():
        (owner,) = items[0]["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "Model",
            "claims-extractor",
            uid,
            True,
        )
    (deployment,) = kids["deployments"]
    (service,) = kids["services"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    pods = get(cluster, k8s_namespace, "pods", "-l", "aiplane.io/model=claims-extractor")["items"]
    assert pods
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "default", "nodes")["items"]}
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"

    assert model["status"]["endpoints"] == [
        {
            "version": "1.0.0",
            "url": f"http://{service['metadata']['name']}.{k8s_namespace}.svc:3000",
            "weight": 100,
        }
    ]
    assert model["status"]["replicas"] == [{"version": "1.0.0", "desired": 1, "ready": 1}]
    printed = cluster.kubectl("get", "aim", "-n", k8s_namespace).stdout.splitlines()[1].split()
    assert printed[:4] == ["claims-extractor", "1.0.0", "1.0.0", "True"]  # name, version, stable, ready


def test_the_endpoint_urls_annotation_is_ignored_by_an_operator_not_told_to_honour_it(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    """Anyone who may edit a Model could otherwise send the gateway's traffic to a URL of their choosing."""
    cluster, ns = crds_installed, k8s_namespace
    manifest = claims(resources={"cpu": "1", "memory": "1Gi"})
    manifest["metadata"]["annotations"][ENDPOINT_URLS_ANNOTATION] = json.dumps({"1.0.0": "http://elsewhere.example"})
    apply(cluster, ns, manifest)
    model = ready(cluster, ns, "claims-extractor")
    (service,) = children(cluster, ns)["services"]
    url = f"http://{service['metadata']['name']}.{ns}.svc:3000"
    assert model["status"]["endpoints"] == [{"version": "1.0.0", "url": url, "weight": 100}]

    def said_so() -> None:
        (event,) = get(cluster, ns, "events", "--field-selector", "reason=EndpointURLsIgnored")["items"]
        assert event["type"] == "Warning"
        assert event["involvedObject"]["name"] == "claims-extractor"
        assert "AIPLANE_ENDPOINT_URLS_ANNOTATION=true" in event["message"]

    assert_eventually(said_so, timeout=30, message="a Warning Event says the annotation is ignored")
    # Said once, though the Model is reconciled again (its Deployment's status moves as the pod starts).
    logged = [r["model"] for r in operator.records() if r.get("message") == "endpoint-urls annotation ignored"]
    assert [m for m in logged if m.startswith(f"{ns}/")] == [f"{ns}/claims-extractor"]


def reconciled(metrics_port: int, namespace: str, name: str) -> bool:
    """Whether the operator serving /metrics on ``metrics_port`` has finished a reconcile of the Model: it exports
    the Model's traffic weights after the reconcile's status write (if the reconcile made one), not before as
    its "applied" log line comes."""
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return False
    for family in text_string_to_metric_families(text):
        if family.name == "aiplane_operator_model_traffic_weight_percent":
            return any(s.labels.get("namespace") == namespace and s.labels.get("model") == name for s in family.samples)
    return False


def test_rerunning_the_reconcile_changes_nothing(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator, start_operator: Any
) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, claims())
    ready(cluster, k8s_namespace, "claims-extractor")

    def versions() -> dict[str, str]:
        kids = children(cluster, k8s_namespace)

        def stamp(item: dict[str, Any]) -> str:
            # The autoscaler controller writes the HPA's status whenever it syncs (replica counts, metric
            # conditions), at any time; what an apply would change is its spec (an HPA has no generation).
            if item["kind"] == "HorizontalPodAutoscaler":
                return json.dumps(item["spec"], sort_keys=True)
            return str(item["metadata"]["resourceVersion"])

        stamps = {f"{i['kind']}/{i['metadata']['name']}": stamp(i) for v in kids.values() for i in v}
        stamps["model"] = model_named(cluster, k8s_namespace, "claims-extractor")["metadata"]["resourceVersion"]
        return stamps

    # Read once the first operator is gone, so nothing it was still writing counts against the second.
    operator.stop()
    before = versions()
    # A fresh operator knows nothing of what the last one applied: on resume it applies every child again.
    port = free_port()
    again = start_operator("second", args=("--metrics-host", "127.0.0.1", f"--metrics-port={port}"))
    wait_leading(again)
    assert_eventually(lambda: reconciled(port, k8s_namespace, "claims-extractor"), timeout=60, message="reconciled")
    assert again.applied(k8s_namespace), "the second operator applied nothing"
    assert versions() == before


def test_operator_killed_and_restarted_leaves_no_duplicates(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator, start_operator: Any
) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, claims())
    assert_eventually(lambda: len(children(cluster, k8s_namespace)["deployments"]) == 1, timeout=60)
    operator.kill9()
    # While it is down the user moves to a new version: the restarted operator must finish the switch.
    apply(cluster, k8s_namespace, claims(version="1.1.0"))
    restarted = start_operator("restarted")
    wait_leading(restarted)

    def converged() -> None:
        model = ready(cluster, k8s_namespace, "claims-extractor")
        assert model["status"]["stableVersion"] == "1.1.0"
        kids = children(cluster, k8s_namespace)
        assert {kind: len(items) for kind, items in kids.items()} == {kind: 1 for kind in KINDS}, kids
        assert kids["deployments"][0]["metadata"]["labels"]["aiplane.io/version"] == "1.1.0"

    assert_eventually(converged, timeout=90)


def test_gpu_model_that_fits_no_node_says_why(crds_installed: Cluster, k8s_namespace: str, operator: Operator) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, claims(resources={"cpu": "1", "memory": "1Gi", "gpu": {"count": 8}}))

    def unschedulable() -> None:
        model = model_named(cluster, k8s_namespace, "claims-extractor")
        ready = condition(model, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "Unschedulable"), ready
        assert "0/5 nodes are available" in ready["message"]
        assert "nvidia.com/gpu" in ready["message"]
        assert condition(model, "Degraded")["reason"] == "Unschedulable"

    assert_eventually(unschedulable, timeout=60)


def test_invalid_spec_becomes_a_condition_and_fixing_it_recovers(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, claims(resources={"cpu": "2", "memory": "8 GB"}))

    def invalid() -> None:
        model = model_named(cluster, k8s_namespace, "claims-extractor")
        ready = condition(model, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec"), ready
        assert "spec.resources.memory" in ready["message"]

    assert_eventually(invalid, timeout=60)
    assert children(cluster, k8s_namespace)["deployments"] == []
    apply(cluster, k8s_namespace, claims(resources={"cpu": "2", "memory": "8Gi"}))
    ready(cluster, k8s_namespace, "claims-extractor")
    assert operator.alive


def test_deleting_the_model_removes_everything_it_owned(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, claims())
    ready(cluster, k8s_namespace, "claims-extractor")
    cluster.kubectl("delete", "model", "claims-extractor", "-n", k8s_namespace, "--wait=true")

    def gone() -> None:
        assert children(cluster, k8s_namespace) == {kind: [] for kind in KINDS}
        assert get(cluster, k8s_namespace, "pods", "-l", "aiplane.io/model=claims-extractor")["items"] == []

    assert_eventually(gone, timeout=90)


def test_a_second_replica_stays_idle_while_the_leader_lives_then_takes_over(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator, start_operator: Any
) -> None:
    cluster = crds_installed
    standby = start_operator("standby")

    def both_peered() -> None:
        peers = get(cluster, "default", "clusterkopfpeering", "aiplane-operator").get("status") or {}
        assert len([p for p in peers.values() if p.get("lifetime", 0) > 0]) >= 2, peers

    # The standby keeps its keep-alive in the peering object like the leader does, but starts paused and,
    # seeing an older (higher-priority) peer, stays paused.
    assert_eventually(both_peered, timeout=60, message="both replicas peer")
    apply(cluster, k8s_namespace, claims("first"))
    ready(cluster, k8s_namespace, "first")
    assert operator.applied(k8s_namespace)
    assert standby.applied(k8s_namespace) == []
    assert not any("Resuming operations" in r.get("message", "") for r in standby.records())

    operator.kill9()
    apply(cluster, k8s_namespace, claims("second"))
    ready(cluster, k8s_namespace, "second")
    assert any(r["model"] == f"{k8s_namespace}/second" for r in standby.applied(k8s_namespace))


def gpus_in_use(cluster: Cluster) -> int:
    pods = get(cluster, "default", "pods", "--all-namespaces", "--field-selector", "spec.nodeName!=")["items"]
    used = 0
    for pod in pods:
        if pod["status"].get("phase") in ("Succeeded", "Failed") or not pod["spec"]["nodeName"].startswith("kwok-gpu"):
            continue
        for container in pod["spec"]["containers"]:
            used += int((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return used


def test_a_gpu_canary_that_cannot_fit_next_to_stable_moves_replicas_one_at_a_time(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    """Two GPU nodes of 4 GPUs and a model of 2 replicas x 4 GPUs: no GPU is free for a canary replica, so a
    rollout that added the canary next to the stable version would wait forever with its pods Pending."""
    cluster = crds_installed
    # Earlier tests' namespaces may still be going away with their GPU pods.
    assert_eventually(lambda: gpus_in_use(cluster) == 0, timeout=120, message="GPU nodes free")
    gpu = {"cpu": "1", "memory": "1Gi", "gpu": {"count": 4, "type": "NVIDIA-A100-SXM4-80GB"}}
    apply(cluster, k8s_namespace, claims(resources=gpu, minReplicas=2, maxReplicas=3))
    assert_eventually(
        lambda: (
            model_named(cluster, k8s_namespace, "claims-extractor")["status"].get("replicas")
            == [{"version": "1.0.0", "desired": 2, "ready": 2}]
        ),
        timeout=90,
        message="stable at 2 replicas",
    )
    assert gpus_in_use(cluster) == 8

    canary = {"version": "2.0.0", "steps": [50, 100], "interval": "1s"}
    apply(cluster, k8s_namespace, claims(resources=gpu, minReplicas=2, maxReplicas=3, canary=canary))

    def promoted() -> dict[str, Any]:
        model = model_named(cluster, k8s_namespace, "claims-extractor")
        rollout = model["status"].get("rollout") or {}
        assert rollout.get("phase") == "Promoted", (rollout, condition(model, "Progressing"))
        assert model["status"]["replicas"] == [{"version": "2.0.0", "desired": 2, "ready": 2}]
        return model

    model = assert_eventually(promoted, timeout=180, message="GPU canary promoted")
    # The operator saw the shortage and held the rollout's capacity at the stable version's 2 replicas.
    assert model["status"]["rollout"]["stableReplicas"] == 2
    kids = children(cluster, k8s_namespace)
    assert [d["metadata"]["labels"]["aiplane.io/version"] for d in kids["deployments"]] == ["2.0.0"]
    assert_eventually(
        lambda: (
            [h["spec"]["scaleTargetRef"]["name"] for h in children(cluster, k8s_namespace)["horizontalpodautoscalers"]]
            == [kids["deployments"][0]["metadata"]["name"]]
        ),
        timeout=60,
        message="the autoscaler is back, on the promoted version",
    )


def test_a_namespace_gpu_quota_is_respected_and_reported(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster = crds_installed
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "0"}},
    }
    apply(cluster, k8s_namespace, quota)
    apply(cluster, k8s_namespace, claims())

    def refused() -> None:
        model = model_named(cluster, k8s_namespace, "claims-extractor")
        degraded = condition(model, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "ReplicaFailure"), degraded
        assert "exceeded quota: gpus" in degraded["message"]
        assert condition(model, "Ready")["reason"] == "ReplicaFailure"
        assert model["status"]["gpuQuota"] == {"quota": "gpus", "hard": 0, "used": 0, "requested": 1}

    assert_eventually(refused, timeout=90)

    # Room in the quota: the replica starts, and the status says what it holds of it.
    apply(cluster, k8s_namespace, {**quota, "spec": {"hard": {"requests.nvidia.com/gpu": "4"}}})

    def admitted() -> None:
        model = model_named(cluster, k8s_namespace, "claims-extractor")
        assert condition(model, "Ready")["status"] == "True", condition(model, "Ready")
        assert model["status"]["gpuQuota"] == {"quota": "gpus", "hard": 4, "used": 1, "requested": 1}

    assert_eventually(admitted, timeout=120)


def test_pause_and_abort_a_rollout_with_annotations(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    canary = {"version": "2.0.0", "steps": [50, 100], "interval": "1h"}
    apply(cluster, ns, claims(canary=canary, resources={"cpu": "1", "memory": "1Gi"}))

    def rollout() -> dict[str, Any]:
        found: dict[str, Any] = model_named(cluster, ns, "claims-extractor")["status"].get("rollout") or {}
        return found

    assert_eventually(lambda: rollout().get("step") == 0, timeout=90, message="canary at 50%")
    cluster.kubectl("annotate", "-n", ns, "model", "claims-extractor", "aiplane.io/rollout-paused=true")

    def paused() -> None:
        model = model_named(cluster, ns, "claims-extractor")
        assert model["status"]["rollout"]["phase"] == "Paused"
        assert condition(model, "Progressing")["reason"] == "RolloutPaused"
        assert model["status"]["canaryWeight"] == 50

    assert_eventually(paused, timeout=60)
    held = rollout()
    # Condition times have whole seconds: resume in a later second than the step started, so a restarted clock shows.
    started = datetime.fromisoformat(held["stepStartedAt"])
    assert_eventually(lambda: datetime.now(UTC) >= started + timedelta(seconds=1), timeout=5, interval=0.1)
    cluster.kubectl("annotate", "-n", ns, "model", "claims-extractor", "aiplane.io/rollout-paused-")

    def resumed() -> None:
        model = model_named(cluster, ns, "claims-extractor")
        state = model["status"]["rollout"]
        assert (state["phase"], state["step"]) == ("Progressing", 0), state
        assert condition(model, "Progressing")["reason"] == "RollingOut"
        assert model["status"]["canaryWeight"] == 50
        # The interval starts over: what the canary served before the pause says nothing of it now.
        assert datetime.fromisoformat(state["stepStartedAt"]) > started, (held, state)
        (event,) = get(cluster, ns, "events", "--field-selector", "reason=RolloutResumed")["items"]
        assert "50%" in event["message"], event

    assert_eventually(resumed, timeout=60, message="the rollout resumed")
    cluster.kubectl("annotate", "-n", ns, "model", "claims-extractor", "aiplane.io/rollout-abort=true")

    def aborted() -> None:
        model = model_named(cluster, ns, "claims-extractor")
        assert model["status"]["rollout"]["phase"] == "Aborted"
        assert [(e["version"], e["weight"]) for e in model["status"]["endpoints"]] == [("1.0.0", 100)]
        versions = [d["metadata"]["labels"]["aiplane.io/version"] for d in children(cluster, ns)["deployments"]]
        assert versions == ["1.0.0"]

    assert_eventually(aborted, timeout=60)
    reasons = {e["reason"] for e in get(cluster, ns, "events")["items"]}
    assert {"RolloutStarted", "RolloutStep", "RolloutPaused", "RolloutResumed", "RolloutAborted"} <= reasons
