"""The Model operator's kopf handlers decide which Models a trigger concerns; these call them as kopf does, with
the indexes as plain mappings, and record which Models they hand to the reconciler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from operators.model import handlers
from operators.model.reconciler import Key, State


@dataclass
class Recorder:
    """Stands in for the Reconciler: what is under test is which Models the handler hands on, not the reconcile."""

    converged: list[Key] = field(default_factory=list)

    async def converge(self, key: Key, read: Callable[[], State | None]) -> None:
        self.converged.append(key)


def body(name: str, resources: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"bento": "service:Svc", "version": "1.0.0"}
    if resources is not None:
        spec["resources"] = resources
    return {"metadata": {"namespace": "ns", "name": name}, "spec": spec, "status": {}}


GPU_QUOTA_STATUS = {"hard": {"requests.nvidia.com/gpu": "4"}, "used": {"requests.nvidia.com/gpu": "1"}}


def quota_changed(models: dict[tuple[str, str], dict[str, Any]], status: dict[str, Any]) -> list[Key]:
    recorder = Recorder()
    # kopf's decorator types the handler as its own callback protocol; kopf calls it with keywords, as here.
    handler = cast(Callable[..., Coroutine[Any, Any, None]], handlers.quota_changed)
    asyncio.run(
        handler(
            memo=SimpleNamespace(model_reconciler=recorder),
            type="MODIFIED",
            namespace="ns",
            name="gpus",
            status=status,
            model_bodies={key: [b] for key, b in models.items()},
        )
    )
    return recorder.converged


def test_a_gpu_quota_change_reconciles_only_the_namespaces_gpu_models() -> None:
    models = {
        ("ns", "gpu"): body("gpu", {"cpu": "1", "gpu": {"count": 2}}),
        ("ns", "gpu-default-count"): body("gpu-default-count", {"gpu": {"type": "NVIDIA-A100-SXM4-80GB"}}),
        ("ns", "gpu-empty"): body("gpu-empty", {"gpu": {}}),
        ("ns", "cpu"): body("cpu", {"cpu": "1", "memory": "1Gi"}),
        ("ns", "no-resources"): body("no-resources", None),
        ("ns", "zero-gpus"): body("zero-gpus", {"gpu": {"count": 0}}),
        ("other", "gpu"): {**body("gpu", {"gpu": {"count": 1}}), "metadata": {"namespace": "other", "name": "gpu"}},
    }
    gpu_models = [("ns", "gpu"), ("ns", "gpu-default-count"), ("ns", "gpu-empty")]
    assert sorted(quota_changed(models, GPU_QUOTA_STATUS)) == gpu_models


def test_a_quota_that_does_not_limit_gpus_reconciles_nothing() -> None:
    models = {("ns", "gpu"): body("gpu", {"gpu": {"count": 1}})}
    assert quota_changed(models, {"hard": {"pods": "10"}, "used": {"pods": "1"}}) == []
