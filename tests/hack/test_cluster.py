"""The test cluster itself: what every integration test relies on (kwok CPU and GPU nodes that take pods, the
scheduler honouring extended resources and taints, and an idempotent ``hack/cluster.sh up``)."""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes
import pytest

from tests.fixtures.cluster import CLUSTER_SH, REPO_ROOT, Cluster
from tests.fixtures.polling import assert_eventually

GPU = "nvidia.com/gpu"
POOL_LABEL = "aiplane.io/node-pool"
# Scheduling and kwok's status updates take a few seconds; allow for a loaded 2-core CI machine.
SCHEDULE_TIMEOUT_S = 90.0


def deployment(name: str, replicas: int, gpus: int = 0) -> str:
    """A Deployment manifest; with ``gpus`` it asks for that many GPUs and tolerates the GPU nodes' taint."""
    limits = f"\n              {GPU}: {gpus}" if gpus else ""
    tolerations = (
        f"""
      tolerations:
        - key: {GPU}
          operator: Exists
          effect: NoSchedule"""
        if gpus
        else ""
    )
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:{tolerations}
      containers:
        - name: main
          image: registry.k8s.io/pause:3.10
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
            limits:
              memory: 64Mi{limits}
"""


# The client's models type every field Optional; these tests read objects the API server has just filled in, so
# they go through Any rather than asserting non-None on every attribute.
def pods_of(api: kubernetes.client.CoreV1Api, namespace: str, app: str) -> list[Any]:
    pods: list[Any] = api.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return pods


def nodes_of(api: kubernetes.client.CoreV1Api) -> list[Any]:
    nodes: list[Any] = api.list_node().items
    return nodes


def node_pools(api: kubernetes.client.CoreV1Api) -> dict[str, str]:
    return {n.metadata.name: (n.metadata.labels or {}).get(POOL_LABEL, "") for n in nodes_of(api)}


def assert_running_in_pool(
    api: kubernetes.client.CoreV1Api, namespace: str, app: str, replicas: int, pool: str
) -> None:
    """Wait until ``replicas`` pods of ``app`` are Running, and check they landed in ``pool``."""
    pools = node_pools(api)

    def all_running() -> list[Any]:
        pods = pods_of(api, namespace, app)
        phases = {p.metadata.name: (p.status.phase, p.spec.node_name) for p in pods}
        assert len(pods) == replicas, phases
        assert all(p.status.phase == "Running" for p in pods), phases
        return pods

    pods = assert_eventually(all_running, timeout=SCHEDULE_TIMEOUT_S, message=f"{replicas} Running pods of {app}")
    for pod in pods:
        assert pools.get(pod.spec.node_name) == pool, (pod.metadata.name, pod.spec.node_name, pools)
        # kwok fills in what a kubelet would, so code that reads pod status sees a plausible pod.
        assert pod.status.pod_ip, pod.metadata.name
        assert all(c.ready for c in pod.status.container_statuses), pod.metadata.name


@pytest.fixture
def core(cluster: Cluster) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster.api_client())


def test_nodes_include_cpu_and_gpu_pools(core: kubernetes.client.CoreV1Api) -> None:
    nodes = nodes_of(core)
    cpu = [n for n in nodes if n.metadata.labels.get(POOL_LABEL) == "cpu"]
    gpu = [n for n in nodes if n.metadata.labels.get(POOL_LABEL) == "gpu"]
    assert len(cpu) >= 3, [n.metadata.name for n in nodes]
    assert len(gpu) >= 2, [n.metadata.name for n in nodes]
    for node in cpu + gpu:
        ready = [c.status for c in node.status.conditions if c.type == "Ready"]
        assert ready == ["True"], (node.metadata.name, ready)
    for node in gpu:
        assert node.status.allocatable.get(GPU) == "4", node.status.allocatable
        assert node.metadata.labels.get("nvidia.com/gpu.present") == "true"
        assert any(t.key == GPU and t.effect == "NoSchedule" for t in node.spec.taints or []), node.spec.taints
    for node in cpu:
        assert GPU not in node.status.allocatable, node.status.allocatable


def test_cpu_deployment_runs_on_cpu_nodes(
    cluster: Cluster, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    cluster.kubectl("-n", k8s_namespace, "apply", "-f", "-", input=deployment("web", replicas=3))
    # The GPU taint must keep ordinary pods off the GPU pool.
    assert_running_in_pool(core, k8s_namespace, "web", replicas=3, pool="cpu")


def test_gpu_deployment_runs_on_gpu_node(
    cluster: Cluster, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    cluster.kubectl("-n", k8s_namespace, "apply", "-f", "-", input=deployment("llm", replicas=1, gpus=1))
    assert_running_in_pool(core, k8s_namespace, "llm", replicas=1, pool="gpu")


def test_gpu_request_beyond_any_node_stays_pending(
    cluster: Cluster, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    cluster.kubectl("-n", k8s_namespace, "apply", "-f", "-", input=deployment("huge", replicas=1, gpus=99))

    def unschedulable() -> Any:
        pods = pods_of(core, k8s_namespace, "huge")
        assert len(pods) == 1, [p.metadata.name for p in pods]
        conditions = {c.type: c for c in pods[0].status.conditions or []}
        scheduled = conditions.get("PodScheduled")
        assert scheduled is not None, conditions
        assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable"), scheduled
        return pods[0]

    pod = assert_eventually(unschedulable, timeout=SCHEDULE_TIMEOUT_S, message="PodScheduled=False/Unschedulable")
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name
    # The scheduler says why ("Insufficient nvidia.com/gpu"), which is what a user debugging this would read.
    assert any(GPU in (c.message or "") for c in pod.status.conditions), pod.status.conditions

    def failed_scheduling_event() -> None:
        events = core.list_namespaced_event(k8s_namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
        assert any(e.reason == "FailedScheduling" for e in events.items), [e.reason for e in events.items]

    assert_eventually(failed_scheduling_event, timeout=SCHEDULE_TIMEOUT_S)


def test_up_again_is_harmless(cluster: Cluster, core: kubernetes.client.CoreV1Api) -> None:
    state = cluster.kubeconfig.parent
    before = {p.name: p.read_text() for p in sorted((state / "pids").iterdir())} | {
        "ports.env": (state / "ports.env").read_text()
    }
    nodes_before = sorted(n.metadata.name for n in nodes_of(core))
    up = subprocess.run(
        ["bash", str(CLUSTER_SH), "up"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert up.returncode == 0, up.stderr

    after = {p.name: p.read_text() for p in sorted((state / "pids").iterdir())} | {
        "ports.env": (state / "ports.env").read_text()
    }
    # Same processes on the same ports: the running cluster was detected, not restarted.
    assert after == before
    assert sorted(n.metadata.name for n in nodes_of(core)) == nodes_before
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
