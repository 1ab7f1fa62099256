"""GPU-aware canary capacity: when the GPUs free to a Model (on nodes of its GPU type, within its namespace's
quota) cannot hold the canary's replicas next to the stable ones, replicas are shifted one at a time: the stable
version gives up one replica, the canary takes its GPUs, and so on, so a rollout never needs twice the GPUs.

``shift`` is pure; ``room`` reads the nodes, pods and ResourceQuotas it needs, only while a GPU rollout runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from operators.model.builders import GPU_PRODUCT_LABEL, GPU_RESOURCE

QUOTA_KEYS = (f"requests.{GPU_RESOURCE}", f"limits.{GPU_RESOURCE}")
_TERMINAL = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Room:
    """GPUs a Model may still take: free on its nodes and, when the namespace has a GPU quota, left in it."""

    free: int
    quota_left: int | None = None

    @property
    def usable(self) -> int:
        return self.free if self.quota_left is None else min(self.free, self.quota_left)

    def describe(self) -> str:
        quota = "" if self.quota_left is None else f", {self.quota_left} left in the namespace's GPU quota"
        return f"{self.free} GPUs free{quota}"


@dataclass(frozen=True)
class Split:
    stable: int
    canary: int


def shift(
    *,
    capacity: int,
    weight: int,
    gpus_per_replica: int,
    room: Room,
    stable_desired: int,
    stable_ready: int,
    canary_desired: int,
    canary_ready: int,
) -> Split:
    """Replicas of each version for the next step of a GPU-constrained rollout of ``capacity`` replicas in all.

    The canary always asks for at least one replica (left pending if no GPU is free, which is what makes the
    stable version give one up). The stable version shrinks by one only when the canary is short, no GPU is free
    for it, and the stable version's last change has settled, so GPUs move one replica at a time.
    """
    wanted_canary = max(1, math.ceil(capacity * weight / 100))
    wanted_stable = max(0, capacity - wanted_canary)
    slots = room.usable // max(gpus_per_replica, 1)
    pending = max(0, canary_desired - canary_ready)
    canary = max(canary_desired, 1)
    if canary < wanted_canary and slots > pending:
        canary = min(wanted_canary, canary + slots - pending)
    stable = min(stable_desired, capacity)
    short = canary < wanted_canary or pending > 0
    if short and slots <= pending and stable > wanted_stable and stable_ready >= stable_desired:
        stable -= 1
    return Split(stable=stable, canary=canary)


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def free_gpus(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], gpu_type: str | None) -> int:
    """Allocatable GPUs on Ready, schedulable nodes of ``gpu_type`` (any, if None), less what pods bound to them
    request."""
    capacity: dict[str, int] = {}
    for node in nodes:
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        if spec.get("unschedulable"):
            continue
        if gpu_type is not None and (meta.get("labels") or {}).get(GPU_PRODUCT_LABEL) != gpu_type:
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        gpus = _quantity((status.get("allocatable") or {}).get(GPU_RESOURCE, 0))
        if ready and gpus > 0:
            capacity[meta["name"]] = gpus
    used = 0
    for pod in pods:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") not in capacity or (pod.get("status") or {}).get("phase") in _TERMINAL:
            continue
        for container in spec.get("containers") or []:
            resources = container.get("resources") or {}
            asked = (resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(
                GPU_RESOURCE
            )
            used += _quantity(asked or 0)
    return max(0, sum(capacity.values()) - used)


def quota_left(quotas: Iterable[Mapping[str, Any]]) -> int | None:
    """GPUs left under the tightest GPU ResourceQuota of a namespace; None when none limits GPUs."""
    left: int | None = None
    for quota in quotas:
        status = quota.get("status") or {}
        hard, used = status.get("hard") or {}, status.get("used") or {}
        for key in QUOTA_KEYS:
            if key in hard:
                remaining = _quantity(hard[key]) - _quantity(used.get(key, 0))
                left = remaining if left is None else min(left, remaining)
    return None if left is None else max(0, left)


def asks_for_gpus(spec: Mapping[str, Any]) -> bool:
    """Whether a Model's spec (as stored) asks for GPUs: a ``resources.gpu`` block whose count (1 when left out,
    as the CRD defaults it) is not 0. Models without one have nothing to say of a GPU quota."""
    gpu = (spec.get("resources") or {}).get("gpu")
    return isinstance(gpu, Mapping) and bool(gpu.get("count", 1))


@dataclass(frozen=True)
class QuotaSeen:
    """One ResourceQuota that limits GPUs, as the quota index keeps it."""

    name: str
    hard: int
    used: int

    @property
    def left(self) -> int:
        return max(0, self.hard - self.used)


def gpu_quota_seen(name: str, status: Mapping[str, Any]) -> QuotaSeen | None:
    """What a ResourceQuota says of GPUs (its tightest GPU key), or None if it does not limit them."""
    hard, used = status.get("hard") or {}, status.get("used") or {}
    seen = [QuotaSeen(name, _quantity(hard[key]), _quantity(used.get(key, 0))) for key in QUOTA_KEYS if key in hard]
    return min(seen, key=lambda q: q.left) if seen else None


def tightest(quotas: Iterable[QuotaSeen]) -> QuotaSeen | None:
    return min(quotas, key=lambda q: (q.left, q.name), default=None)
