"""GPU-aware canaries: counting free GPUs and quota, and moving replicas one at a time when GPUs are short."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from crds.model import GPUQuota, ModelStatus, VersionReplicas
from operators.model import gpus
from operators.model import plan as plans
from operators.model.gpus import Room, Split, shift
from operators.model.plan import Observed
from operators.model.reconciler import gpu_quota
from tests.operators.models import model

A100 = "NVIDIA-A100-SXM4-80GB"


def node(name: str, gpus_: int, product: str = A100, ready: bool = True, unschedulable: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus_)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(node_name: str | None, gpus_: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus_)}}}]},
        "status": {"phase": phase},
    }


def test_free_gpus_counts_only_ready_schedulable_nodes_of_the_type_less_bound_pods() -> None:
    nodes = [
        node("a", 4),
        node("b", 4),
        node("h100", 8, product="NVIDIA-H100"),
        node("down", 4, ready=False),
        node("cordoned", 4, unschedulable=True),
    ]
    pods = [pod("a", 3), pod("b", 1), pod("b", 2, phase="Succeeded"), pod("h100", 8), pod(None, 4)]
    assert gpus.free_gpus(nodes, pods, A100) == 4
    assert gpus.free_gpus(nodes, pods, None) == 4  # the H100 node is full
    assert gpus.free_gpus(nodes, [], "NVIDIA-H100") == 8


def test_quota_left_is_the_tightest_gpu_quota() -> None:
    quotas = [
        {"status": {"hard": {"requests.nvidia.com/gpu": "8"}, "used": {"requests.nvidia.com/gpu": "6"}}},
        {"status": {"hard": {"limits.nvidia.com/gpu": "4"}, "used": {"limits.nvidia.com/gpu": "3"}}},
        {"status": {"hard": {"pods": "10"}, "used": {"pods": "2"}}},
    ]
    assert gpus.quota_left(quotas) == 1
    assert gpus.quota_left(quotas[2:]) is None
    assert Room(free=4, quota_left=1).usable == 1
    assert "1 left in the namespace's GPU quota" in Room(free=4, quota_left=1).describe()


def test_replicas_move_one_at_a_time_and_never_need_twice_the_gpus() -> None:
    """Two A100 nodes of 4 GPUs, a model of 2 replicas x 4 GPUs: no GPU is ever free for the canary."""
    room0 = Room(free=0)
    # The canary asks for its first replica, which stays pending...
    first = shift(capacity=2, weight=0, gpus_per_replica=4, room=room0, stable_desired=2, stable_ready=2,
                  canary_desired=0, canary_ready=0)  # fmt: skip
    assert first == Split(stable=2, canary=1)
    # ...so the stable version gives up one replica.
    second = shift(capacity=2, weight=0, gpus_per_replica=4, room=room0, stable_desired=2, stable_ready=2,
                   canary_desired=1, canary_ready=0)  # fmt: skip
    assert second == Split(stable=1, canary=1)
    # Not again while that change has not settled.
    settling = shift(capacity=2, weight=0, gpus_per_replica=4, room=room0, stable_desired=1, stable_ready=2,
                     canary_desired=1, canary_ready=0)  # fmt: skip
    assert settling == Split(stable=1, canary=1)
    # At 100% the canary wants both replicas: the stable version goes to zero, then the canary takes its GPUs.
    third = shift(capacity=2, weight=100, gpus_per_replica=4, room=room0, stable_desired=1, stable_ready=1,
                  canary_desired=1, canary_ready=1)  # fmt: skip
    assert third == Split(stable=0, canary=1)
    fourth = shift(capacity=2, weight=100, gpus_per_replica=4, room=Room(free=4), stable_desired=0, stable_ready=0,
                   canary_desired=1, canary_ready=1)  # fmt: skip
    assert fourth == Split(stable=0, canary=2)
    for split in (first, second, third, fourth):
        assert split.stable + split.canary <= 3  # one pending canary replica at most beyond the capacity


def test_with_enough_free_gpus_the_stable_version_keeps_its_replicas() -> None:
    split = shift(capacity=2, weight=100, gpus_per_replica=4, room=Room(free=8), stable_desired=2, stable_ready=2,
                  canary_desired=0, canary_ready=0)  # fmt: skip
    assert split == Split(stable=2, canary=2)


def test_plan_switches_to_moving_replicas_when_gpus_are_short_and_drops_the_autoscaler() -> None:
    m = model(
        resources={"cpu": "1", "memory": "1Gi", "gpu": {"count": 4, "type": A100}},
        minReplicas=2,
        maxReplicas=3,
        canary={"version": "2.0.0", "steps": [50, 100], "interval": "1m"},
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    observed = {"1.0.0": Observed("1.0.0", 2, 2)}
    roomy = plans.plan(m, "img", observed, now=now, gpu_room=Room(free=8))
    assert roomy.autoscale
    assert roomy.rollout is not None
    assert roomy.rollout.stable_replicas is None
    tight = plans.plan(m, "img", observed, now=now + timedelta(seconds=1), gpu_room=Room(free=0))
    assert not tight.autoscale
    assert tight.rollout is not None
    assert tight.rollout.stable_replicas == 2
    assert tight.stable.replicas == 2
    assert tight.canary is not None
    assert tight.canary.replicas == 1
    assert "GPUs are short (0 GPUs free)" in tight.note


def test_the_quota_reported_is_the_tightest_gpu_quota() -> None:
    requests = gpus.gpu_quota_seen(
        "team", {"hard": {"requests.nvidia.com/gpu": "8", "pods": "9"}, "used": {"requests.nvidia.com/gpu": "6"}}
    )
    limits = gpus.gpu_quota_seen("tight", {"hard": {"limits.nvidia.com/gpu": "4"}, "used": {}})
    assert requests == gpus.QuotaSeen("team", hard=8, used=6)
    assert limits == gpus.QuotaSeen("tight", hard=4, used=0)
    assert gpus.gpu_quota_seen("pods", {"hard": {"pods": "10"}}) is None
    assert gpus.gpu_quota_seen("new", {}) is None  # no status yet
    assert gpus.tightest([limits, requests]) == requests  # 2 left against 4
    assert gpus.tightest([]) is None


def test_a_gpu_model_reports_its_namespace_quota_and_what_it_asks_for() -> None:
    quota = [gpus.QuotaSeen("team", hard=8, used=3)]
    status = ModelStatus(
        replicas=[
            VersionReplicas(version="1.0.0", desired=2, ready=2),
            VersionReplicas(version="2.0.0", desired=1, ready=0),
        ]
    )
    gpu_model = model(resources={"gpu": {"count": 2}})
    assert gpu_quota(gpu_model, status, quota) == GPUQuota(quota="team", hard=8, used=3, requested=6)
    assert gpu_quota(gpu_model, status, []) is None  # no GPU quota in the namespace
    assert gpu_quota(model(), status, quota) is None  # a CPU model has nothing to report
    assert gpu_quota(model(resources={"gpu": {"count": 0}}), status, quota) is None
